"""KServe's InferenceService CRD schema, for strict validation of the manifests `dfp kserve`
writes. The CRD comes from KServe's own module on the Go module proxy (checksummed by the
Go checksum database), pinned to ``dfp_core.ml.kserve.KSERVE_VERSION``."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import zipfile

import yaml

CRD_PATH = "config/crd/full/serving.kserve.io_inferenceservices.yaml"


def inference_service_crd(version: str) -> dict | None:
    """KServe's InferenceService CRD, or None when Go is not installed."""
    go = shutil.which("go")
    if go is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:  # outside any Go module
        done = subprocess.run([go, "mod", "download", "-json", f"github.com/kserve/kserve@{version}"], cwd=scratch,
                              capture_output=True, text=True, timeout=900)
    info = json.loads(done.stdout or "{}")
    if done.returncode != 0 or "Zip" not in info:
        raise RuntimeError(f"go mod download github.com/kserve/kserve@{version} failed: {info.get('Error') or done.stderr[-500:]}")
    with zipfile.ZipFile(info["Zip"]) as archive:
        return yaml.safe_load(archive.read(f"github.com/kserve/kserve@{version}/{CRD_PATH}"))


def inference_service_schema(version: str) -> dict | None:
    """The v1beta1 openAPIV3Schema, or None when Go is not installed."""
    crd = inference_service_crd(version)
    if crd is None:
        return None
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return served["schema"]["openAPIV3Schema"]


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare (what `kubectl apply --validate=strict` refuses;
    a CRD's structural schema would silently drop them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        properties = schema.get("properties")
        if properties is None:
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                return [f for k, v in value.items() for f in unknown_fields(v, extra, f"{path}.{k}")]
            return []
        found = []
        for key, item in value.items():
            if key not in properties:
                found.append(f"{path}.{key}".lstrip("."))
            else:
                found += unknown_fields(item, properties[key], f"{path}.{key}")
        return found
    if isinstance(value, list):
        return [f for i, item in enumerate(value) for f in unknown_fields(item, schema.get("items", {}), f"{path}[{i}]")]
    return []


def validate(manifest: dict, schema: dict) -> list[str]:
    """Every problem with the manifest: schema violations and undeclared fields."""
    import jsonschema

    problems = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in jsonschema.Draft7Validator(schema).iter_errors(manifest)]
    return problems + [f"{field}: not in the CRD" for field in unknown_fields(manifest, schema)]

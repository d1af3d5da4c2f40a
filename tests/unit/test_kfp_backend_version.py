"""The compiled pipeline needs no newer Kubeflow Pipelines backend than docs/kubeflow.md says.

Every feature the YAML uses is looked up in a table of the first KFP backend release
that runs it (from the KFP changelog and the backend sources at each release tag). A
field of the Kubernetes platform spec that the table does not know fails the test:
backends before 2.14 unmarshal that spec strictly, so an unknown field stops every step
of the run at its driver; look up the release that added the field before adding it here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dfp_kfp.pipelines.kronodroid_autoencoder_pipeline import MIN_KFP_BACKEND, compile_kronodroid_autoencoder_pipeline

REPO_ROOT = Path(__file__).resolve().parents[2]

# Kubernetes platform spec fields (paths under an executor's config) -> first backend release.
PLATFORM_FIELDS = {
    "secretAsEnv.secretName": "2.0.0",
    "secretAsEnv.keyToEnv.secretKey": "2.0.0",
    "secretAsEnv.keyToEnv.envVar": "2.0.0",
    "podMetadata.labels": "2.1.0",
    # kubeflow/pipelines#11770 (parameterized k8s resources)
    "secretAsEnv.secretNameParameter.runtimeValue.constant": "2.5.0",
    # kubeflow/pipelines#12216 (optional secrets as env); kfp-kubernetes writes it always
    "secretAsEnv.optional": "2.15.0",
}
# Pipeline spec features -> first backend release.
SPEC_FEATURES = {
    "condition": "2.0.0",  # dsl.If / dsl.Else trigger policies
    "oneof_dag_output": "2.4.0",  # dsl.OneOf as a pipeline output: subdag output resolution (#11196)
    "resource_strings": "2.4.0",  # resourceCpuLimit & co., placeholders in resources (#11501)
    "accelerator_resource_type": "2.4.0",  # accelerator.resourceType / resourceCount (#11501)
}
# Fields whose keys are data (label names), not schema.
MAP_FIELDS = {"labels", "annotations"}
LEGACY_RESOURCES = {"cpuLimit", "cpuRequest", "memoryLimit", "memoryRequest", "accelerator"}
RESOURCE_STRINGS = {"resourceCpuLimit", "resourceCpuRequest", "resourceMemoryLimit", "resourceMemoryRequest"}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _field_paths(value, prefix: str = "") -> set[str]:
    """Dotted paths to the leaves of a JSON-like value (list items share their list's path;
    a label map is one leaf)."""
    if isinstance(value, dict) and prefix.rpartition(".")[2] not in MAP_FIELDS:
        paths = set()
        for key, item in value.items():
            paths |= _field_paths(item, f"{prefix}.{key}" if prefix else key)
        return paths
    if isinstance(value, list):
        return set().union(*(_field_paths(item, prefix) for item in value)) if value else {prefix}
    return {prefix}


def _spec_features(spec: dict) -> set[str]:
    features = set()
    text = yaml.safe_dump(spec)
    if "triggerPolicy" in text:
        features.add("condition")
    for component in [spec["root"], *spec["components"].values()]:
        outputs = component.get("dag", {}).get("outputs", {}).get("parameters", {})
        if any("valueFromOneof" in output for output in outputs.values()):
            features.add("oneof_dag_output")
    for executor in spec["deploymentSpec"]["executors"].values():
        resources = executor["container"].get("resources", {})
        unknown = set(resources) - LEGACY_RESOURCES - RESOURCE_STRINGS
        assert not unknown, f"resource fields the feature table does not know: {sorted(unknown)}"
        if set(resources) & RESOURCE_STRINGS:
            features.add("resource_strings")
        if {"resourceType", "resourceCount"} & set(resources.get("accelerator", {})):
            features.add("accelerator_resource_type")
    return features


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict]:
    path = compile_kronodroid_autoencoder_pipeline(tmp_path_factory.mktemp("kfp") / "pipeline.yaml")
    return list(yaml.safe_load_all(Path(path).read_text()))


def test_the_yaml_needs_exactly_the_documented_backend(compiled):
    spec, platform = compiled
    assert spec["schemaVersion"] == "2.1.0"
    needed = {}
    for name, config in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        for path in _field_paths(config):
            assert path in PLATFORM_FIELDS, (
                f"{name}: platform field {path!r} is not in the table; find the first KFP backend release "
                "that reads it and add it (older backends refuse unknown fields)")
            needed[path] = PLATFORM_FIELDS[path]
    for feature in _spec_features(spec):
        needed[feature] = SPEC_FEATURES[feature]
    newest = max(needed.values(), key=_version)
    assert newest == MIN_KFP_BACKEND, f"the YAML needs KFP backend {newest} (for {sorted(k for k, v in needed.items() if v == newest)})"
    # The features this pipeline is built on are really in the YAML (the detection works).
    assert {"oneof_dag_output", "resource_strings", "accelerator_resource_type", "secretAsEnv.optional"} <= set(needed)


def test_the_kubeflow_doc_states_the_minimum_backend():
    doc = (REPO_ROOT / "docs" / "kubeflow.md").read_text()
    assert re.search(rf"Kubeflow Pipelines backend {re.escape(MIN_KFP_BACKEND)} or newer", doc), \
        f"docs/kubeflow.md must say: Kubeflow Pipelines backend {MIN_KFP_BACKEND} or newer"


def test_field_paths_walk_lists_and_maps():
    assert _field_paths({"a": [{"b": 1}, {"c": {"d": 2}}], "e": []}) == {"a.b", "a.c.d", "e"}
    assert _field_paths({"podMetadata": {"labels": {"app.kubernetes.io/name": "x"}}}) == {"podMetadata.labels"}

"""The InferenceService `dfp kserve` writes: KServe's CRD accepts it, strictly; names and
storage URIs follow KServe's rules."""

from __future__ import annotations

import re

import pytest

from dfp_core.errors import ConfigError
from dfp_core.ml.kserve import KSERVE_VERSION, InferenceServiceSpec, inference_service, service_name, storage_uri_of
from tests.kserve_crd import inference_service_schema, validate


@pytest.fixture(scope="module")
def schema():
    found = inference_service_schema(KSERVE_VERSION)
    if found is None:
        pytest.skip("Go is needed to fetch KServe's CRD from the Go module proxy (install Go, as `make setup` needs)")
    return found


def _manifest(**overrides):
    values = dict(name="kronodroid-autoencoder-v3", namespace="kubeflow-user", storage_uri="s3://mlflow/1/models/m-1/artifacts",
                  model_name="kronodroid_autoencoder", model_version="3")
    values.update(overrides)
    return inference_service(InferenceServiceSpec(**values))


def test_the_manifest_is_valid_for_kserves_crd(schema):
    for manifest in (_manifest(), _manifest(service_account="kserve-s3", image="registry.example/mlserver-kd:1")):
        assert validate(manifest, schema) == []
        predictor = manifest["spec"]["predictor"]
        assert predictor["model"]["modelFormat"] == {"name": "mlflow"} and predictor["model"]["protocolVersion"] == "v2"
        assert predictor["securityContext"]["runAsNonRoot"] and predictor["model"]["securityContext"]["runAsUser"] != 0
        assert set(predictor["model"]["resources"]) == {"requests", "limits"}


def test_the_validation_catches_what_kubernetes_would_refuse(schema):
    bad = _manifest()
    bad["spec"]["predictor"]["model"]["storageURI"] = "s3://typo"  # a misspelt field
    bad["spec"]["predictor"]["minReplicas"] = "one"
    problems = validate(bad, schema)
    assert any("storageURI: not in the CRD" in p for p in problems)
    assert any(p.startswith("spec.predictor.minReplicas") for p in problems)


def test_service_names_are_dns_labels():
    for model, version in (("kronodroid_autoencoder", "12"), ("9lives", "1"), ("A" * 80, "123")):
        name = service_name(model, version)
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 45, name
        assert name.endswith(f"-v{version}")


def test_storage_uris():
    assert storage_uri_of("mlflow-artifacts:/1/models/m-9/artifacts", "s3://bucket/mlflow/") == \
        "s3://bucket/mlflow/1/models/m-9/artifacts"
    assert storage_uri_of("mlflow-artifacts://mlflow:5000/1/models/m-9/artifacts", "gs://b") == "gs://b/1/models/m-9/artifacts"
    assert storage_uri_of("s3://bucket/1/models/m-9/artifacts", None) == "s3://bucket/1/models/m-9/artifacts"
    with pytest.raises(ConfigError, match="pass --artifacts-destination"):
        storage_uri_of("mlflow-artifacts:/1/models/m-9/artifacts", None)
    with pytest.raises(ConfigError, match=r"KServe cannot read file:///srv/mlflow/1: .*--artifacts-destination s3://"):
        storage_uri_of("mlflow-artifacts:/1", "file:///srv/mlflow")

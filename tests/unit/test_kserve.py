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


def test_v2_requests_carry_model_input_columns_and_answers_come_back_as_rows():
    import json

    import pandas as pd

    from dfp_core.ml.kserve import v2_outputs, v2_request

    frame = pd.DataFrame({"sc_read": [1.0, 2.5], "perm_x": [0.0, 1.0], "sample_id": ["a", "b"]})
    body = json.loads(json.dumps(v2_request(frame)))  # what goes on the wire
    assert body["parameters"] == {"content_type": "pd"}
    assert body["inputs"][0] == {"name": "sc_read", "shape": [2, 1], "datatype": "FP64", "data": [1.0, 2.5]}
    assert body["inputs"][2]["datatype"] == "BYTES" and body["inputs"][2]["data"] == ["a", "b"]
    with pytest.raises(ConfigError, match="column sc_read has missing values"):
        v2_request(frame.assign(sc_read=[1.0, float("nan")]))
    answer = {"outputs": [{"name": "sample_id", "data": ["a", "b"]}, {"name": "anomaly_score", "data": [0.5, 2.0]},
                          {"name": "is_anomaly", "data": [False, True]}]}
    assert v2_outputs(answer) == [{"sample_id": "a", "anomaly_score": 0.5, "is_anomaly": False},
                                  {"sample_id": "b", "anomaly_score": 2.0, "is_anomaly": True}]


def test_an_mlserver_environment_takes_the_scorers_pins_not_mlflows_closure():
    from dfp_core.ml.kserve import MLSERVER_REQUIREMENTS, mlserver_environment, mlserver_requirements

    text = "mlflow==3.17.2\nfastapi==0.165.0\nnumpy==2.4.6\npandas==2.3.3\ntorch==2.15.0\n"
    assert mlserver_requirements(text) == [*MLSERVER_REQUIREMENTS, "mlflow==3.17.2", "torch==2.15.0",
                                           "numpy==2.4.6", "pandas==2.3.3"]
    with pytest.raises(ConfigError, match="pins no torch"):
        mlserver_requirements("mlflow==3.17.2\nnumpy==2.4.6\npandas==2.3.3\n")
    env = mlserver_environment("/mnt/models", "kd-v3", 8080, 8081, 8082)
    assert env["MLSERVER_MODEL_IMPLEMENTATION"] == "mlserver_mlflow.MLflowRuntime" and env["MLSERVER_MODEL_NAME"] == "kd-v3"

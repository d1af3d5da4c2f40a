"""The registered model as users run it: served by `mlflow models serve` from a virtualenv
that MLflow builds from the model's own requirements.txt (no project installed), loaded
with `mlflow.pyfunc.load_model` in that environment, and served by `dfp serve`; scores
equal `dfp score` on the same rows, bad input is an HTTP 400 naming the columns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests

from dfp_core.kronodroid.generator import generate
from dfp_core.ml.json_rows import read_plain_split
from dfp_core.ml.serve import wait_until_ready
from dfp_core.ml.train_kronodroid_autoencoder import train
from dfp_core.params import TrainConfig
from dfp_core.stack import free_port

pytestmark = pytest.mark.slow
VENV_BIN = Path(sys.executable).parent
# The scorer's world: what a fresh environment must not need.
TRAINING_ONLY = ("dfp_core.ml", "dfp_core.kronodroid", "lightning", "pyspark", "feast", "rich", "sklearn")


@pytest.fixture(scope="module")
def registered(rt, transform, tmp_path_factory):
    repo = "serve" + uuid.uuid4().hex[:8]
    data = tmp_path_factory.mktemp("serve-data")
    generate(data, 400, seed=41)
    summary = transform(input_dir=data, repo=repo, run_id="serve-a")
    name = f"kronodroid_autoencoder_{repo}"
    result = train(rt, TrainConfig(repo=repo, ref="main", max_epochs=2, batch_size=64, hidden_dims=(64, 32), latent_dim=8,
                                   seed=5, accelerator="cpu", devices="1", model_name=name, evaluate_baselines=False))
    with rt.tracking():
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@candidate",
                                                         dst_path=str(tmp_path_factory.mktemp("model"))))
    # What `dfp score` says of every row at the merge commit: the reference scores.
    out = tmp_path_factory.mktemp("scores") / "scores.csv"
    done = subprocess.run([str(VENV_BIN / "dfp"), "score", "--model-uri", f"models:/{name}@candidate", "--input",
                           f"lakefs://{repo}/{summary['merge_commit']}", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"name": name, "version": result.model_version, "uri": f"models:/{name}@candidate", "local": local, "data": data,
            "scores": pd.read_csv(out).set_index("sample_id"), "tracking_uri": rt.settings.mlflow.tracking_uri,
            # The tampering tests' attacker can write to MLflow: with its basic-auth app on, as a user of it.
            "mlflow_user": (rt.settings.mlflow.username, rt.settings.mlflow.password) if rt.settings.mlflow.password else None,
            # What `mlflow` itself reads, as a user gives it (`set -a; . "$DFP_HOME/stack.env"`).
            "mlflow_env": rt.settings.mlflow.credential_env()}


def _example(registered) -> dict:
    return json.loads((registered["local"] / "serving_input_example.json").read_text())


def _matches_dfp_score(registered, predictions: list[dict], sample_ids: list[str]) -> None:
    assert len(predictions) == len(sample_ids)
    reference = registered["scores"].loc[sample_ids]
    for got, (sample_id, want) in zip(predictions, reference.iterrows()):
        assert got["sample_id"] == sample_id
        assert got["reconstruction_error"] == pytest.approx(want["reconstruction_error"], rel=1e-5, abs=1e-7)
        assert got["anomaly_score"] == pytest.approx(want["anomaly_score"], rel=1e-5, abs=1e-7)
        assert bool(got["is_anomaly"]) == bool(want["is_anomaly"])


def _post(url: str, payload: dict | str) -> requests.Response:
    # As MLflow writes the example: NaN for a missing value (requests' json= refuses NaN).
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return requests.post(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=60)


def _stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    return process.returncode


@pytest.fixture(scope="module")
def mlflow_served(registered, tmp_path_factory):
    """`mlflow models serve --env-manager uv`: MLflow builds a virtualenv from the model's
    requirements.txt with uv (a dev dependency here; the default, virtualenv, does the same
    with pip and pyenv, several times slower)."""
    manager = "uv"
    env_root = tmp_path_factory.mktemp("mlflow-envs")
    port = free_port()
    env = {**os.environ, **registered["mlflow_env"], "MLFLOW_TRACKING_URI": registered["tracking_uri"], "MLFLOW_ENV_ROOT": str(env_root),
           "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    process = subprocess.Popen([str(VENV_BIN / "mlflow"), "models", "serve", "-m", registered["uri"], "-h", "127.0.0.1",
                                "-p", str(port), "--env-manager", manager], env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, url, timeout_s=1200)  # the first time it builds the environment
        [environment] = [p for p in env_root.iterdir() if p.is_dir()]
        yield {"url": url, "env": environment, "manager": manager}
    finally:
        _stop(process)


def test_mlflow_models_serve_answers_the_serving_example_like_dfp_score(registered, mlflow_served):
    example = _example(registered)
    # The file as MLflow wrote it, sent as is (what `curl -d @serving_input_example.json` does).
    response = _post(mlflow_served["url"], (registered["local"] / "serving_input_example.json").read_text())
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    columns = example["dataframe_split"]["columns"]
    ids = [row[columns.index("sample_id")] for row in example["dataframe_split"]["data"]]
    _matches_dfp_score(registered, predictions, ids)
    # MLflow's server hands the signature's params to the model: each app's explanation.
    explained = _post(mlflow_served["url"], {**example, "params": {"explain": 2}})
    assert explained.status_code == 200, explained.text
    for plain, why in zip(predictions, explained.json()["predictions"]):
        assert why["anomaly_score"] == pytest.approx(plain["anomaly_score"], rel=1e-9)
        assert why["top1_feature"] in columns and why["top2_contribution"] <= why["top1_contribution"]
        shares = sum(why[f"{group}_contribution"] for group in ("permissions", "syscalls", "metadata"))
        assert shares == pytest.approx(why["anomaly_score"], rel=1e-9, abs=1e-9)


def test_the_model_loads_in_an_environment_of_its_own_requirements_only(registered, mlflow_served):
    environment = mlflow_served["env"]
    python = environment / "bin" / "python"
    required = {line.split("==")[0].lower().replace("_", "-")
                for line in (registered["local"] / "requirements.txt").read_text().split() if "==" in line}
    frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True)
    installed = {line.split("==")[0].lower().replace("_", "-") for line in frozen.stdout.split() if "==" in line}
    # Exactly the model's requirements (plus the installers themselves): no project, nothing else.
    assert installed - required <= {"pip", "setuptools", "wheel"}, sorted(installed - required)
    script = f"""
import importlib.util, json, sys
import mlflow, pandas as pd
assert importlib.util.find_spec("dfp_core") is None, "the project is installed here"
model = mlflow.pyfunc.load_model({registered['uri']!r})
example = json.load(open({str(registered['local'] / 'serving_input_example.json')!r}))["dataframe_split"]
out = model.predict(pd.DataFrame(example["data"], columns=example["columns"]))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {{t.split(".")[0] for t in {TRAINING_ONLY!r}}})
print(json.dumps({{"predictions": out.to_dict(orient="records"), "training_modules": loaded}}))
"""
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, cwd=environment,
                          env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **registered["mlflow_env"],
                               "MLFLOW_TRACKING_URI": registered["tracking_uri"], "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [m for m in result["training_modules"] if m.startswith(TRAINING_ONLY)] == []
    example = _example(registered)["dataframe_split"]
    ids = [row[example["columns"].index("sample_id")] for row in example["data"]]
    _matches_dfp_score(registered, result["predictions"], ids)


@pytest.fixture(scope="module")
def dfp_served(registered, stack):
    port = free_port()
    process = subprocess.Popen([str(VENV_BIN / "dfp"), "serve", "--model-uri", registered["uri"], "--port", str(port)],
                               env={**os.environ}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, url, timeout_s=300)
        yield {"url": url, "process": process, "port": port}
    finally:
        _stop(process)


def test_dfp_serve_answers_ping_and_invocations(registered, dfp_served):
    assert requests.get(f"{dfp_served['url']}/ping", timeout=10).status_code == 200
    example = _example(registered)
    # dataframe_records: the other JSON form MLflow's contract accepts.
    frame = pd.DataFrame(example["dataframe_split"]["data"], columns=example["dataframe_split"]["columns"])
    response = _post(dfp_served["url"], {"dataframe_records": frame.to_dict(orient="records")})
    assert response.status_code == 200, response.text
    _matches_dfp_score(registered, response.json()["predictions"], frame["sample_id"].tolist())
    # CSV and Parquet, as MLflow's scoring server takes them too, give the same answer.
    for content_type, body in (("text/csv", frame.to_csv(index=False).encode()),
                               ("application/vnd.apache.parquet", frame.to_parquet(index=False))):
        columnar = requests.post(f"{dfp_served['url']}/invocations", data=body, headers={"Content-Type": content_type},
                                 timeout=60)
        assert columnar.status_code == 200, (content_type, columnar.text)
        assert columnar.json() == response.json(), content_type
    # The usual dataframe_split, null for a missing value: read by simdjson straight into the matrix.
    split = example["dataframe_split"]
    rows = [[None if isinstance(v, float) and np.isnan(v) else v for v in row] for row in split["data"]]
    usual = json.dumps({"dataframe_split": {"columns": split["columns"], "data": rows}})
    assert "null" in usual and read_plain_split(usual.encode(), split["columns"][:-1], "sample_id") is not None
    plain = _post(dfp_served["url"], usual)
    assert plain.status_code == 200 and plain.json() == response.json(), plain.text
    # MLflow's params ask for each app's explanation: the same scores, the groups' shares add up to them.
    asked = {"dataframe_split": example["dataframe_split"], "params": {"explain": 3}}
    explained = _post(dfp_served["url"], asked)
    assert explained.status_code == 200, explained.text
    for plain, why in zip(response.json()["predictions"], explained.json()["predictions"]):
        assert {k: why[k] for k in plain} == plain
        assert why["top1_group"] in ("permissions", "syscalls", "metadata") and why["top1_feature"] in frame.columns
        shares = why["permissions_contribution"] + why["syscalls_contribution"] + why["metadata_contribution"]
        assert shares == pytest.approx(why["anomaly_score"], rel=1e-9, abs=1e-9)
        assert why["top1_contribution"] >= why["top2_contribution"] >= why["top3_contribution"]
    refused = _post(dfp_served["url"], {**asked, "params": {"explain": -1}})
    assert refused.status_code == 400 and "explain must be a whole number" in refused.json()["message"]


@pytest.fixture(scope="module")
def mlserver_served(registered, tmp_path_factory):
    """KServe's MLflow runtime as `dfp kserve`'s InferenceService gets it (runtime
    kserve-mlserver, protocol v2): MLServer with its MLflow runtime, started as KServe starts it
    (`mlserver start` of the model's files, configured by environment), in a virtualenv of
    MLServer's pinned releases and the scorer's own pins from the model's requirements.txt."""
    from dfp_core.ml.kserve import mlserver_environment, mlserver_requirements, service_name

    requirements = mlserver_requirements((registered["local"] / "requirements.txt").read_text())
    venv = tmp_path_factory.mktemp("mlserver") / "venv"
    for command in ([str(VENV_BIN / "uv"), "venv", "-q", "-p", sys.executable, str(venv)],
                    [str(VENV_BIN / "uv"), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                     *requirements]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
    name = service_name(registered["name"], str(registered["version"]))
    port = free_port()
    env = {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/root"),
           **mlserver_environment(str(registered["local"]), name, port, free_port(), free_port())}
    process = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(registered["local"])], env=env,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}/v2/models/{name}"
    try:
        wait_until_ready(process, url, timeout_s=600, ready_path="/ready")
        yield {"url": url, "process": process}
    finally:
        _stop(process)


def test_kserves_mlserver_runtime_answers_the_v2_protocol_like_dfp_score(registered, mlserver_served):
    """The model served by KServe's own runtime for it answers Open Inference Protocol requests
    with `dfp score`'s scores for the same apps, and describes its inputs by the signature."""
    from dfp_core.kronodroid.reader import read_kronodroid
    from dfp_core.kronodroid.schema import FEATURE_COLUMNS
    from dfp_core.ml.kserve import v2_outputs, v2_request
    from dfp_core.ml.pyfunc import as_model_input

    valid, _ = read_kronodroid(registered["data"])
    rows = valid[valid["sample_id"].isin(registered["scores"].index)].drop_duplicates("sample_id").head(50)
    response = requests.post(f"{mlserver_served['url']}/infer", data=json.dumps(v2_request(as_model_input(rows))),
                             headers={"Content-Type": "application/json"}, timeout=120)
    assert response.status_code == 200, response.text[:2000]
    _matches_dfp_score(registered, v2_outputs(response.json()), rows["sample_id"].tolist())
    metadata = requests.get(mlserver_served["url"], timeout=30).json()
    assert {i["name"] for i in metadata["inputs"]} == {*FEATURE_COLUMNS, "sample_id"}


@pytest.mark.parametrize("server", ["dfp_served", "mlflow_served"])
def test_bad_input_is_a_400_naming_the_columns(registered, server, request):
    url = request.getfixturevalue(server)["url"]
    example = _example(registered)["dataframe_split"]
    columns, rows = example["columns"], example["data"]
    missing = {"dataframe_split": {"columns": columns[1:], "data": [row[1:] for row in rows]}}
    response = _post(url, missing)
    assert response.status_code == 400, response.text
    assert columns[0] in response.text and "missing" in response.text.lower()
    renamed = {"dataframe_split": {"columns": ["not_a_feature", *columns[1:]], "data": rows}}
    response = _post(url, renamed)
    assert response.status_code == 400 and columns[0] in response.text and "not_a_feature" in response.text
    bad_value = [list(row) for row in rows]
    bad_value[0][2] = "twelve"
    response = _post(url, {"dataframe_split": {"columns": columns, "data": bad_value}})
    assert response.status_code == 400, response.text
    assert columns[2] in response.text


def test_dfp_serve_stops_its_server_on_sigterm(registered, stack):
    port = free_port()
    process = subprocess.Popen([str(VENV_BIN / "dfp"), "serve", "--model-uri", registered["uri"], "--port", str(port)],
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(process, url, timeout_s=300)
    process.send_signal(signal.SIGTERM)  # to dfp alone, as a supervisor would
    assert process.wait(timeout=60) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/ping", timeout=5)


def test_dfp_serve_of_an_unknown_model_is_one_line(stack):
    done = subprocess.run([str(VENV_BIN / "dfp"), "serve", "--model-uri", "models:/no_such_model/1", "--port",
                           str(free_port())], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: cannot use model models:/no_such_model/1")


def test_dfp_kserve_writes_an_inference_service_for_the_version(registered, stack, tmp_path):
    import yaml

    from dfp_core.ml.kserve import KSERVE_VERSION
    from tests.kserve_crd import inference_service_schema, validate

    dfp = [str(VENV_BIN / "dfp"), "kserve", "--model", registered["name"], "--alias", "candidate"]
    # The local stack keeps artifacts on its own disk, which KServe cannot read.
    done = subprocess.run(dfp, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: the version's files are behind the MLflow server")
    out = tmp_path / "isvc.yaml"
    done = subprocess.run([*dfp, "--artifacts-destination", "s3://mlflow-artifacts", "--namespace", "models",
                           "--service-account", "kserve-s3", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = yaml.safe_load(out.read_text())
    assert manifest["metadata"]["name"] == f"{registered['name'].replace('_', '-')}-v{registered['version']}"
    assert manifest["metadata"]["annotations"]["dfp.kronodroid/model-version"] == str(registered["version"])
    # The storage URI is the version's folder under the server's artifacts destination.
    storage = manifest["spec"]["predictor"]["model"]["storageUri"]
    assert storage.startswith("s3://mlflow-artifacts/")
    local = Path(stack["settings"].home) / "mlflow" / "artifacts" / storage.removeprefix("s3://mlflow-artifacts/")
    assert (local / "MLmodel").is_file() and (local / "code" / "dfp_core" / "serving" / "scorer.py").is_file()
    schema = inference_service_schema(KSERVE_VERSION)
    if schema is not None:
        assert validate(manifest, schema) == []


def test_dfp_retarget_sets_another_operating_point_as_a_new_version(registered, rt, tmp_path):
    """A 1% target from the stored benign validation scores, without training: a new version
    with the same lineage tags and network, its own digests, and a stricter threshold."""
    from dfp_core import lineage
    from dfp_core.tracking.integrity import MODEL_DIGEST_TAG

    name, version = registered["name"], str(registered["version"])
    done = subprocess.run([str(VENV_BIN / "dfp"), "retarget", "--model", name, "--version", version, "--target-fpr", "0.01",
                           "--set-alias", "strict"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["from_version"] == version and result["target_fpr"] == 0.01 and result["val_fpr"] <= 0.01
    assert result["fpr_95_low"] < 0.01 < result["fpr_95_high"] and "its FPR lies between" in done.stderr
    old, new = (rt.mlflow.get_model_version(name, v) for v in (version, result["version"]))
    assert {t: new.tags[t] for t in lineage.LINEAGE_TAGS} == {t: old.tags[t] for t in lineage.LINEAGE_TAGS}
    assert new.tags["dfp.threshold_from"] == f"{name}/{version}" and new.tags[MODEL_DIGEST_TAG] != old.tags[MODEL_DIGEST_TAG]
    assert rt.mlflow.get_model_version_by_alias(name, "strict").version == new.version
    assert rt.mlflow.get_run(new.run_id).data.params["target_fpr"] == "0.01"
    # its description names the score as the source version fitted it (cap, weakest group)
    fitted = "Each group's standardised term is capped at 10. The smallest of them counts 4 times"
    assert fitted in old.description and fitted in new.description
    # `dfp drift` on the new version measures against the same training profile.
    kept = []
    for v in (old, new):
        (tmp_path / v.version).mkdir()
        path = rt.mlflow.download_artifacts(v.run_id, "drift/training_profile.json", str(tmp_path / v.version))
        kept.append(json.loads(Path(path).read_text()))
    assert kept[0] == kept[1] and kept[0]["features"]
    # Scored through its checked copy: the same scores, flagged against the stricter threshold.
    out = tmp_path / "strict.csv"
    scored = subprocess.run([str(VENV_BIN / "dfp"), "score", "--model-uri", f"models:/{name}@strict", "--input",
                             str(registered["data"]), "--out", str(out)], capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr[-3000:]
    summary = json.loads(scored.stdout.strip().splitlines()[-1])
    assert summary["threshold"] == result["threshold"] and summary["target_fpr"] == 0.01
    strict = pd.read_csv(out)
    strict = strict[(strict["status"] == "scored") & strict["sample_id"].isin(registered["scores"].index)]
    strict = strict.set_index("sample_id")
    reference = registered["scores"].loc[strict.index]
    assert len(strict) > 100
    np.testing.assert_allclose(strict["anomaly_score"], reference["anomaly_score"], rtol=1e-5, atol=1e-7)
    assert (strict["is_anomaly"] == (strict["anomaly_score"] > result["threshold"])).all()
    assert strict["is_anomaly"].sum() <= reference["is_anomaly"].sum()
    refused = subprocess.run([str(VENV_BIN / "dfp"), "retarget", "--model", name, "--version", version, "--target-fpr",
                              "0.5"], capture_output=True, text=True)
    assert refused.returncode != 0 and "--target-fpr must be above 0 and below 0.5, got 0.5" in refused.stderr


def _drift(registered, input_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run([str(VENV_BIN / "dfp"), "drift", "--model", registered["name"], "--version",
                           str(registered["version"]), "--input", str(input_path), *extra], capture_output=True, text=True)
    return done, json.loads(done.stdout.strip().splitlines()[-1])


def test_dfp_drift_measures_new_apps_against_the_training_split(registered, rt, tmp_path):
    """The version's own data shows no shift; the same apps with one syscall's counts 100 times
    higher and one rare permission on everywhere show those two features first, and
    --fail-on-drift gates on them with its own exit code."""
    from dfp_core.kronodroid.schema import RAW_TO_CANONICAL

    done, same = _drift(registered, registered["data"], "--fail-on-drift")
    assert done.returncode == 0, done.stderr[-3000:]
    assert same["features"] == 476 and same["features_shifted"] == 0 and not same["drift"]
    assert same["rows"] > 300 and same["rows"] + same["rejected"] == 400
    assert len(same["top_features"]) == 10 and all(f["group"] for f in same["top_features"])
    assert same["verdict"] in done.stderr and same["verdict"].startswith("0 of 476 features shifted beyond PSI 0.25")
    run = rt.mlflow.get_run(rt.mlflow.get_model_version(registered["name"], str(registered["version"])).run_id)
    assert same["benign_val_flagged_share"] == pytest.approx(run.data.metrics["val_fpr"])
    assert same["threshold"] == pytest.approx(run.data.metrics["threshold"])

    # The same apps as one CSV of the real-device subset's format, two columns changed.
    shifted = tmp_path / "shifted" / "real_device"
    generate(shifted.parent, 400, seed=41, layout="subset")
    (csv,) = shifted.glob("*.csv")
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame["read"] = (frame["read"].astype(int) * 100).astype(str)
    frame["BIND_DEVICE_ADMIN"] = "1"
    frame.to_csv(csv, index=False)
    done, moved = _drift(registered, shifted.parent, "--fail-on-drift", "--top", "3")
    assert done.returncode == 3, done.stderr[-3000:]
    assert moved["drift"] and len(moved["top_features"]) == 3
    top = {f["feature"]: f for f in moved["top_features"][:2]}
    assert set(top) == {RAW_TO_CANONICAL["read"], RAW_TO_CANONICAL["BIND_DEVICE_ADMIN"]}, moved["top_features"]
    assert all(f["psi"] > 1.0 for f in top.values())
    assert top[RAW_TO_CANONICAL["BIND_DEVICE_ADMIN"]]["input_mean"] == 1.0
    assert moved["verdict"] in done.stderr and RAW_TO_CANONICAL["read"] in done.stderr
    done, bad = _drift(registered, shifted.parent, "--psi-bound", "0")
    assert done.returncode == 2 and bad["error"] == "--psi-bound must be above 0, got 0.0"


def test_dfp_drift_rebuilds_the_training_baseline_a_version_did_not_keep(registered, rt):
    """A version whose run kept no training profile and no benign validation scores (one trained
    before they were kept): `dfp drift` rebuilds both from its lineage and measures what the
    stored ones measured, and says that it did."""
    from dfp_core.ml.feature_drift import TRAINING_PROFILE
    from dfp_core.ml.retarget import BENIGN_VAL_SCORES

    done, stored = _drift(registered, registered["data"])
    assert done.returncode == 0 and stored["training_baseline"] == "stored", done.stderr[-3000:]
    run_id = rt.mlflow.get_model_version(registered["name"], str(registered["version"])).run_id
    artifacts = rt.mlflow.get_run(run_id).info.artifact_uri.split("mlflow-artifacts:", 1)[1].lstrip("/")
    base = f"{registered['tracking_uri']}/api/2.0/mlflow-artifacts/artifacts/{artifacts}"
    kept = {}
    for path in (TRAINING_PROFILE, BENIGN_VAL_SCORES):
        got = requests.get(f"{base}/{path}", auth=registered["mlflow_user"], timeout=30)
        assert got.status_code == 200
        kept[path] = got.content
        assert requests.delete(f"{base}/{path}", auth=registered["mlflow_user"], timeout=30).status_code == 200
    try:
        done, rebuilt = _drift(registered, registered["data"])
        assert done.returncode == 0, done.stderr[-3000:]
        assert rebuilt["training_baseline"] == "rebuilt" and "rebuilt from its lineage" in done.stderr
        # The same train split profiled again: the same bins, so the very same shifts.
        for key in ("rows", "train_rows", "features", "features_shifted", "top_features", "flagged_share", "threshold"):
            assert rebuilt[key] == stored[key], key
        # The benign validation apps scored by the served model, as training scored them.
        assert rebuilt["benign_val_flagged_share"] == pytest.approx(stored["benign_val_flagged_share"], abs=1e-9)
        for q, value in stored["benign_val_score_quantiles"].items():
            assert rebuilt["benign_val_score_quantiles"][q] == pytest.approx(value, rel=1e-5, abs=1e-7)
    finally:
        for path, content in kept.items():
            assert requests.put(f"{base}/{path}", data=content, auth=registered["mlflow_user"], timeout=30).status_code == 200
    done, again = _drift(registered, registered["data"])
    assert done.returncode == 0 and again["training_baseline"] == "stored"


def test_a_tampered_version_is_refused_before_its_code_runs(registered, rt, stack, tmp_path):
    """The attack of the faults issue: a PUT over the model's files through MLflow's artifact
    API, by anyone who can write to MLflow. Every command that loads the version refuses it, naming the file."""
    from dfp_core.ml.reproduce import reproduce

    download = rt.mlflow.get_model_version_download_uri(registered["name"], registered["version"])
    path = download.split("mlflow-artifacts:", 1)[1].lstrip("/") + "/code/dfp_core/serving/scorer.py"
    url = f"{registered['tracking_uri']}/api/2.0/mlflow-artifacts/artifacts/{path}"
    original = requests.get(url, auth=registered["mlflow_user"], timeout=30)
    assert original.status_code == 200
    marker = tmp_path / "payload-ran"
    payload = original.content + f"\nimport pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n".encode()
    assert requests.put(url, data=payload, auth=registered["mlflow_user"], timeout=30).status_code == 200
    try:
        out = tmp_path / "scores.csv"
        done = subprocess.run([str(VENV_BIN / "dfp"), "score", "--model-uri", registered["uri"], "--input",
                               str(registered["data"]), "--out", str(out)], capture_output=True, text=True)
        assert done.returncode != 0 and not out.exists()
        last = done.stderr.strip().splitlines()[-1]
        assert "does not match the files its training logged (changed: code/dfp_core/serving/scorer.py)" in last, last
        done = subprocess.run([str(VENV_BIN / "dfp"), "serve", "--model-uri", registered["uri"], "--port",
                               str(free_port())], capture_output=True, text=True, timeout=300)
        assert done.returncode != 0 and "changed: code/dfp_core/serving/scorer.py" in done.stderr.strip().splitlines()[-1]
        report = reproduce(rt, registered["name"], version=registered["version"])
        assert not report.matches and report.differences[0].startswith("model files:")
        assert not marker.exists(), "the tampered code ran"
    finally:
        assert requests.put(url, data=original.content, auth=registered["mlflow_user"], timeout=30).status_code == 200
    assert reproduce(rt, registered["name"], version=registered["version"]).matches


def test_a_rewritten_manifest_and_tag_do_not_vouch_for_changed_files(registered, rt, stack, tmp_path, report):
    """The probe of the hardening issue: whoever can write MLflow's artifacts and tags changes
    a file, rewrites the file list and resets the version's digest tag to match. The digests
    then agree; the signature, made with a key MLflow never held, does not, and every command
    that loads the version refuses it before its code runs. A version whose signature is
    removed is refused too."""
    from dfp_core.tracking.integrity import MANIFEST_ARTIFACT, MODEL_DIGEST_TAG, file_digests, manifest_digest
    from dfp_core.ml.reproduce import reproduce
    from dfp_core.tracking.signing import SIGNATURE_ARTIFACT

    api = f"{registered['tracking_uri']}/api/2.0/mlflow-artifacts/artifacts/"
    version = rt.mlflow.get_model_version(registered["name"], registered["version"])
    model_path = rt.mlflow.get_model_version_download_uri(registered["name"], registered["version"])
    model_path = model_path.split("mlflow-artifacts:", 1)[1].lstrip("/")
    run_path = rt.mlflow.get_run(version.run_id).info.artifact_uri.split("mlflow-artifacts:", 1)[1].lstrip("/")
    scorer, manifest, signature = (api + model_path + "/code/dfp_core/serving/scorer.py",
                                   api + run_path + "/" + MANIFEST_ARTIFACT, api + run_path + "/" + SIGNATURE_ARTIFACT)
    originals = {url: requests.get(url, auth=registered["mlflow_user"], timeout=30) for url in (scorer, manifest, signature)}
    assert all(r.status_code == 200 for r in originals.values())
    marker = tmp_path / "payload-ran"
    payload = originals[scorer].content + f"\nimport pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n".encode()
    digests = json.loads(originals[manifest].content)
    local = tmp_path / "scorer.py"
    local.write_bytes(payload)
    digests["code/dfp_core/serving/scorer.py"] = file_digests(tmp_path)["scorer.py"]
    old_tag = version.tags[MODEL_DIGEST_TAG]

    def score() -> str:
        out = tmp_path / "scores.csv"
        done = subprocess.run([str(VENV_BIN / "dfp"), "score", "--model-uri", registered["uri"], "--input",
                               str(registered["data"]), "--out", str(out)], capture_output=True, text=True)
        assert done.returncode != 0 and not out.exists()
        return done.stderr.strip().splitlines()[-1]

    try:
        assert requests.put(scorer, data=payload, auth=registered["mlflow_user"], timeout=30).status_code == 200
        assert requests.put(manifest, data=json.dumps(digests).encode(), auth=registered["mlflow_user"],
                            timeout=30).status_code == 200
        rt.mlflow.set_model_version_tag(registered["name"], registered["version"], MODEL_DIGEST_TAG,
                                        manifest_digest(digests))
        last = score()
        assert "its signature does not verify with the public key" in last and "scorer.py" in last, last
        refused = reproduce(rt, registered["name"], version=registered["version"])
        assert not refused.matches and "signature" in refused.differences[0]
        assert requests.delete(signature, auth=registered["mlflow_user"], timeout=30).status_code in (200, 204)
        assert "has no signature (integrity/model.sig" in score()
        assert not marker.exists(), "the tampered code ran"
    finally:
        for url, original in originals.items():
            assert requests.put(url, data=original.content, auth=registered["mlflow_user"], timeout=30).status_code == 200
        rt.mlflow.set_model_version_tag(registered["name"], registered["version"], MODEL_DIGEST_TAG, old_tag)
    assert reproduce(rt, registered["name"], version=registered["version"]).matches
    report["faults"].append({"fault": "model file changed, its file list rewritten and the digest tag reset in MLflow",
                             "outcome": "refused by its signature before its code ran; unsigned: refused too",
                             "tampered_code_ran": False})


def test_dfp_serve_answers_every_client_mistake_with_a_short_4xx(registered, dfp_served, report):
    """No Content-Type, another one, malformed and deeply nested JSON, a 30 MB body, other
    payload shapes, missing, unknown and non-numeric columns, Infinity: each a 4xx whose
    message is one short line (MLflow's server answered 500 to the first two and listed the
    whole schema). NaN is a missing value, imputed. The server answers normally after all."""
    url = f"{dfp_served['url']}/invocations"
    example = _example(registered)["dataframe_split"]
    columns, rows = example["columns"], example["data"]
    feature = columns[0]

    def body(cols, data) -> str:
        return json.dumps({"dataframe_split": {"columns": cols, "data": data}})

    def with_value(value) -> str:  # json writes float("inf") and float("nan") as Infinity and NaN
        data = [list(r) for r in rows]
        data[0][0] = value
        return body(columns, data)

    cases = {
        "no Content-Type": (requests.post(url, data=body(columns, rows).encode(), timeout=30), 415, "Content-Type"),
        "text/plain": (requests.post(url, data=body(columns, rows), headers={"Content-Type": "text/plain"}, timeout=30),
                       415, "application/json"),
        "malformed JSON": (_post(dfp_served["url"], '{"dataframe_split": {'), 400, "not valid JSON"),
        "100,000 nested arrays": (_post(dfp_served["url"], "[" * 100_000 + "]" * 100_000), 400, "nested too deeply"),
        "30 MB body": (_post(dfp_served["url"], " " * (30 << 20)), 413, "over 16 MB"),
        "a list, not an object": (_post(dfp_served["url"], "[1, 2]"), 400, "dataframe_split or dataframe_records"),
        "another payload shape": (_post(dfp_served["url"], '{"instances": [[1, 2]]}'), 400, "instances"),
        "rows of the wrong width": (_post(dfp_served["url"], body(columns, [r[:3] for r in rows])), 400, "list of"),
        "missing columns": (_post(dfp_served["url"], body(columns[3:], [r[3:] for r in rows])), 400, "missing feature"),
        "a non-numeric value": (_post(dfp_served["url"], with_value("twelve")), 400, f"column {feature}: 'twelve'"),
        "Infinity": (_post(dfp_served["url"], with_value(float("inf"))), 400, f"infinite value in column(s): {feature}"),
        "GET /invocations": (requests.get(url, timeout=30), 405, "POST"),
    }
    for what, (response, status, words) in cases.items():
        assert response.status_code == status, (what, response.status_code, response.text[:300])
        message = response.json()["message"]
        assert words in message and len(message) < 300 and "\n" not in message, (what, message)
    # A missing value (NaN) is imputed; extra columns are ignored.
    assert _post(dfp_served["url"], with_value(float("nan"))).status_code == 200
    extra = body([*columns, "not_a_feature"], [[*r, 1] for r in rows])
    response = _post(dfp_served["url"], extra)
    assert response.status_code == 200
    _matches_dfp_score(registered, response.json()["predictions"], [r[columns.index("sample_id")] for r in rows])
    assert requests.get(f"{dfp_served['url']}/ping", timeout=10).status_code == 200
    report["faults"].append({"fault": "malformed requests to `dfp serve`", "cases": len(cases) + 2,
                             "server_errors_5xx": 0, "server_up_after": True})

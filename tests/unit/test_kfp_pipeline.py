"""The Kubeflow pipeline definition, its SparkApplication and the submit/poll
logic against a fake Kubernetes API at the HTTP level (no cluster here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from dfp_kfp.spark_application import (
    SparkApplicationError, SparkApplications, SparkAppSpec, build_spark_application, wait_for_completion,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_ONE_LINER = (
    "from orchestration.kubeflow.dfp_kfp.pipelines.kronodroid_autoencoder_pipeline import "
    "compile_kronodroid_autoencoder_pipeline; print(compile_kronodroid_autoencoder_pipeline())"
)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp")
    # The seed's command, verbatim, from the repository root.
    # Credentials in the compiling environment must not leak into the YAML.
    env = {**os.environ, "LAKEFS_ACCESS_KEY_ID": "AKIACOMPILEENVXX1234", "LAKEFS_SECRET_ACCESS_KEY": "compile-env-secret-value"}
    result = subprocess.run([sys.executable, "-c", SEED_ONE_LINER], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True, env=env)
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path == REPO_ROOT / "kronodroid_autoencoder_pipeline.yaml" and path.is_file()
    text = path.read_text()
    (out / "pipeline.yaml").write_text(text)
    docs = list(yaml.safe_load_all(text))  # the pipeline spec, then the Kubernetes platform spec
    return docs[0], docs


def _dag_tasks(spec) -> dict:
    """Every task of the pipeline, through its condition branches: name -> (task, dag it is in)."""
    found = {}

    def walk(dag_name, dag):
        for name, task in dag["dag"]["tasks"].items():
            found[name] = (task, dag_name)
            sub = task.get("componentRef", {}).get("name", "")
            if sub.startswith("comp-condition"):
                walk(sub, spec["components"][sub])

    walk("root", spec["root"])
    return found


def test_three_stages_in_order(compiled):
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    assert {"kronodroid-spark-transform", "lakefs-commit-merge"} <= set(tasks)
    assert tasks["lakefs-commit-merge"]["dependentTasks"] == ["kronodroid-spark-transform"]
    merge_in = tasks["lakefs-commit-merge"]["inputs"]["parameters"]["run_branch"]["taskOutputParameter"]
    assert merge_in == {"outputParameterKey": "run_branch", "producerTask": "kronodroid-spark-transform"}
    # Training, on a GPU node or not, after the merge and on its commit.
    trains = {n: t for n, (t, _) in _dag_tasks(spec).items() if n.startswith("train-kronodroid-autoencoder")}
    assert len(trains) == 2
    for name, task in trains.items():
        ref = task["inputs"]["parameters"]["lakefs_ref"]
        assert ref["componentInputParameter"].startswith("pipelinechannel--lakefs-commit-merge"), name
    branches = [t for n, t in tasks.items() if n.startswith("condition-branches")]
    assert len(branches) == 1 and branches[0]["dependentTasks"] == ["lakefs-commit-merge"]


def test_seed_parameter_names_and_defaults(compiled):
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    defaults = {name: p.get("defaultValue") for name, p in params.items()}
    assert defaults["run_transform"] is True
    assert defaults["target_branch"] == "main"
    assert defaults["mlflow_tracking_uri"] == "http://mlflow:5000"
    # The training defaults, defined once in TrainConfig.
    assert (defaults["max_epochs"], defaults["latent_dim"], defaults["batch_size"]) == (50, 64, 128)
    assert defaults["max_rows_per_split"] == 0
    assert defaults["lakefs_repository"] == "kronodroid"
    assert params["run_transform"]["parameterType"] == "BOOLEAN"


def test_no_credentials_in_the_yaml(compiled):
    spec, docs = compiled
    text = yaml.safe_dump_all(docs)
    assert not re.search(r"AKIA[A-Z0-9]{12,}", text) and "compile-env-secret-value" not in text
    for name in spec["root"]["inputDefinitions"]["parameters"]:
        assert not re.search(r"secret|password|access_key|token", name, re.I), name
    executors = spec["deploymentSpec"]["executors"]
    for executor in executors.values():
        for env in executor["container"].get("env", []):
            assert "SECRET" not in env["name"] and "ACCESS_KEY" not in env["name"]
    secrets = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(secrets) == set(executors)  # every step gets lakeFS credentials from the Secret
    trainers = 0
    for name, conf in secrets.items():
        refs = {ref["secretName"]: ref for ref in conf["secretAsEnv"]}
        assert {e["envVar"] for e in refs["lakefs-credentials"]["keyToEnv"]} == {"LAKEFS_ACCESS_KEY_ID", "LAKEFS_SECRET_ACCESS_KEY"}
        assert not refs["lakefs-credentials"].get("optional")
        # Training steps also get MLflow's basic-auth pair and the model-signing key, from Secrets that may be absent.
        assert set(refs) == ({"lakefs-credentials", "mlflow-credentials", "model-signing-key"} if "train" in name
                             else {"lakefs-credentials"})
        if "train" in name:
            trainers += 1
            assert refs["mlflow-credentials"]["optional"] is True and refs["model-signing-key"]["optional"] is True
            assert [e["envVar"] for e in refs["model-signing-key"]["keyToEnv"]] == ["DFP_MODEL_SIGNING_KEY_PEM"]
            assert {e["envVar"] for e in refs["mlflow-credentials"]["keyToEnv"]} == {"MLFLOW_TRACKING_USERNAME",
                                                                                     "MLFLOW_TRACKING_PASSWORD"}
    assert trainers == 2  # the CPU and the GPU branch


def test_steps_run_versioned_images_and_install_nothing(compiled):
    from dfp_core import __version__

    spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    images = {name: e["container"]["image"] for name, e in executors.items()}
    assert images["exec-kronodroid-spark-transform"] == f"dfp/kronodroid-spark:{__version__}"
    assert images["exec-lakefs-commit-merge"] == f"dfp/kronodroid-spark:{__version__}"
    assert {i for n, i in images.items() if n.startswith("exec-train")} == {f"dfp/kronodroid-train:{__version__}"}
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["spark_image"]["defaultValue"] == f"dfp/kronodroid-spark:{__version__}"
    for name, executor in executors.items():
        container = executor["container"]
        command = " ".join(container["command"] + container.get("args", []))
        assert "pip install" not in command and "ensurepip" not in command, name
        assert "python3 -m kfp.dsl.executor_main" in command, name  # kfp comes from the image
        assert not container["image"].endswith(":latest"), name


def test_every_step_has_requests_and_limits_and_training_asks_for_a_gpu_on_gpu(compiled):
    spec, _ = compiled
    for name, executor in spec["deploymentSpec"]["executors"].items():
        resources = executor["container"]["resources"]
        for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert resources.get(key), (name, key)
    tasks = _dag_tasks(spec)
    gpu = {n: (t, dag) for n, (t, dag) in tasks.items() if n.startswith("train-kronodroid-autoencoder")}
    by_condition = {}
    for name, (task, dag) in gpu.items():
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        accelerator = spec["deploymentSpec"]["executors"][executor]["container"]["resources"].get("accelerator")
        condition = tasks[next(n for n, (t, _) in tasks.items() if t.get("componentRef", {}).get("name") == dag)][0]
        by_condition[condition["triggerPolicy"]["condition"]] = accelerator
    [(on_gpu, accelerator)] = [(c, a) for c, a in by_condition.items() if not c.startswith("!")]
    assert "pipelinechannel--accelerator'] == 'gpu'" in on_gpu
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1"
    assert [a for c, a in by_condition.items() if c.startswith("!")] == [None]


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_the_network_policy_covers_every_pod_of_a_run_and_opens_only_what_the_steps_use(compiled):
    """Steps and Spark pods carry the label the NetworkPolicy selects; it lets them reach
    DNS, lakeFS, MLflow, the Kubernetes API, the KFP launcher's services and each other."""
    _, docs = compiled
    [policy] = yaml.safe_load_all((REPO_ROOT / "orchestration/kubeflow/manifests/pipeline-network-policy.yaml").read_text())
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    spec = policy["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, config in executors.items():
        labels = config["podMetadata"]["labels"]
        assert _selects(spec["podSelector"], labels), name
    app = build_spark_application(_spec())["spec"]
    for role in ("driver", "executor"):
        assert _selects(spec["podSelector"], app[role]["labels"]), role
    ports = {(p.get("protocol", "TCP"), p["port"]) for rule in spec["egress"] for p in rule.get("ports", [])}
    assert {("UDP", 53), ("TCP", 8000), ("TCP", 5000), ("TCP", 443)} <= ports
    # Every rule is bounded: by ports, or to the run's own pods (Spark driver <-> executors).
    for rule in spec["egress"]:
        if not rule.get("ports"):
            assert [_selects(t["podSelector"], app["driver"]["labels"]) for t in rule["to"]] == [True], rule
    # No rule opens every address on every port.
    assert all(rule.get("to") or rule.get("ports") for rule in spec["egress"])


def _spec(**overrides) -> SparkAppSpec:
    values = dict(name="kronodroid-run-1", namespace="kubeflow-user", image="dfp/kronodroid-spark:latest",
                  arguments=["--repo", "kronodroid", "--run-branch", "run-1", "--no-merge"],
                  lakefs_endpoint="http://lakefs:8000", lakefs_repository="kronodroid")
    values.update(overrides)
    return SparkAppSpec(**values)


def test_spark_application_runs_our_job_with_credentials_only_as_secret_references():
    """What the manifest says for us; the API server checks it against the operator's CRD for
    real in tests/integration/k8s_cluster/test_k8s_pipeline.py."""
    manifest = build_spark_application(_spec())
    assert manifest["metadata"]["name"] == "kronodroid-run-1" and manifest["metadata"]["namespace"] == "kubeflow-user"
    spec = manifest["spec"]
    assert spec["mainApplicationFile"].startswith("local:///") and spec["mainApplicationFile"].endswith("kronodroid_iceberg_job.py")
    assert spec["restartPolicy"]["type"] == "Never" and spec["driver"]["serviceAccount"] == "spark"
    assert spec["hadoopConf"]["fs.s3a.endpoint"] == "http://lakefs:8000"
    assert spec["hadoopConf"]["fs.s3a.path.style.access"] == "true"
    assert spec["arguments"][-1] == "--no-merge"
    # Credentials only as Secret references.
    for role in ("driver", "executor"):
        for env in spec[role]["env"]:
            if re.search("KEY|SECRET", env["name"]):
                assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"] == "lakefs-credentials"
    # The hand-runnable example manifest has the same shape.
    example = yaml.safe_load((REPO_ROOT / "orchestration/kubeflow/manifests/sparkapplication-example.yaml").read_text())
    assert set(example["spec"]) <= set(spec) | {"imagePullPolicy"}
    assert example["spec"]["mainApplicationFile"] == spec["mainApplicationFile"]


def test_job_accepts_the_arguments_the_component_passes():
    from dfp_spark.kronodroid_iceberg_job import parse_args

    args = parse_args(["--repo", "kronodroid", "--target-branch", "main", "--run-branch", "run-1", "--no-merge", "--split-seed", "7"])
    assert args.run_branch == "run-1" and not args.merge and args.split_seed == 7


class FakeKubernetes:
    """The Spark Operator's CRD endpoints and the pods/log endpoint, in memory."""

    def __init__(self, states: list[str], error: str = "", log: str = "", faults: list = ()):
        self.states = list(states)
        self.error, self.log = error, log
        # Answers given before the real one, one per request: an HTTP status, or "reset" (connection dropped).
        self.faults = list(faults)
        self.requests = 0
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.auth: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _fault(self) -> bool:
                fake.requests += 1
                if not fake.faults:
                    return False
                fault = fake.faults.pop(0)
                if fault == "reset":
                    self.close_connection = True
                    self.connection.shutdown(2)  # no response at all
                else:
                    self._send(fault, {"message": f"injected {fault}"})
                return True

            def _send(self, code: int, body: object, content_type: str = "application/json"):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                if self._fault():
                    return
                fake.auth.append(self.headers.get("Authorization", ""))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.endswith("/namespaces/kubeflow-user/sparkapplications"):
                    return self._send(404, {"message": "not found"})
                fake.created.append(body)
                self._send(201, body)

            def do_GET(self):
                if self._fault():
                    return
                if "/pods/" in self.path and self.path.split("?")[0].endswith("/log"):
                    return self._send(200, fake.log, "text/plain")
                name = self.path.rsplit("/", 1)[-1]
                if not any(c["metadata"]["name"] == name for c in fake.created):
                    return self._send(404, {"message": f'sparkapplications "{name}" not found'})
                state = fake.states.pop(0) if len(fake.states) > 1 else fake.states[0]
                status = {"applicationState": {"state": state}, "driverInfo": {"podName": f"{name}-driver"}}
                if state.startswith("FAIL"):
                    status["applicationState"]["errorMessage"] = fake.error
                self._send(200, {"status": status})

            def do_DELETE(self):
                fake.deleted.append(self.path.rsplit("/", 1)[-1])
                self._send(200, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def fake_k8s():
    servers = []

    def start(*args, **kwargs):
        servers.append(FakeKubernetes(*args, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_submit_and_poll_until_completed(fake_k8s):
    fake = fake_k8s(["", "SUBMITTED", "RUNNING", "RUNNING", "COMPLETED"])
    api = SparkApplications.for_server(fake.url, token="t0ken", sleep=lambda s: None)
    manifest = build_spark_application(_spec())
    api.create(manifest)
    seen = []
    status = wait_for_completion(api, "kubeflow-user", "kronodroid-run-1", timeout_s=10, poll_s=0.01, log=seen.append)
    assert status["applicationState"]["state"] == "COMPLETED"
    assert fake.created == [manifest] and fake.auth == ["Bearer t0ken"]
    assert [s.split(": ")[1] for s in seen] == ["PENDING", "SUBMITTED", "RUNNING", "COMPLETED"]


@pytest.mark.parametrize("final", ["FAILED", "FAILING"])
def test_failure_reports_state_error_and_driver_log(fake_k8s, final):
    """FAILING (the driver pod gone, no retry under restartPolicy Never) is reported as the failure it is."""
    fake = fake_k8s(["RUNNING", final], error="driver container failed with ExitCode: 2",
                    log="error: table stg_kronodroid.quarantine ...\nTraceback: boom")
    api = SparkApplications.for_server(fake.url, sleep=lambda s: None)
    api.create(build_spark_application(_spec()))
    with pytest.raises(SparkApplicationError) as info:
        wait_for_completion(api, "kubeflow-user", "kronodroid-run-1", timeout_s=10, poll_s=0.01, log=lambda m: None)
    message = str(info.value)
    assert "ended FAILED" in message and "ExitCode: 2" in message and "Traceback: boom" in message
    assert ("operator state FAILING" in message) == (final == "FAILING")


def test_timeout_is_reported(fake_k8s):
    fake = fake_k8s(["RUNNING"])
    api = SparkApplications.for_server(fake.url, sleep=lambda s: None)
    api.create(build_spark_application(_spec()))
    with pytest.raises(SparkApplicationError, match="did not finish within 0s .*RUNNING"):
        wait_for_completion(api, "kubeflow-user", "kronodroid-run-1", timeout_s=0, poll_s=0.01, log=lambda m: None)


def test_api_errors_are_explained(fake_k8s):
    fake = fake_k8s(["RUNNING"])
    api = SparkApplications.for_server(fake.url, sleep=lambda s: None)
    with pytest.raises(SparkApplicationError, match="answered 404.*not found"):
        api.get("kubeflow-user", "missing-app")
    assert fake.requests == 1  # a 404 is an answer, not a blip: no retry
    wrong_ns = build_spark_application(_spec(namespace="other"))
    with pytest.raises(SparkApplicationError, match="create SparkApplication"):
        api.create(wrong_ns)
    api.delete("kubeflow-user", "missing-app")  # deleting what is gone is fine
    assert fake.deleted == ["missing-app"]


def test_transient_api_errors_are_retried_and_a_finished_job_is_kept(fake_k8s):
    """Blips at submit and during a long poll (503, 429, a dropped connection) are retried with backoff."""
    fake = fake_k8s(["RUNNING", "RUNNING", "COMPLETED"], faults=[503])
    waits = []
    api = SparkApplications.for_server(fake.url, sleep=waits.append)
    api.create(build_spark_application(_spec()))
    assert len(fake.created) == 1 and waits == [1.0]
    # Dropped connections (more than the HTTP client's own retries), then 429 and 500, in one poll.
    fake.faults = ["reset"] * 6 + [429, 500]
    waits.clear()
    status = wait_for_completion(api, "kubeflow-user", "kronodroid-run-1", timeout_s=10, poll_s=0.01, log=lambda m: None)
    assert status["applicationState"]["state"] == "COMPLETED" and fake.faults == []
    assert len(waits) >= 3 and waits == [min(2.0 ** i, 30.0) for i in range(len(waits))]  # exponential backoff


def test_an_api_that_stays_down_fails_with_one_line(fake_k8s):
    fake = fake_k8s(["RUNNING"], faults=[503] * 10)
    api = SparkApplications.for_server(fake.url, attempts=3, sleep=lambda s: None)
    with pytest.raises(SparkApplicationError, match=r"create SparkApplication kronodroid-run-1: Kubernetes API answered 503: injected 503"):
        api.create(build_spark_application(_spec()))
    assert fake.requests == 3 and fake.created == []


def test_no_kubeconfig_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    with pytest.raises(SparkApplicationError, match="no Kubernetes configuration.*spark_mode=local"):
        SparkApplications.from_cluster()

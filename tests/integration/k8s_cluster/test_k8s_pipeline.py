"""The transform through the real Spark Operator on the one-node cluster, as a user runs it.

The project's manifests (RBAC, NetworkPolicy, Secret shapes, the SparkApplication example)
and `dfp kserve`'s InferenceService go to the real API server. The pipeline's service
account is checked both ways with its own token. Then `dfp pipeline run-local --runner
docker --spark-mode kubernetes` runs every step in its image against a stack that listens
on the node's address: the transform step submits the SparkApplication as that account,
the operator's driver and executor pods write the Iceberg tables on the run branch, the
next steps commit, merge and register a version with its lineage. A SparkApplication that
fails, one that runs past its timeout and one whose driver is deleted mid-write each end
the step in one line; the run branch, the lease and the SparkApplication are gone and main
is as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from dfp_core import lineage
from dfp_core.kronodroid import schema
from dfp_core.k8s import pipeline_access
from dfp_core.kronodroid.generator import generate
from dfp_core.lakefs_ops import LakeFS
from dfp_core.runtime import Runtime
from dfp_core.settings import LakeFSSettings, StackSettings
from dfp_spark.run_lease import LEASE_BRANCH, LEASES_PREFIX
from tests.inputs import archive_rows, csv_text

pytestmark = [pytest.mark.k8s, pytest.mark.docker, pytest.mark.slow]
NAMESPACE = "dfp-pipeline"  # the operator watches it (tests/k8s_node.py: spark_operator)
# Small steps for a 2-core node: one executor beside the driver, a short training.
RUN_OPTIONS = ["--spark-mode", "kubernetes", "--spark-namespace", NAMESPACE, "--spark-executor-instances", "1",
               "--max-epochs", "1", "--batch-size", "64", "--latent-dim", "8", "--hidden-dims", "32,16",
               "--accelerator", "cpu", "--no-baselines"]


@pytest.fixture(scope="module")
def node_stack(k8s_node, tmp_path_factory):
    """A stack of its own that listens on the node's address, where pods reach it."""
    from dfp_core import stack as stack_mod
    from dfp_core.k8s import layout
    from dfp_core.stack import free_port

    host = layout.host_address()
    settings = StackSettings(home=tmp_path_factory.mktemp("k8s-stack"), host=host, lakefs_port=free_port(host),
                             mlflow_port=free_port(host), lakefs_acl=False)
    with stack_mod.running(settings, log=lambda m: None) as running:
        creds = running["credentials"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEFS_", "MLFLOW_", "DFP_"))}
        env.update(running["env"])
        lakefs = LakeFS(LakeFSSettings(endpoint=settings.lakefs_endpoint, access_key_id=creds["LAKEFS_ACCESS_KEY_ID"],
                                       secret_access_key=creds["LAKEFS_SECRET_ACCESS_KEY"]))
        yield {"settings": settings, "env": env, "credentials": creds, "lakefs": lakefs}


@pytest.fixture(scope="module")
def cluster(k8s_node, spark_operator, node_stack, tmp_path_factory):
    """The pipeline's namespace set up as the README says: RBAC, NetworkPolicy, the lakeFS
    Secret (the stack's pair); a kubeconfig of the pipeline's account."""
    creds = node_stack["credentials"]
    kubeconfig = pipeline_access.set_up(
        k8s_node.settings, NAMESPACE, (creds["LAKEFS_ACCESS_KEY_ID"], creds["LAKEFS_SECRET_ACCESS_KEY"]),
        tmp_path_factory.mktemp("pipeline-account") / "kubeconfig")
    return {"kubeconfig": kubeconfig}


def _as_pipeline_account(cluster):
    from kubernetes import config

    from dfp_kfp.spark_application import SparkApplications

    return SparkApplications(config.new_client_from_config(config_file=str(cluster["kubeconfig"])), attempts=1)


def test_the_manifests_are_accepted_by_the_api_server(k8s_node, cluster):
    """Server-side apply of every manifest (the examples as a server-side dry run: they hold
    placeholders), each object then read back."""
    from dfp_core.k8s import api

    applied = pipeline_access.in_namespace(
        [d for name in pipeline_access.APPLIED for d in pipeline_access.manifests(name)], NAMESPACE)
    for doc in applied:  # applied by the fixture: the server kept them as written
        got = k8s_node.kubectl("-n", NAMESPACE, "get", doc["kind"].lower(), doc["metadata"]["name"], "-o", "json")
        assert got.returncode == 0, got.stderr
        if doc["kind"] == "Role":
            assert json.loads(got.stdout)["rules"] == doc["rules"]
    examples = pipeline_access.in_namespace(
        pipeline_access.manifests("secrets-example.yaml") + pipeline_access.manifests("sparkapplication-example.yaml"),
        NAMESPACE)
    for doc in examples:
        done = k8s_node.kubectl("apply", "--server-side", "--dry-run=server", f"--field-manager={api.FIELD_MANAGER}",
                                "-f", "-", stdin=json.dumps(doc))
        assert done.returncode == 0, (doc["kind"], doc["metadata"]["name"], done.stderr)
    # A field the CRD does not know is refused by the server (its schema is enforced).
    bad = json.loads(json.dumps([d for d in examples if d["kind"] == "SparkApplication"][0]))
    bad["spec"]["driver"]["no_such_field"] = 1
    refused = k8s_node.kubectl("apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-",
                               stdin=json.dumps(bad))
    assert refused.returncode != 0 and "no_such_field" in refused.stderr


def test_the_pipeline_account_may_do_what_the_transform_needs_and_nothing_more(k8s_node, cluster):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from dfp_kfp.spark_application import GROUP, PLURAL, VERSION, SparkApplicationError

    apps = _as_pipeline_account(cluster)
    example = pipeline_access.in_namespace(pipeline_access.manifests("sparkapplication-example.yaml"), NAMESPACE)[0]
    created = apps.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, example, dry_run="All")
    assert created["metadata"]["name"] == example["metadata"]["name"]
    with pytest.raises(SparkApplicationError, match="answered 404"):  # allowed to look: it is not there
        apps.get(NAMESPACE, "no-such-application")
    apps.delete(NAMESPACE, "no-such-application")  # allowed (a 404 counts as deleted)
    pods = apps.core.list_namespaced_pod(NAMESPACE)
    assert pods.items is not None
    with pytest.raises(ApiException) as log_of_nothing:  # allowed to read logs: 404, not 403
        apps.core.read_namespaced_pod_log("no-such-pod", NAMESPACE)
    assert log_of_nothing.value.status == 404

    refused = {
        "read its Secrets": lambda: apps.core.read_namespaced_secret("lakefs-credentials", NAMESPACE),
        "list Secrets": lambda: apps.core.list_namespaced_secret(NAMESPACE),
        "create pods": lambda: apps.core.create_namespaced_pod(NAMESPACE, client.V1Pod(
            metadata=client.V1ObjectMeta(name="not-allowed"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="dfp-test/busybox:1")]))),
        "create SparkApplications elsewhere": lambda: apps.custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, {**example, "metadata": {"name": "x", "namespace": "default"}},
            dry_run="All"),
        "change its own Role": lambda: client.RbacAuthorizationV1Api(apps.core.api_client).delete_namespaced_role(
            pipeline_access.PIPELINE_ACCOUNT, NAMESPACE),
    }
    for what, call in refused.items():
        with pytest.raises(ApiException) as denied:
            call()
        assert denied.value.status == 403, (what, denied.value.status)


def _run_local(node_stack, cluster, data: Path, repo: str, run_id: str, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "dfp_app.cli", "pipeline", "run-local", "--runner", "docker", "--input", str(data),
           "--repo", repo, "--run-id", run_id, "--model-name", f"k8s_{repo}", "--kubeconfig", str(cluster["kubeconfig"]),
           *RUN_OPTIONS, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=node_stack["env"])
    return proc.communicate(timeout=1800) + (proc.returncode,) if wait else proc


FCT_HASH = """
import json, os, sys
from pyspark.sql import functions as F
from dfp_core import iceberg
from dfp_core.iceberg import TableRef
from dfp_core.kronodroid import schema
from dfp_core.params import TransformConfig
from dfp_core.runtime import Runtime
from dfp_spark.transform_run import run_transform
data, k8s_repo, local_repo = sys.argv[1:4]
with Runtime.from_env(os.environ, app_name="fct-hash") as rt:
    run_transform(rt, TransformConfig(input_dir=data, repo=local_repo, run_id="local-mode"))
    spark, hashes = rt.spark(), {}
    for repo in (k8s_repo, local_repo):
        df = spark.table(iceberg.qualified(spark, TableRef(repo, "main", schema.MART_NAMESPACE, schema.FCT_TABLE)))
        row = df.agg(F.count(F.lit(1)).alias("n"), F.bit_xor(F.xxhash64(*sorted(df.columns))).alias("h")).collect()[0]
        hashes[repo] = [int(row["n"]), int(row["h"])]
print(json.dumps(hashes))
"""


def test_the_pipeline_runs_through_the_spark_operator(k8s_node, cluster, node_stack, tmp_path):
    data = tmp_path / "data"
    generate(data, 300, seed=29)
    repo = "k8s" + uuid.uuid4().hex[:8]
    lakefs = node_stack["lakefs"]
    out, err, code = _run_local(node_stack, cluster, data, repo, "on-k8s")
    assert code == 0, err[-5000:]
    result = json.loads(out.strip().splitlines()[-1])

    # The operator ran the job: the SparkApplication completed, with a driver and an executor
    # in our Spark image, as the driver service account of spark-rbac.yaml.
    app = json.loads(k8s_node.kubectl("-n", NAMESPACE, "get", "sparkapplication", "kronodroid-on-k8s",
                                      "-o", "json").stdout)
    assert app["status"]["applicationState"]["state"] == "COMPLETED"
    assert app["status"]["executorState"], app["status"]
    driver = json.loads(k8s_node.kubectl("-n", NAMESPACE, "get", "pod", app["status"]["driverInfo"]["podName"],
                                         "-o", "json").stdout)
    assert driver["spec"]["serviceAccountName"] == "spark"
    assert driver["spec"]["containers"][0]["image"] == "dfp/kronodroid-spark:0.1.0"
    assert driver["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dfp-kronodroid"
    # Its credentials came from the Secret, by reference only (the operator's webhook puts them on the pod).
    env = {e["name"]: e for e in driver["spec"]["containers"][0]["env"]}
    for name in ("LAKEFS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"] == "lakefs-credentials"

    # Committed, frozen, merged; the lease released; a version registered with its lineage.
    head = lakefs.resolve_commit(repo, "main")
    assert result["lakefs_commit"] == head and lakefs.commit_metadata(repo, head)["dfp.run_id"] == "on-k8s"
    assert lakefs.is_merged_into(repo, "run-on-k8s", "main") and not lakefs.branch_exists(repo, "run-on-k8s")
    assert lakefs.list_paths(repo, LEASE_BRANCH, LEASES_PREFIX) == []
    with Runtime.from_env(node_stack["env"], app_name="k8s-tests") as rt:  # MLflow asks for the stack's login
        version = rt.mlflow.get_model_version(result["model_name"], result["model_version"])
    assert set(lineage.LINEAGE_TAGS) <= set(version.tags) and len(lineage.LINEAGE_TAGS) == 9
    assert version.tags["data.lakefs_ref"] == head

    # The same input transformed in local mode has the same fct content.
    done = subprocess.run([sys.executable, "-c", FCT_HASH, str(data), repo, repo + "-local"], capture_output=True,
                          text=True, env=node_stack["env"], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    hashes = json.loads(done.stdout.strip().splitlines()[-1])
    assert hashes[repo] == hashes[repo + "-local"] and hashes[repo][0] > 250

    # `dfp kserve`'s InferenceService for this version is accepted by the server (KServe's CRD).
    _install_kserve_crd(k8s_node)
    isvc = tmp_path / "isvc.yaml"
    made = subprocess.run([sys.executable, "-m", "dfp_app.cli", "kserve", "--model", result["model_name"], "--version",
                           str(result["model_version"]), "--namespace", NAMESPACE, "--storage-uri", "s3://bucket/model",
                           "--out", str(isvc)], capture_output=True, text=True, env=node_stack["env"])
    assert made.returncode == 0, made.stderr[-2000:]
    accepted = k8s_node.kubectl("apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", str(isvc))
    assert accepted.returncode == 0, accepted.stderr


def _install_kserve_crd(k8s_node) -> None:
    from dfp_core.k8s import api
    from dfp_core.ml.kserve import KSERVE_VERSION
    from tests.kserve_crd import inference_service_crd

    crd = inference_service_crd(KSERVE_VERSION)
    if crd is None:
        pytest.skip("no Go to fetch KServe's CRD from the Go module proxy")
    api.apply(k8s_node.settings, [crd])
    k8s_node.kubectl("wait", "--for=condition=Established", "crd/inferenceservices.serving.kserve.io", "--timeout=60s")


def _all_rows_invalid(data: Path) -> None:
    """Every row's label made unreadable: each passes the step's scan, and the job quarantines all."""
    for archive in data.rglob("*.zip"):
        name, rows = archive_rows(archive)
        label = rows[0].index(schema.LABEL)
        for row in rows[1:]:
            row[label] = "maybe"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr(name, csv_text(rows))


def _delete_driver_mid_write(k8s_node, proc, app: str) -> None:
    """Once the driver's log shows a table written, the driver pod goes (no grace period)."""
    deadline = time.monotonic() + 600
    driver = f"{app}-driver"
    while time.monotonic() < deadline and proc.poll() is None:
        log = k8s_node.kubectl("-n", NAMESPACE, "logs", driver, timeout=30)
        if log.returncode == 0 and " written" in log.stdout:
            deleted = k8s_node.kubectl("-n", NAMESPACE, "delete", "pod", driver, "--grace-period=0", "--force")
            assert deleted.returncode == 0, deleted.stderr
            return
        time.sleep(1)
    pytest.fail("the driver never wrote a table")


@pytest.mark.parametrize("fault", ["failing job", "timeout", "driver deleted mid-write"])
def test_a_failure_on_the_cluster_is_one_line_and_leaves_nothing(k8s_node, cluster, node_stack, tmp_path, fault):
    data = tmp_path / "data"
    generate(data, 120, seed=31)
    repo = "k8f" + uuid.uuid4().hex[:8]
    lakefs = node_stack["lakefs"]
    lakefs.ensure_repository(repo)
    before = lakefs.resolve_commit(repo, "main")
    run_id = "fault-" + uuid.uuid4().hex[:6]
    app = f"kronodroid-{run_id}"
    if fault == "failing job":
        _all_rows_invalid(data)
        out, err, code = _run_local(node_stack, cluster, data, repo, run_id)
    elif fault == "timeout":
        out, err, code = _run_local(node_stack, cluster, data, repo, run_id, "--spark-timeout-seconds", "20")
    else:
        proc = _run_local(node_stack, cluster, data, repo, run_id, wait=False)
        _delete_driver_mid_write(k8s_node, proc, app)
        out, err = proc.communicate(timeout=1200)
        code = proc.returncode
    assert code != 0
    # KFP's DockerRunner passes the step container's output on to stdout.
    step_line = [line.strip() for line in (out + err).splitlines()
                 if line.strip().startswith(f"error: SparkApplication {app} ")]
    assert len(step_line) == 1, (out + err)[-6000:]
    line = step_line[0]
    expected = {"failing job": "ended FAILED", "timeout": "did not finish within 20s",
                "driver deleted mid-write": "ended FAILED"}[fault]
    assert expected in line and "driver log tail: " in line, line
    if fault == "failing job":
        assert "no input row passed the checks" in line or "ExitCode: 2" in line, line
    assert json.loads(out.strip().splitlines()[-1])["exit_code"] == 2, (out + err)[-6000:]
    # Nothing is left: main as it was, no run branch or tag, no lease, no SparkApplication.
    assert lakefs.resolve_commit(repo, "main") == before
    assert not lakefs.branch_exists(repo, f"run-{run_id}") and not lakefs.tag_exists(repo, f"run-{run_id}")
    assert lakefs.list_paths(repo, LEASE_BRANCH, LEASES_PREFIX) == []
    gone = k8s_node.kubectl("-n", NAMESPACE, "get", "sparkapplication", app)
    assert gone.returncode != 0 and "NotFound" in gone.stderr

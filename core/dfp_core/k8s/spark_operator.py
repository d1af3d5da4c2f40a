"""The Kubeflow Spark Operator on the node, installed as users install it: the release's
CRDs by server-side apply, then its Helm chart (``helm upgrade --install``), controller and
webhook watching the pipeline's namespace with the webhook on. The binaries and the image
``dfp/spark-operator`` (the release's binary and entrypoint FROM our Spark image) come from
``tools/scripts/build_spark_operator.sh``, built from the vendored release source; both
images are imported into the node (no registry).

A SparkApplication on this node needs: ``namespace: dfp-pipeline``,
``spec.driver.serviceAccount: spark-operator-spark`` (the chart's Spark service account there),
``spec.image: dfp/kronodroid-spark:0.1.0`` with ``imagePullPolicy: IfNotPresent`` (or
``Never``), and host services (lakeFS, MLflow) at the node's address ``10.244.0.1``, where they
must listen.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable

from dfp_core.errors import StackError
from dfp_core.k8s import api, images
from dfp_core.k8s.layout import NodeSettings
from dfp_core.settings import REPO_ROOT

VERSION = "v2.5.2"
RELEASE = "spark-operator"  # the Helm release, and the operator's namespace
NAMESPACE = "spark-operator"
JOB_NAMESPACE = "dfp-pipeline"
IMAGE = f"dfp/spark-operator:{VERSION[1:]}"
SPARK_IMAGE = "dfp/kronodroid-spark:0.1.0"
SPARK_SERVICE_ACCOUNT = f"{RELEASE}-spark"  # the chart's: <fullname>-spark in each job namespace
BUILD_SCRIPT = REPO_ROOT / "tools" / "scripts" / "build_spark_operator.sh"
VENDORED = REPO_ROOT.parent / "shared" / "vendor" / f"spark-operator-{VERSION}.tar.gz"
Log = Callable[[str], None]


def build(log: Log, image: bool = True) -> Path:
    """The cache folder with ``spark-operator``, ``helm`` and the release's ``src/`` (built
    once); with ``image``, the Docker image too. One line when it cannot be built."""
    cmd = ["bash", str(BUILD_SCRIPT)] + (["--image"] if image else [])
    log(f"spark-operator {VERSION}: binaries and image (tools/scripts/build_spark_operator.sh; minutes the first time)")
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DFP_SPARK_IMAGE": SPARK_IMAGE})
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.startswith("error:")] or \
            done.stderr.strip().splitlines() or ["no output"]
        raise StackError(f"cannot build the Spark Operator {VERSION}: {lines[-1].removeprefix('error: ')}")
    return Path(done.stdout.strip().splitlines()[-1])


def chart_values(job_namespace: str = JOB_NAMESPACE) -> list[str]:
    """The chart's values this node needs: our image (imported, never pulled) and the
    pipeline's namespace; everything else is the chart's default (webhook on)."""
    repository, tag = IMAGE.split(":")
    return ["--set", "image.registry=docker.io", "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", "image.pullPolicy=IfNotPresent", "--set", f"spark.jobNamespaces={{{job_namespace}}}",
            "--set", "webhook.enable=true"]


def helm(settings: NodeSettings, cache: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """helm with the node's admin kubeconfig, and its caches under the node's home."""
    base = settings.home / "helm"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base),
           "HELM_CACHE_HOME": str(base / "cache"), "HELM_CONFIG_HOME": str(base / "config"),
           "HELM_DATA_HOME": str(base / "data"), "KUBECONFIG": str(settings.paths.admin_kubeconfig)}
    done = subprocess.run([str(cache / "helm"), *args], capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise StackError(f"`helm {' '.join(args[:2])}` failed: {lines[-1] if lines else done.returncode}")
    return done


def deploy(settings: NodeSettings, log: Log, job_namespace: str = JOB_NAMESPACE) -> dict:
    """Build (once), import the images, apply the CRDs, install or upgrade the chart and wait
    until the controller and the webhook are available. Idempotent."""
    if not VENDORED.is_file() and not os.environ.get("DFP_SPARK_OPERATOR_ARCHIVE"):
        raise StackError(f"the Spark Operator's release source is not at {VENDORED} (the vendored folder); "
                         "set DFP_SPARK_OPERATOR_ARCHIVE to spark-operator-v2.5.2.tar.gz")
    cache = build(log)
    loaded = images.load_images(settings, [SPARK_IMAGE, IMAGE], log)
    chart = cache / "src" / "charts" / "spark-operator-chart"
    api.kubectl(settings, "apply", "--server-side", "--force-conflicts", f"--field-manager={api.FIELD_MANAGER}",
                "-f", str(chart / "crds"))
    api.apply(settings, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": job_namespace}}])
    log(f"spark-operator {VERSION}: CRDs applied; installing the chart (release {RELEASE} in {NAMESPACE}, "
        f"watching {job_namespace})")
    try:
        helm(settings, cache, "upgrade", "--install", RELEASE, str(chart), "--namespace", NAMESPACE,
             "--create-namespace", "--skip-crds", "--wait", "--timeout", "5m", *chart_values(job_namespace))
        for deployment in (f"{RELEASE}-controller", f"{RELEASE}-webhook"):
            api.kubectl(settings, "-n", NAMESPACE, "rollout", "status", f"deployment/{deployment}", "--timeout=180s",
                        timeout=200)
    except (StackError, subprocess.TimeoutExpired) as exc:
        # helm's own words are only "context deadline exceeded": say what the pods wait for.
        raise StackError(f"{exc}; in namespace {NAMESPACE}: {api.why_not_ready(settings, NAMESPACE)}") from exc
    log(f"spark-operator {VERSION}: controller and webhook available")
    return {"version": VERSION, "namespace": NAMESPACE, "job_namespace": job_namespace, "image": IMAGE,
            "spark_image": SPARK_IMAGE, "service_account": SPARK_SERVICE_ACCOUNT,
            "images": {name: entry["imported"] for name, entry in loaded.items()}}

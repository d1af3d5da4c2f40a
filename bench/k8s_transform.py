"""The pipeline's transform step at one size, through the Spark Operator on the one-node
cluster against local mode, in one run: generated rows -> raw inputs on a run branch ->
the Spark job writes the tables there (what `spark_transform_step` does in each mode).

  .venv/bin/python bench/k8s_transform.py [--rows 142000] [--executors 1]

Local mode: `spark-submit` in local mode beside the step (local[*], both cores). Kubernetes:
a SparkApplication in the Spark image, one driver and `--executors` executor pods (one core
each; the node has two). Prints each mode's seconds and their ratio, the peak RSS of the
node's processes during the operator run, and of each Spark pod (its processes, found by
their cgroup) and of the pods together. Needs root, the node's binaries, the vendored
Spark Operator and the images (`make images`). Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save  # noqa: E402
from _common import log as _log  # noqa: E402
from k8s_node import MB, NodeMemory  # noqa: E402

NAMESPACE = "dfp-pipeline"
STEP = """
import json, sys
from dfp_kfp.steps import spark_transform_step
mode, image, data, repo, run_id, executors = sys.argv[1:7]
branch, _ = spark_transform_step(
    run_transform=True, lakefs_endpoint="", spark_image=image, spark_mode=mode, spark_namespace="dfp-pipeline",
    spark_timeout_seconds=7200, spark_executor_instances=int(executors), lakefs_repository=repo, input_dir=data,
    run_id=run_id)
print(json.dumps({"run_branch": branch}))
"""
POD_CGROUP = re.compile(r"kubepods.*pod([0-9a-f_-]{36})")


def log(message: str) -> None:
    _log("k8s_transform", message)


class PodMemory:
    """Peak RSS per pod (its processes, by their memory cgroup) and of all pods together; pods
    are named as they run (executors are gone by the end)."""

    def __init__(self, settings, interval: float = 0.5):
        self.settings, self.interval, self.peaks, self.peak_sum, self.names = settings, interval, {}, 0.0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _name_pods(self) -> None:
        listed = subprocess.run([str(self.settings.binary("kubectl")), "--kubeconfig",
                                 str(self.settings.paths.admin_kubeconfig), "get", "pods", "-A", "-o", "json"],
                                capture_output=True, text=True)
        if listed.returncode == 0:
            self.names.update({p["metadata"]["uid"]: p["metadata"]["name"] for p in json.loads(listed.stdout)["items"]})

    def _run(self) -> None:
        named_at = 0.0
        while not self._stop.is_set():
            if time.monotonic() - named_at > 3:
                self._name_pods()
                named_at = time.monotonic()
            per_pod: dict[str, float] = {}
            for proc in psutil.process_iter(["pid"]):
                try:
                    match = POD_CGROUP.search(Path(f"/proc/{proc.pid}/cgroup").read_text())
                    if match:
                        uid = match.group(1).replace("_", "-")
                        per_pod[uid] = per_pod.get(uid, 0.0) + proc.memory_info().rss / MB
                except (OSError, psutil.Error):
                    continue
            for uid, rss in per_pod.items():
                self.peaks[uid] = max(self.peaks.get(uid, 0.0), rss)
            self.peak_sum = max(self.peak_sum, sum(per_pod.values()))
            self._stop.wait(self.interval)

    def __enter__(self) -> "PodMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def timed_step(mode: str, env: dict, image: str, data: Path, repo: str, executors: int) -> float:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", STEP, mode, image, str(data), repo, f"bench-{mode}", str(executors)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:] + done.stdout[-2000:])
        raise SystemExit(f"the {mode} transform step failed")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=142_000, help="generated rows (142,000: 1x KronoDroid)")
    parser.add_argument("--executors", type=int, default=1, help="executor pods (one core each)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/k8s_transform.py needs root (the node does)")
    from dfp_core import stack
    from dfp_core.k8s import layout, node, pipeline_access, spark_operator
    from dfp_core.k8s.layout import NodeSettings
    from dfp_core.kronodroid.generator import generate
    from dfp_core.settings import StackSettings

    quiet = lambda m: None  # noqa: E731
    figures: dict = {"rows_generated": args.rows, "executor_pods": args.executors}
    with tempfile.TemporaryDirectory(prefix="dfp-bench-k8s-transform-") as tmp:
        work = Path(tmp)
        settings = NodeSettings.from_env({**os.environ, "DFP_HOME": str(work / "node-home")})
        try:
            started = time.monotonic()
            node.up(settings, log=quiet)
            operator = spark_operator.deploy(settings, log=log)
            figures["node_and_operator_seconds"] = round(time.monotonic() - started, 1)
            host = layout.host_address()
            stack_settings = StackSettings(home=work / "stack", host=host, lakefs_port=stack.free_port(host),
                                           mlflow_port=stack.free_port(host), lakefs_acl=False)
            with stack.running(stack_settings, log=quiet) as running:
                creds = running["credentials"]
                kubeconfig = pipeline_access.set_up(
                    settings, NAMESPACE, (creds["LAKEFS_ACCESS_KEY_ID"], creds["LAKEFS_SECRET_ACCESS_KEY"]),
                    work / "kubeconfig")
                env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEFS_", "MLFLOW_", "DFP_"))}
                env.update(running["env"], KUBECONFIG=str(kubeconfig))
                data = work / "data"
                log(f"generating {args.rows} rows")
                generate(data, args.rows, seed=1)
                log("local mode (spark-submit local[*] beside the step)")
                figures["local_seconds"] = round(timed_step("local", env, operator["spark_image"], data, "benchlocal",
                                                            args.executors), 1)
                log(f"local: {figures['local_seconds']}s; now through the operator")
                with NodeMemory(settings) as node_memory, PodMemory(settings) as pods:
                    figures["operator_seconds"] = round(timed_step("kubernetes", env, operator["spark_image"], data,
                                                                   "benchk8s", args.executors), 1)
        finally:
            node.down(settings, log=quiet)
    figures["operator_to_local_ratio"] = round(figures["operator_seconds"] / figures["local_seconds"], 2)
    figures["node_peak_rss_mb_per_process"] = {k: round(v, 1) for k, v in sorted(node_memory.peaks.items())}
    figures["node_peak_rss_mb_sum"] = round(node_memory.peak_sum, 1)
    figures["pod_peak_rss_mb"] = {pods.names.get(uid, uid): round(v, 1) for uid, v in sorted(pods.peaks.items())}
    figures["pods_peak_rss_mb_sum"] = round(pods.peak_sum, 1)
    figures["spark_operator"] = operator["version"]
    save("k8s_transform", figures)


if __name__ == "__main__":
    main()

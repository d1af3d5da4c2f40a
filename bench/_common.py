"""Shared helpers for the benchmarks: a private stack, peak memory of a
process tree, and a results file. Benchmarks print figures; they never assert."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
# DFP_BENCH_RESULTS: write results elsewhere (e.g. smoke runs with small settings).
RESULTS = Path(os.environ.get("DFP_BENCH_RESULTS") or ROOT / "bench" / "results")
REAL_SUBSET = ROOT.parent / "shared" / "data" / "kronodroid" / "kronodroid_real_device_2019_subset.csv"


def bench_env(extra: dict | None = None) -> dict:
    """This process's environment without a user's lakeFS/MLflow endpoints or keys
    (they would point a benchmark elsewhere), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEFS_", "MLFLOW_"))}
    return {**env, **(extra or {})}


@contextmanager
def private_stack(home: Path, profile: str = "local", repository: str | None = None, mlflow_auth: bool | None = None):
    """A stack of our own (fresh DFP_HOME, free ports, ``profile``): (settings, seconds to
    healthy, the environment a command needs to use it). Where the profile runs lakeFS's ACL
    server, the pipeline's key pair (the one commands get) covers ``repository`` only
    (default: the settings' repository). ``mlflow_auth``: MLflow's basic-auth app on or off
    (None: the profile's default)."""
    import dataclasses

    from dfp_core import stack
    from dfp_core.settings import LakeFSSettings, StackSettings

    settings = dataclasses.replace(StackSettings.from_env(os.environ), home=home, profile=profile,
                                   lakefs_port=stack.free_port(), mlflow_port=stack.free_port(),
                                   postgres_port=stack.free_port(), s3_port=stack.free_port(),
                                   lakefs_acl_port=stack.free_port(), mlflow_auth=mlflow_auth)
    started = time.monotonic()
    with stack.running(settings, log=lambda m: None, repository=repository or LakeFSSettings.repository) as running:
        yield settings, time.monotonic() - started, bench_env(running["env"])


@contextmanager
def stack_with_spark(home: Path, app_name: str = "dfp-bench"):
    """A private stack and a runtime on it, its Spark session started."""
    from dfp_core.runtime import Runtime

    with private_stack(home) as (_, _, env), Runtime.from_env(env, app_name=app_name) as rt:
        rt.spark()
        yield rt


def registered_model(rt, input_dir: Path, prefix: str) -> tuple[str, str, str]:
    """Transform ``input_dir`` into a fresh repository and register a one-epoch model of
    the default shape trained on it: (repository, merge commit, model name)."""
    import uuid

    from dfp_core.ml.train_kronodroid_autoencoder import train
    from dfp_core.params import TrainConfig, TransformConfig
    from dfp_spark.transform_run import run_transform

    repo = prefix + uuid.uuid4().hex[:8]
    summary = run_transform(rt, TransformConfig(input_dir=input_dir, repo=repo, run_id=prefix)).to_json()
    name = f"kronodroid_autoencoder_{repo}"
    train(rt, TrainConfig(repo=repo, ref=summary["merge_commit"], max_epochs=1, model_name=name,
                          evaluate_baselines=False, accelerator="cpu", devices="1"))
    return repo, summary["merge_commit"], name


def quiet_lightning(level: int, *messages: str) -> None:
    """Lightning's loggers at ``level`` and its warnings about small data (plus ``messages``,
    regexes) off: benchmark output is figures and progress only."""
    import logging
    import warnings

    import lightning  # noqa: F401  (it sets its loggers' levels on import)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(level)
    for message in (".*does not have many workers.*", *messages):
        warnings.filterwarnings("ignore", message=message)


def log(name: str, message: str) -> None:
    """Progress on stderr (stdout is for the figures)."""
    print(f"[bench/{name}] {message}", file=sys.stderr, flush=True)


class PeakMemory:
    """Samples the summed RSS of processes and all their descendants (the JVM included):
    one command's tree, or several (a Spark cluster's workers). Sampling ends when the last
    of them has exited."""

    def __init__(self, *pids: int, interval: float = 0.2):
        self.pids, self.interval, self.peak = pids, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            total, alive = 0, False
            for pid in self.pids:
                try:
                    root = psutil.Process(pid)
                    procs = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                alive = True
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            if not alive:
                return
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command; wall seconds, peak RSS of its process tree, last stdout line, its stderr."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bench_env(env))
    with PeakMemory(proc.pid) as mem:
        out, err = proc.communicate()
    if proc.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"{cmd[0]} failed with exit code {proc.returncode}")
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return {"seconds": time.monotonic() - started, "peak_rss_mb": mem.peak / 2**20, "last_line": last, "stderr": err}


def save(name: str, figures: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    figures = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(), **figures}
    if os.environ.get("DFP_BENCH_QUICK"):  # set by `run_all.py --quick`: small settings, not figures to publish
        figures["quick_settings"] = True
    path.write_text(json.dumps(figures, indent=2, sort_keys=True))
    print(json.dumps(figures, indent=2, sort_keys=True))
    return path

"""Spark local mode against a standalone cluster at one size: generated rows -> `dfp transform`
-> load_splits of the three splits, once in local mode (the default `local[*]`) and once with
`SPARK_MASTER=spark://...`, a master and --workers workers started from the pyspark
distribution on this machine, each worker with --worker-cores cores.

  .venv/bin/python bench/spark_modes.py [--rows 142000] [--workers 2] [--worker-cores 1]

Each mode transforms into a repository of its own on one private stack. Every stage is a
process of its own, measured from outside (as in `scale.py`): wall seconds and the peak RSS of
the driver's process tree; for the cluster also the peak RSS of the workers' trees (their
executors). On one machine the cluster has no more cores than local mode: the figures show
what the cluster path costs, not what more machines would buy. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, PeakMemory, private_stack, save  # noqa: E402
from _common import log as _log  # noqa: E402
from scale import DFP, measured  # noqa: E402

sys.path.insert(0, str(ROOT))
from tests.spark_cluster import standalone_cluster  # noqa: E402

STAGES = ("transform", "load_splits")


def log(message: str) -> None:
    _log("spark_modes", message)


def one_mode(mode: str, data: Path, env: dict, timeout: float, cluster: dict | None) -> dict:
    """The stages in one mode: figures per stage, or the stage that failed and why."""
    repo = f"modes{mode}"
    env = {**env, **({"SPARK_MASTER": cluster["master"]} if cluster else {})}
    steps = {
        "transform": DFP + ["transform", "--input", str(data), "--repo", repo, "--run-id", mode],
        "load_splits": [sys.executable, str(Path(__file__).resolve().parent / "scale.py"), "--load-splits", repo],
    }
    figures: dict = {}
    for stage, cmd in steps.items():
        log(f"{mode}: {stage}")
        with PeakMemory(*(w["pid"] for w in cluster["workers"])) if cluster else contextlib.nullcontext() as workers:
            result = measured(cmd, env, timeout)
        result.pop("stderr")
        last = json.loads(result.pop("last_line") or "{}")
        if workers:
            result["cluster_peak_rss_mb"] = round(workers.peak / 2**20)
        if "error" in result:
            figures[stage] = result
            figures["stopped"] = stage
            return figures
        if stage == "transform":
            result["fct_rows"] = last.get("fct_rows")
        else:
            result.update(inner_seconds=last["seconds"], split_rows=last["rows"])
        figures[stage] = result
        log(f"{mode}: {stage} {result['seconds']} s, driver peak {result['peak_rss_mb']:,} MB")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=142_000, help="generated rows (142,000: 1x KronoDroid)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-cores", type=int, default=1)
    parser.add_argument("--worker-memory", default="4g", help="memory a worker offers its executors")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a stage may run")
    args = parser.parse_args()
    results: dict = {"rows_generated": args.rows, "workers": args.workers, "worker_cores": args.worker_cores,
                     "modes": {}}
    with tempfile.TemporaryDirectory(prefix="dfp-bench-modes-") as tmp, \
            private_stack(Path(tmp) / "home") as (_, _, env):
        data = Path(tmp) / "data"
        generated = measured(DFP + ["generate", "--out", str(data), "--rows", str(args.rows), "--seed", "1"], env,
                             args.timeout)
        if "error" in generated:
            raise SystemExit(f"generate failed: {generated['error']}")
        results["modes"]["local"] = one_mode("local", data, env, args.timeout, None)
        cluster_dir = Path(tmp) / "cluster"
        cluster_dir.mkdir()
        with standalone_cluster(cluster_dir, args.workers, args.worker_cores, args.worker_memory) as cluster:
            results["modes"]["standalone"] = one_mode("standalone", data, env, args.timeout, cluster)
        shutil.rmtree(data, ignore_errors=True)
    local, standalone = results["modes"]["local"], results["modes"]["standalone"]
    finished = [stage for stage in STAGES if all(stage in m and "error" not in m[stage] for m in (local, standalone))]
    results["ratio_standalone_to_local"] = {
        stage: round(standalone[stage]["seconds"] / local[stage]["seconds"], 2) for stage in finished
    }
    path = save("spark_modes", results)
    log(f"wrote {path}")
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()

"""Reproduce benchmark: `reproduce(name, version)` (rebuild a registered model's
train/val/test through Feast and verify ids, rows and content hashes) against
the original data load of training (`load_splits` at the same commit and
snapshot).

  .venv/bin/python bench/reproduce.py [--rows 20000] [--max-epochs 3]

Private stack, generated rows, in-process transform, a small training run
registered in the private MLflow; `load_splits` is called once before training
(cold) and once after (the figure); then `reproduce` is timed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log as _log  # noqa: E402
from _common import save, stack_with_spark  # noqa: E402


def log(message: str) -> None:
    _log("reproduce", message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--max-epochs", type=int, default=3)
    args = parser.parse_args()

    import warnings

    warnings.filterwarnings("ignore", message=".*The spark (data source API|offline store) is an experimental.*")
    from dfp_core.kronodroid import schema
    from dfp_core.kronodroid.generator import generate
    from dfp_core.ml.reproduce import reproduce
    from dfp_core.ml.train_kronodroid_autoencoder import train
    from dfp_core.params import TrainConfig, TransformConfig
    from dfp_spark.transform_run import run_transform

    with tempfile.TemporaryDirectory(prefix="dfp-bench-repro-") as tmp:
        tmp = Path(tmp)
        data = tmp / "input"
        generate(data, args.rows, seed=1)
        with stack_with_spark(tmp / "home", "dfp-bench-reproduce") as rt:
            repo = "benchrepro" + uuid.uuid4().hex[:8]
            started = time.monotonic()
            summary = run_transform(rt, TransformConfig(input_dir=data, repo=repo, run_id="bench-repro")).to_json()
            transform_seconds = time.monotonic() - started
            commit, snapshot = summary["merge_commit"], str(summary["snapshot_ids"][schema.FCT_TABLE_FQN])
            log(f"transform: {summary['fct_rows']} rows in {transform_seconds:.1f}s, commit {commit[:12]}")

            started = time.monotonic()
            rt.retrieve_splits(repo, commit, snapshot)
            first_load = time.monotonic() - started
            log(f"load_splits (first, cold): {first_load:.1f}s")

            name = f"bench_autoencoder_{repo}"
            config = TrainConfig(repo=repo, ref=commit, snapshot_id=snapshot, max_epochs=args.max_epochs, register=True,
                                 model_name=name, accelerator="cpu", devices="1", evaluate_baselines=False)
            started = time.monotonic()
            result = train(rt, config)
            train_seconds = time.monotonic() - started
            version = str(result.model_version)
            log(f"train + register: version {version} in {train_seconds:.1f}s")

            started = time.monotonic()
            original = rt.retrieve_splits(repo, commit, snapshot)
            original_load = time.monotonic() - started
            log(f"load_splits (after training): {original_load:.1f}s, rows {original.rows}")

            started = time.monotonic()
            report = reproduce(rt, name, version=version)
            reproduce_seconds = time.monotonic() - started
            log(f"reproduce: {reproduce_seconds:.1f}s, matches {report.matches}")
            if report.differences:
                log("differences: " + "; ".join(report.differences))

    figures = {
        "rows": args.rows,
        "fct_rows": summary["fct_rows"],
        "split_rows": original.rows,
        "max_epochs": args.max_epochs,
        "transform_seconds": round(transform_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "first_load_seconds": round(first_load, 2),
        "original_load_seconds": round(original_load, 2),
        "reproduce_seconds": round(reproduce_seconds, 2),
        "rebuild_seconds": report.seconds_rebuild,
        "ratio_reproduce_to_original_load": round(reproduce_seconds / original_load, 2),
        "matches": report.matches,
        "differences": report.differences,
    }
    save("reproduce", figures)


if __name__ == "__main__":
    main()

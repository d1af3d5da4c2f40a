"""`dfp diff` and `dfp drift` at scale, against `load_splits` of the same data, on a private stack.

  .venv/bin/python bench/diff_drift_scale.py [--rows 1420000] [--timeout 3600]

Generated rows are transformed twice into one repository (a random split, then the same apps
with another split seed: every app is kept, many move), and a small model is trained on the
first commit (``--train-rows`` per split, one epoch) so that drift has a version with a stored
profile. Then, each as a process of its own measured from outside (wall seconds, peak RSS of its
process tree, the JVM included):

- ``load_splits``: the three splits of the second commit, as training loads them (the reference);
- ``dfp diff --refs <first> <second> --out``: both commits' splits compared in Spark;
- ``dfp drift --input lakefs://<repo>/<second>``: every app of the second commit streamed
  through the version, against its stored training profile.

The last stdout line is JSON with the figures and each command's ratios to ``load_splits``.
Not run by ``run_all.py`` (at 10x it takes about half an hour).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, private_stack, save  # noqa: E402
from _common import log as _log  # noqa: E402
from scale import DFP, measured  # noqa: E402

MODEL = "kronodroid_autoencoder_diffscale"


def log(message: str) -> None:
    _log("diff_drift_scale", message)


def step(name: str, cmd: list[str], env: dict, timeout: float, results: dict) -> dict:
    """Run one measured command; stop the benchmark, with its log kept, when it fails."""
    log(f"{name} ...")
    result = measured(cmd, env, timeout)
    stderr = result.pop("stderr")
    if "error" in result:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"diff_drift_scale_{name}.stderr.log"
        path.write_text(stderr)
        results["stopped"] = {"step": name, "why": result["error"], "log": str(path)}
        save("diff_drift_scale", results)
        raise SystemExit(f"{name} failed: {result['error']} (log: {path})")
    last = json.loads(result.pop("last_line") or "{}")
    log(f"{name}: {result['seconds']} s, peak {result['peak_rss_mb']:,} MB")
    return {**result, "summary": last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_420_000, help="generated rows (1,420,000: 10x KronoDroid)")
    parser.add_argument("--train-rows", type=int, default=20_000, help="rows per split the drift's version trains on")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one command may run")
    args = parser.parse_args()
    results: dict = {"rows": args.rows, "stopped": None}
    repo = "diffscale"
    with tempfile.TemporaryDirectory(prefix="dfp-bench-diff-") as tmp, \
            private_stack(Path(tmp) / "home") as (_, _, env):
        data = Path(tmp) / "data"
        step("generate", DFP + ["generate", "--out", str(data), "--rows", str(args.rows), "--seed", "1"],
             env, args.timeout, results)
        commits = []
        for run, seed in (("first", 42), ("second", 7)):
            done = step(f"transform_{run}", DFP + ["transform", "--input", str(data), "--repo", repo, "--run-id",
                                                   f"diff-{run}", "--split-seed", str(seed)],
                        env, args.timeout, results)
            commits.append(done["summary"]["merge_commit"])
            results[f"transform_{run}"] = {k: done[k] for k in ("seconds", "peak_rss_mb")}
        results["load_splits"] = step("load_splits", [sys.executable, str(Path(__file__).resolve().parent / "scale.py"),
                                                      "--load-splits", f"{repo}@{commits[1]}"],
                                      env, args.timeout, results)
        diff = step("diff", DFP + ["diff", "--refs", f"lakefs://{repo}/{commits[0]}", f"lakefs://{repo}/{commits[1]}",
                                   "--out", str(Path(tmp) / "report")], env, args.timeout, results)
        apps = diff.pop("summary")["apps"]
        results["diff"] = {**diff, "added": apps["added"]["total"], "removed": apps["removed"]["total"],
                           "kept": apps["kept"]["total"], "moved": apps["moved"]["total"]}
        train = step("train_small", DFP + ["train", "--repo", repo, "--ref", commits[0], "--max-epochs", "1",
                                           "--max-rows-per-split", str(args.train_rows), "--no-baselines",
                                           "--accelerator", "cpu", "--devices", "1", "--model-name", MODEL],
                     env, args.timeout, results)
        results["train_small"] = {k: train[k] for k in ("seconds", "peak_rss_mb")}
        drift = step("drift", DFP + ["drift", "--model", MODEL, "--version", "1", "--input",
                                     f"lakefs://{repo}/{commits[1]}"], env, args.timeout, results)
        summary = drift.pop("summary")
        results["drift"] = {**drift, "apps": summary.get("rows"), "training_baseline": summary.get("training_baseline"),
                            "verdict": summary.get("verdict")}
    load = results["load_splits"]
    results["ratios_to_load_splits"] = {
        name: {"seconds": round(results[name]["seconds"] / load["seconds"], 2),
               "peak_rss": round(results[name]["peak_rss_mb"] / load["peak_rss_mb"], 2)} for name in ("diff", "drift")}
    path = save("diff_drift_scale", results)
    log(f"wrote {path}")
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()

"""Cost curve across dataset sizes: per size, generated rows -> transform -> load_splits of the
three splits -> one training epoch (registered) -> reproduce, on a private stack.

  .venv/bin/python bench/scale.py [--sizes 14200,142000,1420000] [--timeout 5400] [--plot PNG]

Each stage is a process of its own (the CLI as a user runs it; `load_splits` through this
script's --load-splits), measured from outside: wall seconds and the peak RSS of its process
tree (the JVM included). For training, the seconds of the Lightning fit stage (one epoch plus
its validation) are read from the CLI's progress lines beside the whole command's.

The last stdout line is JSON: per size and stage its figures, and per stage an `exponent`,
the least-squares slope of log(seconds) against log(rows) over the sizes that finished (1.0
grows linearly). A stage that fails or runs past --timeout stops there: `stopped` names the
size, the stage and why (exit code and the last lines it printed, or the timeout), and larger
sizes are not tried.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, PeakMemory, bench_env, private_stack, save  # noqa: E402
from _common import log as _log  # noqa: E402

DEFAULT_SIZES = (14_200, 142_000, 1_420_000)  # 0.1x, 1x and 10x KronoDroid (142k apps)
DFP = [sys.executable, "-m", "dfp_app.cli"]
STAGES = ("transform", "load_splits", "train_epoch", "train_command", "reproduce")


def log(message: str) -> None:
    _log("scale", message)


def measured(cmd: list[str], env: dict, timeout: float) -> dict:
    """Wall seconds and peak RSS of ``cmd``'s process tree; ``error`` when it fails or times out."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=bench_env(env), start_new_session=True)
        with PeakMemory(proc.pid) as memory:
            try:
                proc.wait(timeout=timeout)
                error = None if proc.returncode == 0 else f"exit code {proc.returncode}"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                error = f"ran past the {timeout:.0f} s timeout"
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = {"seconds": round(time.monotonic() - started, 1), "peak_rss_mb": round(memory.peak / 2**20)}
    if error:
        lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
        # The cause: the first line naming an out-of-memory error, else the first line naming an
        # error or exception (later ones are mostly consequences), else the last lines.
        frames = [line for line in lines if not line.startswith("at ")]
        memory = [line for line in frames if re.search(r"OutOfMemoryError|MemoryError|Killed", line)]
        named = [line for line in frames if re.search(r"(Error|Exception)\b", line)]
        cause = (memory or named or [" | ".join(lines[-3:])])[0]
        result["error"] = f"{error}: {cause[-600:]}"
    lines = stdout.strip().splitlines()
    result["last_line"] = lines[-1] if lines else ""
    result["stderr"] = stderr
    return result


def fit_stage_seconds(stderr: str) -> float | None:
    """The seconds the CLI's `Lightning fit` stage printed (`==> [3/5] Lightning fit ...` then `done in Xs`)."""
    match = re.search(r"\] Lightning fit.*?\n(?:.*\n)*?\s+done in ([0-9.]+)s", stderr)
    return float(match.group(1)) if match else None


def exponent(points: list[tuple[int, float]]) -> float | None:
    """Slope of log(seconds) on log(rows), least squares; None under two sizes."""
    points = [(n, s) for n, s in points if s and s > 0]
    if len(points) < 2:
        return None
    xs, ys = [math.log(n) for n, _ in points], [math.log(s) for _, s in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs), 3)


def one_size(rows: int, env: dict, work: Path, timeout: float) -> tuple[dict, dict | None]:
    """The stages at one size: (figures per stage, the stop when one failed)."""
    data, repo = work / f"data-{rows}", f"scale{rows}"
    model = f"kronodroid_autoencoder_{repo}"
    figures: dict[str, dict] = {}
    steps = [
        ("generate", DFP + ["generate", "--out", str(data), "--rows", str(rows), "--seed", "1"]),
        ("transform", DFP + ["transform", "--input", str(data), "--repo", repo, "--run-id", "scale"]),
        ("load_splits", [sys.executable, str(Path(__file__).resolve()), "--load-splits", repo]),
        ("train_command", DFP + ["train", "--repo", repo, "--max-epochs", "1", "--no-baselines", "--accelerator", "cpu",
                                 "--devices", "1", "--model-name", model]),
        ("reproduce", DFP + ["reproduce", "--model", model, "--version", "1"]),
    ]
    for stage, cmd in steps:
        log(f"{rows:,} rows: {stage}")
        result = measured(cmd, env, timeout)
        stderr = result.pop("stderr")
        if "error" in result:
            log_path = RESULTS / f"scale_{rows}_{stage}.stderr.log"
            RESULTS.mkdir(parents=True, exist_ok=True)
            log_path.write_text(stderr)
            return figures, {"rows": rows, "stage": stage, "why": result["error"], "seconds": result["seconds"],
                             "peak_rss_mb": result["peak_rss_mb"], "log": str(log_path)}
        last = json.loads(result.pop("last_line") or "{}")
        if stage == "load_splits":
            result.update(inner_seconds=last["seconds"], split_rows=last["rows"])
        if stage == "train_command":
            figures["train_epoch"] = {"seconds": fit_stage_seconds(stderr), "peak_rss_mb": result["peak_rss_mb"]}
        if stage == "reproduce":
            result["matches"] = last.get("matches")
        figures[stage] = result
        log(f"{rows:,} rows: {stage} {result['seconds']} s, peak {result['peak_rss_mb']:,} MB")
    return figures, None


def load_splits_child(target: str) -> None:
    """--load-splits REPO[@REF]: the three splits at the ref (default main), timed inside the process."""
    from dfp_core.runtime import Runtime

    repo, _, ref = target.partition("@")
    with Runtime.from_env(os.environ, app_name="bench-scale-load") as rt:
        started = time.monotonic()
        data = rt.retrieve_splits(repo, ref or "main")
        seconds = time.monotonic() - started
    print(json.dumps({"seconds": round(seconds, 1), "rows": data.rows}))


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for stage in STAGES:
        points = [(int(n), f[stage]["seconds"]) for n, f in summary["sizes"].items() if f.get(stage, {}).get("seconds")]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{stage} (slope {summary['exponent'].get(stage)})")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("generated rows"), ax.set_ylabel("seconds")
    ax.set_title(f"Cost per stage against rows ({summary['cpus']} CPUs)")
    ax.grid(True, which="both", alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(str(n) for n in DEFAULT_SIZES), help="generated rows per size, comma-separated")
    parser.add_argument("--timeout", type=float, default=5400, help="seconds a stage may run")
    parser.add_argument("--plot", type=Path, default=RESULTS / "scale.png", help="log-log plot (PNG)")
    parser.add_argument("--load-splits", metavar="REPO", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_splits:
        return load_splits_child(args.load_splits)
    sizes = sorted(int(n) for n in args.sizes.split(","))
    results: dict = {"sizes": {}, "stopped": None, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="dfp-bench-scale-") as tmp, \
            private_stack(Path(tmp) / "home") as (_, _, env):
        for rows in sizes:
            figures, stopped = one_size(rows, env, Path(tmp), args.timeout)
            results["sizes"][str(rows)] = figures
            save("scale_partial", results)  # what is measured so far, should a larger size not finish
            if stopped:
                results["stopped"] = stopped
                log(f"stopped at {rows:,} rows, {stopped['stage']}: {stopped['why']}")
                break
            # The generated archives are not needed again; a 10x set is gigabytes.
            shutil.rmtree(Path(tmp) / f"data-{rows}", ignore_errors=True)
    results["exponent"] = {stage: exponent([(int(n), f.get(stage, {}).get("seconds")) for n, f in results["sizes"].items()])
                           for stage in STAGES}
    plot(results, args.plot)
    results["plot"] = str(args.plot)
    path = save("scale", results)
    log(f"wrote {path} and {args.plot}")
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()

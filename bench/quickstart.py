"""Quickstart benchmark: `dfp quickstart` (the CLI) after the first install
(lakeFS binary and Spark jars cached), first with a fresh stack (a new DFP_HOME in a temp
dir, free ports), then again in the same home with the stack already up. Each run's
stages (the CLI's "done in" lines) and the pipeline's steps (KFP's task lines in the
quickstart's log) are timed. Stops that stack with `dfp stack down` after.

  .venv/bin/python bench/quickstart.py [--rows N] [--max-epochs N]

Without --rows/--max-epochs the CLI's own defaults are used (what a new user runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, bench_env, run_measured, save  # noqa: E402
from dfp_core.stack import free_port  # noqa: E402
from _common import log as _log  # noqa: E402


def log(message: str) -> None:
    _log("quickstart", message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="rows of the generated sample (default: the CLI's)")
    parser.add_argument("--max-epochs", type=int, default=None, help="training epochs (default: the CLI's)")
    args = parser.parse_args()

    from dfp_core import stack

    from dfp_core.settings import Settings
    from dfp_core.spark_jars import jar_paths

    settings = Settings.from_env(os.environ)
    stack.lakefs_binary(settings.stack)  # "after the first install": fail early when the binary is not built
    jar_paths(settings.spark.jars_dir)  # ... and when the jars are not downloaded

    dfp = str(ROOT / ".venv" / "bin" / "dfp")
    cmd = [dfp, "quickstart"]
    if args.rows is not None:
        cmd += ["--rows", str(args.rows)]
    if args.max_epochs is not None:
        cmd += ["--max-epochs", str(args.max_epochs)]
    with tempfile.TemporaryDirectory(prefix="dfp-bench-quickstart-") as tmp:
        env = {"DFP_HOME": str(Path(tmp) / "home"), "DFP_LAKEFS_PORT": str(free_port()),
               "DFP_MLFLOW_PORT": str(free_port())}
        log(f"{' '.join(cmd[1:])} with DFP_HOME={env['DFP_HOME']}, ports {env['DFP_LAKEFS_PORT']}/{env['DFP_MLFLOW_PORT']}")
        runs = {}
        try:
            for name in ("fresh_stack", "stack_up"):
                result = run_measured(cmd, env=env)
                summary = json.loads(result["last_line"])
                runs[name] = {"seconds": round(result["seconds"], 1), "peak_rss_mb": round(result["peak_rss_mb"]),
                              "stages": stage_seconds(result["stderr"]), "steps": step_seconds(summary.get("log"))}
                log(f"{name}: {runs[name]}")
        finally:
            down = subprocess.run([dfp, "stack", "down"], env=bench_env(env), capture_output=True, text=True)
            log("stack down: " + ("ok" if down.returncode == 0 else f"exit {down.returncode}: {down.stderr[-500:]}"))
    figures = {
        "quickstart_seconds": runs["fresh_stack"]["seconds"],
        "quickstart_peak_rss_mb": runs["fresh_stack"]["peak_rss_mb"],
        "quickstart_stack_up_seconds": runs["stack_up"]["seconds"],
        "runs": runs,
        "target_seconds_max": 60,
        "rows": args.rows if args.rows is not None else "cli default",
        "max_epochs": args.max_epochs if args.max_epochs is not None else "cli default",
        "model_version": summary.get("model_version"),
        "lakefs_commit": summary.get("lakefs_commit"),
    }
    log(f"quickstart: {figures['quickstart_seconds']}s with a fresh stack, {figures['quickstart_stack_up_seconds']}s "
        f"with the stack up; peak RSS {figures['quickstart_peak_rss_mb']} MB")
    save("quickstart", figures)


def stage_seconds(stderr: str) -> dict[str, float]:
    """The CLI's stage lines: "[2/4] input data: done in 0.9s"."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"\[(\d)/\d\][^\n]*?done in ([\d.]+)s", stderr)}


def step_seconds(log_path: str | None) -> dict[str, float]:
    """Each pipeline step, from KFP's "Executing task" to its "finished" line in the log."""
    if not log_path or not Path(log_path).is_file():
        return {}
    started, seconds = {}, {}
    from dfp_core.progress import plain

    for line in plain(Path(log_path).read_text(errors="replace")).splitlines():
        match = re.match(r"(\d\d:\d\d:\d\d\.\d+) - INFO - (?:Executing task|Task) '([\w-]+)'( finished)?", line)
        if match is None:
            continue
        at = datetime.strptime(match.group(1), "%H:%M:%S.%f")
        if match.group(3):
            seconds[match.group(2)] = round((at - started.pop(match.group(2))).total_seconds(), 1)
        else:
            started[match.group(2)] = at
    return seconds


if __name__ == "__main__":
    main()

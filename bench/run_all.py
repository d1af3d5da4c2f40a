"""Every benchmark in sequence (what `make bench` runs), each as a subprocess
writing its own results file, then `bench/results/SUMMARY.md` from all results.

  .venv/bin/python bench/run_all.py                 # full settings (long: full-size transform etc.)
  .venv/bin/python bench/run_all.py --quick         # small settings: checks that everything runs
  .venv/bin/python bench/run_all.py --only training,reproduce
  .venv/bin/python bench/run_all.py --only scoring,serving   # issue 30's targets, measured in one run
  .venv/bin/python bench/run_all.py --summary-only  # just regenerate SUMMARY.md

The heavy flags of bench/stack.py (--cold-lakefs-build, --setup-download-size)
are not run here; run them by hand. A failing benchmark does not stop the
others; the exit code is 1 when any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT  # noqa: E402
from _common import log as _log  # noqa: E402

BENCH = ROOT / "bench"
# name -> (full arguments, --quick arguments)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "transform": ([], ["--rows", "2000"]),
    "stack": ([], ["--repeats", "1"]),
    "training": ([], ["--rows", "2000", "--epochs", "2", "--repeats", "1", "--seeds", "0", "--quality-max-epochs", "2",
                      "--time-split-rows", "3000", "--time-split-max-epochs", "2"]),
    "reproduce": ([], ["--rows", "2000", "--max-epochs", "1"]),
    "quickstart": ([], ["--rows", "400", "--max-epochs", "1"]),
    "scoring": ([], ["--rows", "4000", "--train-rows", "1000"]),
    # dfp serve and KServe's MLServer runtime in one run, the stress loops included.
    "serving": (["--mlserver"], ["--rows", "2000", "--requests", "50", "--batches", "3", "--stress-rounds", "3",
                                 "--mlserver"]),
    "profiles": ([], ["--rows", "2000", "--repeats", "1"]),
    "detection": ([], ["--seeds", "0", "--variants", "default"]),
}
# Results files in the order the summary lists them (others follow, sorted).
ORDER = ["transform", "stack", "training_lightning_vs_plain", "training_feast_vs_spark",
         "training_quality_real_subset", "training_time_split_generated", "reproduce", "quickstart", "scoring", "serving", "profiles",
         "detection"]
# (results file, figure, comparison, target, what); a figure inside a section is named with dots.
TARGETS = [
    ("transform", "ratio_transform_to_baseline", "<=", 3.0, "transform vs pyarrow+fastavro baseline"),
    ("training_lightning_vs_plain", "ratio_lightning_to_plain", ">=", 0.9, "Lightning vs plain PyTorch throughput"),
    ("training_feast_vs_spark", "ratio_feast_to_direct", "<=", 1.5, "Feast retrieval vs direct Spark read"),
    ("training_quality_real_subset", "ae_best_roc_auc_mean", ">=", 0.92, "AE test ROC-AUC on the real subset (and above PCA, IsolationForest)"),
    ("quickstart", "quickstart_seconds", "<=", 300, "dfp quickstart after the first install"),
    # Issue 30: `dfp score` of 200k rows, each output format, and `dfp serve` (4 clients at once
    # for the concurrent figures); measured together by `run_all.py --only scoring,serving`.
    ("scoring", "parquet.rows_per_s", ">=", 15_000, "dfp score to parquet, 200k rows: rows/s"),
    ("scoring", "parquet.peak_rss_mb", "<=", 1536, "dfp score to parquet, 200k rows: peak RSS (MB)"),
    ("scoring", "csv.rows_per_s", ">=", 15_000, "dfp score to CSV, 200k rows: rows/s"),
    ("scoring", "csv.peak_rss_mb", "<=", 1536, "dfp score to CSV, 200k rows: peak RSS (MB)"),
    ("serving", "rest_one_row_p50_ms", "<=", 5, "dfp serve, one-row requests: p50 (ms)"),
    ("serving", "rest_one_row_p99_ms", "<=", 20, "dfp serve, one-row requests: p99 (ms)"),
    ("serving", "rest_batch_rows_per_s", ">=", 15_000, "dfp serve, 1,000-row JSON requests: rows/s"),
    ("serving", "rest_over_in_process_batch_time", "<=", 2.0, "dfp serve, 1,000-row JSON requests: time over in-process"),
    ("serving", "concurrent_one_row_p99_ms", "<=", 50, "dfp serve, 4 clients at once: one-row p99 (ms)"),
    ("serving", "concurrent_failed", "<=", 0, "dfp serve, 4 clients at once: failed requests"),
    ("serving", "stress.failures", "<=", 0, "dfp serve under bad requests: 5xx, dropped connections, not answering after"),
]


def log(message: str) -> None:
    _log("run_all", message)


def run_benchmark(name: str, quick: bool) -> tuple[bool, float]:
    full, small = BENCHMARKS[name]
    cmd = [sys.executable, str(BENCH / f"{name}.py"), *(small if quick else full)]
    log(f"{name}: {' '.join(cmd[1:])}")
    started = time.monotonic()
    # The children's figures (stdout) go to our stderr: our stdout is the final status.
    env = {**os.environ, **({"DFP_BENCH_QUICK": "1"} if quick else {})}
    proc = subprocess.run(cmd, stdout=sys.stderr, cwd=ROOT, env=env)
    seconds = time.monotonic() - started
    log(f"{name}: {'ok' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'} in {seconds:.0f}s")
    return proc.returncode == 0, seconds


# --------------------------------------------------------------------------- summary


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) if value else "-"
    if value is None:
        return "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_matrix(value) -> bool:
    return isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values())


def _flat(prefix: str, value, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key in value:
            _flat(f"{prefix}.{key}" if prefix else str(key), value[key], rows)
    else:
        rows.append((prefix, _cell(value)))


def _period_key(key: str):
    # in_period first, years in order, later last; anything else alphabetically.
    return (0, "") if key == "in_period" else (2, "") if key == "later" else (1, key)


def _matrix(title: str, matrix: dict) -> list[str]:
    columns = sorted({c for row in matrix.values() for c in row}, key=_period_key)
    lines = [f"`{title}`", "", "| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, row in matrix.items():
        lines.append(f"| {name} | " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return lines + [""]


def _target_status(value, op: str, target: float) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    met = value <= target if op == "<=" else value >= target
    return "met" if met else "not met"


def figure(figures: dict, key: str):
    """``key`` in a results file's figures; ``a.b`` is ``b`` inside section ``a``. None if absent."""
    value = figures
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def target_rows(results: dict[str, dict]) -> list[dict]:
    """Each of ``TARGETS`` against ``results`` (results file name -> its figures): the measured
    value, "met", "not met" or "-" (not measured), and where it was measured."""
    rows = []
    for file, key, op, target, what in TARGETS:
        figures = results.get(file, {})
        value = figure(figures, key)
        status = _target_status(value, op, target)
        if file == "training_quality_real_subset" and "ae_meets_target" in figures:
            # The target is also "above PCA and IsolationForest": the benchmark's own verdict.
            status = "met" if figures["ae_meets_target"] else "not met"
        rows.append({"file": file, "key": key, "op": op, "target": target, "what": what, "value": value,
                     "status": status, "measured_at": figures.get("measured_at"),
                     "quick": bool(figures.get("quick_settings"))})
    return rows


def write_summary() -> Path:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    names = [n for n in ORDER if n in results] + sorted(n for n in results if n not in ORDER)
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `bench/run_all.py` from `{RESULTS.relative_to(ROOT) if RESULTS.is_relative_to(ROOT) else RESULTS}/*.json` "
        f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Figures only: the benchmarks never assert.",
        "",
        "## Targets",
        "",
        "| what | figure | measured | target | status | measured at |",
        "|---|---|---|---|---|---|",
    ]
    for row in target_rows(results):
        quick = " (quick settings)" if row["quick"] else ""
        lines.append(f"| {row['what']} | `{row['file']}.{row['key']}` | {_cell(row['value'])} | {row['op']} "
                     f"{row['target']:g} | {row['status']} | {_cell(row['measured_at'])}{quick} |")
    lines.append("")
    if any(f.get("quick_settings") for f in results.values()):
        lines += ["Results marked *quick settings* come from `run_all.py --quick` (small data, few epochs): "
                  "they show that the benchmarks run, not how the system performs.", ""]
    for name in names:
        figures = results[name]
        lines += [f"## {name}", "", "| figure | value |", "|---|---|"]
        matrices = []
        for key in sorted(figures):
            if _is_matrix(figures[key]):
                matrices.append(key)
                continue
            rows: list[tuple[str, str]] = []
            _flat(key, figures[key], rows)
            lines += [f"| {k} | {v} |" for k, v in rows]
        lines.append("")
        for key in matrices:
            lines += _matrix(key, figures[key])
    path = RESULTS / "SUMMARY.md"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small settings (a smoke run, not figures to publish)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--summary-only", action="store_true", help="only regenerate SUMMARY.md")
    args = parser.parse_args()

    status: dict[str, dict] = {}
    if not args.summary_only:
        names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        for name in names:
            ok, seconds = run_benchmark(name, args.quick)
            status[name] = {"ok": ok, "seconds": round(seconds)}
    path = write_summary()
    log(f"summary: {path}")
    print(json.dumps({"summary": str(path), "benchmarks": status}, sort_keys=True))
    if any(not s["ok"] for s in status.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

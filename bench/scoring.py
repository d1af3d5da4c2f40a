"""Batch scoring benchmark: `dfp score` of a large generated input, as a user runs it
(a separate process, the registered model, the input streamed one CSV block at a time).

  .venv/bin/python bench/scoring.py [--rows 200000] [--train-rows 4000] [--explain K] [--profile]

Private stack, a small transform and a one-epoch training run (registered), then
`dfp score` of ``--rows`` generated rows (the four archives) to parquet and to CSV: wall
seconds, rows/s and the peak RSS of the command's process tree; and the floor, pyarrow's
read of the same CSVs plus the network alone, with each run's ratio to it. Targets (issues
17, 30): 15,000 rows/s or more and at most 1.5 GB RSS for 200k rows. ``--explain K``: also
`dfp score --explain K` to parquet (issue 32: what the explanations cost). ``--profile``: the same command under cProfile; the functions
with the most cumulative and own time are printed and saved (``scoring_profile.txt``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, log as _log, registered_model, run_measured, save, stack_with_spark  # noqa: E402


def log(message: str) -> None:
    _log("scoring", message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--explain", type=int, default=0, metavar="K", help="also time dfp score --explain K to parquet")
    parser.add_argument("--profile", action="store_true", help="run dfp score under cProfile and print where the time goes")
    args = parser.parse_args()

    from dfp_core.kronodroid.generator import generate

    with tempfile.TemporaryDirectory(prefix="dfp-bench-scoring-") as tmp:
        tmp = Path(tmp)
        generate(tmp / "train-input", args.train_rows, seed=4)
        started = time.monotonic()
        generate(tmp / "score-input", args.rows, seed=9)
        log(f"generated {args.rows} rows in {time.monotonic() - started:.0f}s")
        with stack_with_spark(tmp / "home", "dfp-bench-scoring") as rt:
            _, _, name = registered_model(rt, tmp / "train-input", "benchscore")
            env = {"DFP_HOME": str(rt.settings.stack.home)}
            command = [str(ROOT / ".venv" / "bin" / "dfp")]
            if args.profile:
                command = [sys.executable, "-m", "cProfile", "-o", str(tmp / "score.prof"), "-m", "dfp_app.cli"]
            figures = {"rows": args.rows, "target_rows_per_s": 15_000, "target_peak_rss_mb": 1536}
            runs = {"parquet": ("parquet", [])} if args.profile else {"parquet": ("parquet", []), "csv": ("csv", [])}
            if args.explain:
                runs[f"parquet_explain_{args.explain}"] = ("parquet", ["--explain", str(args.explain)])
            for run, (fmt, options) in runs.items():
                log(f"scoring to {fmt} {' '.join(options)}")
                measured = run_measured([*command, "score", "--model-uri", f"models:/{name}@candidate", "--input",
                                         str(tmp / "score-input"), "--out", str(tmp / f"scores.{fmt}"), *options], env)
                result = json.loads(measured["last_line"])
                figures[run] = {"rows_in": result["rows_in"], "scored": result["scored"],
                                "seconds": measured["seconds"], "rows_per_s": result["rows_in"] / measured["seconds"],
                                "peak_rss_mb": measured["peak_rss_mb"]}
            if args.profile:
                _print_profile(tmp / "score.prof")
            else:
                log("the floor: Arrow's read of the input and the network alone")
                figures["floor"] = _floor(tmp / "score-input", rt, f"models:/{name}@candidate")
                for run in runs:
                    figures[run]["over_floor"] = figures[run]["seconds"] / figures["floor"]["seconds"]
    save("scoring", figures)


def _floor(input_dir: Path, rt, model_uri: str) -> dict:
    """What no scorer can beat: pyarrow reading every CSV of the input (its own type
    inference, threads on, line breaks inside quoted cells allowed) and the model's network on that many rows of float32 (batches of
    8,192, as the scorer runs it), each timed alone in this process."""
    import zipfile

    import numpy as np
    import pyarrow.csv as pacsv
    import torch

    from dfp_core.ml.scoring import frame_scorer
    from dfp_core.tracking.registry import load_model

    started, rows = time.perf_counter(), 0
    for archive in sorted(input_dir.rglob("*.zip")):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                with zf.open(member) as stream:
                    # Quoted cells may hold line breaks (the real archives' quirk the generator keeps).
                    rows += pacsv.read_csv(stream, parse_options=pacsv.ParseOptions(newlines_in_values=True)).num_rows
    read_s = time.perf_counter() - started
    network = frame_scorer(load_model(rt, model_uri)).network
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((rows, network.encoder[0].in_features),
                                                                   dtype=np.float32))
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, rows, 8192):
            network(x[start:start + 8192])
    network_s = time.perf_counter() - started
    return {"rows": rows, "arrow_read_seconds": read_s, "network_seconds": network_s, "seconds": read_s + network_s}


def _print_profile(path: Path) -> None:
    import io
    import pstats

    text = io.StringIO()
    stats = pstats.Stats(str(path), stream=text)
    for order in ("cumulative", "tottime"):
        text.write(f"\n=== by {order} ===\n")
        stats.sort_stats(order).print_stats(30)
    out = RESULTS / "scoring_profile.txt"
    out.write_text(text.getvalue())
    print(text.getvalue())
    log(f"profile: {out}")


if __name__ == "__main__":
    main()

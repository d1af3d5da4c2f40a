"""Batch scoring benchmark: `dfp score` of a large generated input, as a user runs it
(a separate process, the registered model, the input streamed one CSV block at a time).

  .venv/bin/python bench/scoring.py [--rows 200000] [--train-rows 4000] [--profile]

Private stack, a small transform and a one-epoch training run (registered), then
`dfp score` of ``--rows`` generated rows (the four archives) to parquet: wall seconds,
rows/s and the peak RSS of the command's process tree. Target (issue 17): at most
1.5 GB RSS for 200k rows. ``--profile``: the same command under cProfile; the functions
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
            log("scoring")
            command = [str(ROOT / ".venv" / "bin" / "dfp")]
            if args.profile:
                command = [sys.executable, "-m", "cProfile", "-o", str(tmp / "score.prof"), "-m", "dfp_core.cli"]
            measured = run_measured([*command, "score", "--model-uri", f"models:/{name}@candidate",
                                     "--input", str(tmp / "score-input"), "--out", str(tmp / "scores.parquet")], env)
            result = json.loads(measured["last_line"])
            if args.profile:
                _print_profile(tmp / "score.prof")
    save("scoring", {
        "rows": args.rows, "rows_in": result["rows_in"], "scored": result["scored"],
        "seconds": measured["seconds"], "rows_per_s": result["rows_in"] / measured["seconds"],
        "peak_rss_mb": measured["peak_rss_mb"], "target_peak_rss_mb": 1536,
    })


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

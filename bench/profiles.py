"""The s3 profile (PostgreSQL + SeaweedFS) against the local profile, on the same
generated data in one run: `dfp transform` (wall, peak RSS of the process tree) and
the Feast retrieval of the three splits (`load_splits`: cold, the first call in a
fresh process, then the best of the warm repeats), each on a private stack of its
profile.

  .venv/bin/python bench/profiles.py [--rows 142128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, log, private_stack, run_measured, save  # noqa: E402

# Run in a process of its own per profile: one Spark session talks to one lakeFS.
RETRIEVAL = """
import json, os, sys, time
from dfp_core.runtime import Runtime
from dfp_feast.retrieval import load_splits
repo, commit, snapshot, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with Runtime.from_env(os.environ, app_name="dfp-bench-profiles") as rt:
    spark, times, rows = rt.spark(), [], 0
    for _ in range(repeats + 1):
        started = time.monotonic()
        data = load_splits(spark, rt.lakefs, repo, commit, snapshot)
        times.append(time.monotonic() - started)
        rows = sum(len(frame) for frame in data.frames.values())
print(json.dumps({"cold_seconds": times[0], "warm_seconds": min(times[1:]), "rows": rows}))
"""


def measure(profile: str, data: Path, home: Path, repeats: int) -> dict:
    from dfp_core.kronodroid import schema

    with private_stack(home, profile=profile, repository="bench") as (_, up_seconds, env):
        log("profiles", f"{profile}: stack healthy in {up_seconds:.1f}s; transform")
        transform = run_measured([str(ROOT / ".venv" / "bin" / "dfp"), "transform", "--input", str(data),
                                  "--repo", "bench", "--run-id", f"bench-{profile}"], env=env)
        summary = json.loads(transform["last_line"])
        commit, snapshot = summary["merge_commit"], str(summary["snapshot_ids"][schema.FCT_TABLE_FQN])
        log("profiles", f"{profile}: transform {transform['seconds']:.1f}s; load_splits x{repeats + 1}")
        result = subprocess.run([sys.executable, "-c", RETRIEVAL, "bench", commit, snapshot, str(repeats)],
                                capture_output=True, text=True, env=env, cwd=ROOT)
        if result.returncode != 0:
            raise SystemExit(f"load_splits on the {profile} profile failed: {result.stderr[-2000:]}")
        retrieval = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "stack_up_seconds": round(up_seconds, 1),
        "transform_seconds": round(transform["seconds"], 1),
        "transform_peak_rss_mb": round(transform["peak_rss_mb"]),
        "fct_rows": summary["fct_rows"],
        "load_splits_cold_seconds": round(retrieval["cold_seconds"], 2),
        "load_splits_warm_seconds": round(retrieval["warm_seconds"], 2),
        "load_splits_rows": retrieval["rows"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=142128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from dfp_core.kronodroid.generator import generate

    with tempfile.TemporaryDirectory(prefix="dfp-bench-profiles-") as tmp:
        tmp = Path(tmp)
        data = tmp / "input"
        generate(data, args.rows, seed=1)
        figures = {"rows": args.rows}
        for profile in ("local", "s3"):
            figures[profile] = measure(profile, data, tmp / f"home-{profile}", args.repeats)
    local, s3 = figures["local"], figures["s3"]
    figures["ratio_s3_to_local"] = {
        "transform": round(s3["transform_seconds"] / local["transform_seconds"], 2),
        "load_splits_warm": round(s3["load_splits_warm_seconds"] / local["load_splits_warm_seconds"], 2),
    }
    save("profiles", figures)


if __name__ == "__main__":
    main()

"""KronoDroid -> Avro Iceberg tables on a per-run lakeFS branch.

Runnable with ``spark-submit`` (what the SparkApplication runs) and importable
(``dfp transform`` calls :func:`run`). Stages:

1. run branch ``run-<run id>`` from the target branch, raw inputs versioned on it
   (``--input DIR``; without it the raw files already on the target branch are used);
2. the Spark transform writes ``stg_kronodroid.*`` and ``kronodroid.*`` on the branch;
3. commit with metadata, freeze the branch as a tag, merge into the target
   (skipped with ``--no-merge``: the pipeline's commit+merge step does it).

The last line on stdout is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # spark-submit runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfp_core.errors import DfpError  # noqa: E402
from dfp_core.lakefs_ops import LakeFS  # noqa: E402
from dfp_core.progress import note, stage  # noqa: E402
from dfp_core.settings import LakeFSSettings, SparkSettings  # noqa: E402
from dfp_core.splits import SplitSpec  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=None, help="lakeFS repository [env LAKEFS_REPOSITORY, default kronodroid]")
    p.add_argument("--target-branch", default="main", help="branch the run merges into")
    p.add_argument("--run-id", default=None, help="run id (default: timestamp + random)")
    p.add_argument("--run-branch", default=None, help="use this existing run branch (created by the pipeline)")
    p.add_argument("--input", type=Path, default=None, help="local folder with KronoDroid archives or CSVs")
    p.add_argument("--no-merge", action="store_true", help="stop after writing the tables on the run branch")
    p.add_argument("--keep-failed-branch", action="store_true", help="keep the run branch when the run fails")
    p.add_argument("--max-shrink", type=float, default=None,
                   help="largest fraction of fct rows a run may remove from the target branch (default 0.2)")
    p.add_argument("--allow-shrink", action="store_true", help="merge however much the fct table shrinks")
    p.add_argument("--split-mode", choices=("random", "time"), default="random")
    p.add_argument("--split-seed", type=int, default=42)
    p.add_argument("--train-ratio", type=float, default=0.7)
    p.add_argument("--val-ratio", type=float, default=0.15)
    p.add_argument("--test-ratio", type=float, default=0.15)
    p.add_argument("--train-end-year", type=int, default=None)
    p.add_argument("--val-end-year", type=int, default=None)
    return p.parse_args(argv)


def split_from_args(args: argparse.Namespace) -> SplitSpec:
    return SplitSpec(
        mode=args.split_mode, seed=args.split_seed, train_ratio=args.train_ratio, val_ratio=args.val_ratio,
        test_ratio=args.test_ratio, train_end_year=args.train_end_year, val_end_year=args.val_end_year,
    )


def run(
    input_dir: Path | None = None,
    repo: str | None = None,
    target_branch: str = "main",
    run_id: str | None = None,
    run_branch: str | None = None,
    split: SplitSpec | None = None,
    merge: bool = True,
    keep_failed_branch: bool = False,
    max_fct_shrink: float | None = None,
    allow_shrink: bool = False,
    spark=None,
) -> dict:
    """The whole run; returns the summary (merge commit, snapshot ids, counts)."""
    from dfp_core.spark import spark_session
    from dfp_spark import run as runs

    split = split or SplitSpec()
    lakefs_settings = LakeFSSettings.from_env(repository=repo)
    repo = lakefs_settings.repository
    lakefs = LakeFS(lakefs_settings)
    total = 3 if merge else 2

    with stage(1, total, "run branch and raw inputs"):
        if run_branch:
            lakefs.require_branch(repo, run_branch)
            if input_dir is not None:
                from dfp_spark import raw_inputs

                raw_inputs.upload(lakefs, repo, run_branch, Path(input_dir))
            run_id = run_id or run_branch.removeprefix(runs.RUN_PREFIX)
            ctx = runs.RunContext(repo, target_branch, run_id, run_branch, lakefs.resolve_commit(repo, run_branch))
        else:
            ctx = runs.prepare_run(lakefs, repo, target_branch, run_id or runs.new_run_id(), input_dir)
    try:
        with stage(2, total, f"Spark transform on {ctx.run_branch}"):
            session = spark or spark_session("kronodroid-iceberg-job", lakefs_settings)
            summary = runs.transform_on_branch(session, lakefs, repo, ctx.run_branch, ctx.run_id, split, SparkSettings.from_env())
            note(
                f"{summary['input_rows']} input rows -> {summary['fct_rows']} samples, "
                f"{summary['quarantined_rows']} quarantined, {summary['duplicates_dropped']} exact duplicates dropped"
            )
        published = None
        if merge:
            with stage(3, total, f"commit, freeze and merge into {target_branch}"):
                shrink = None if allow_shrink else (runs.DEFAULT_MAX_FCT_SHRINK if max_fct_shrink is None else max_fct_shrink)
                published = runs.publish_run(lakefs, repo, ctx.run_branch, target_branch, shrink)
                note(f"merge commit {published['merge_commit']}")
    except BaseException:
        if not keep_failed_branch and lakefs.branch_exists(repo, ctx.run_branch):
            runs.abort_run(lakefs, ctx)
        raise
    return runs.run_summary_line(summary, published, ctx)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(
            input_dir=args.input, repo=args.repo, target_branch=args.target_branch, run_id=args.run_id,
            run_branch=args.run_branch, split=split_from_args(args), merge=not args.no_merge,
            keep_failed_branch=args.keep_failed_branch, max_fct_shrink=args.max_shrink, allow_shrink=args.allow_shrink,
        )
    except DfpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

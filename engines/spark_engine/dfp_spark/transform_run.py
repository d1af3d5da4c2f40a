"""The transform use case: a run on lakeFS. A fresh run branch with the raw
inputs, the Spark transform on it, then a commit, a freeze and a merge into
the target branch. ``run_transform`` does all of it; the pipeline's steps call
the stages one by one.

Lineage design (see README "Lineage contract"): Iceberg metadata stores
absolute paths that name the run branch (``s3a://<repo>/run-<id>/...``). Before
merging, the run branch is replaced by an immutable lakeFS tag of the same name
at the run's commit, and the *tag* is merged. Every stored path then resolves
to that commit for ever, whatever happens to branches later. The target branch
only changes in the final merge, so any failure leaves it exactly as it was.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfp_core import disk_space, faults
from dfp_core.errors import DatasetError, DfpError, LakeFSError
from dfp_core.iceberg import READ_SPLIT_SIZE_PROPERTY, TableRef, create_namespace, write_table
from dfp_core.kronodroid import entity_index, raw_files, schema
from dfp_core.lakefs_ops import LakeFS, validate_ref_name
from dfp_core.params import TransformConfig
from dfp_core.progress import note, stage
from dfp_core.spark import spark_error_line
from dfp_core.splits import SplitSpec
from dfp_core.summary import Summary
from dfp_core.version import code_version
from dfp_spark import raw_store
from dfp_spark.run_lease import RunLease

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

    from dfp_core.runtime import Runtime
    from dfp_core.settings import Settings

RUN_PREFIX = "run-"


# Iceberg's read splits of the fct table. Its Avro rows (~480 small integers) take about 230
# bytes, 17 times less than as Arrow, so Iceberg's default split (128 MB) makes one task's
# result ~2 GB of Arrow; a retrieval without a shuffle (Feast's broadcast join) sends the
# driver one task result per split, and at 10x KronoDroid 8 MB splits (140 MB results) still
# ran the 4 GB driver out of heap. 2 MB: about 9,000 rows, 35 MB of Arrow, per task.
FCT_READ_SPLIT_BYTES = 2 * 1024 * 1024


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def run_branch_name(run_id: str) -> str:
    return validate_ref_name(RUN_PREFIX + run_id)


@dataclass
class RunContext:
    repo: str
    target_branch: str
    run_id: str
    run_branch: str
    base_commit: str
    # Held by this process from before the branch exists; None where a caller holds it.
    lease: RunLease | None = None


def prepare_run(lakefs: LakeFS, repo: str, target_branch: str, run_id: str, input_dir: Path | None) -> RunContext:
    """Check inputs, take the run's lease, create the run branch from the target, version
    the raw inputs on it. The lease is this process's until ``finish_run``, ``abort_run``
    or a hand-over."""
    validate_ref_name(target_branch)
    run_branch = run_branch_name(run_id)
    # Fail on bad input (headers, zero rows, unsafe paths) before touching lakeFS.
    scanned = raw_files.scan(Path(input_dir), measure_parts=True) if input_dir is not None else None
    if not lakefs.repository_exists(repo):
        lakefs.ensure_repository(repo, default_branch=target_branch)
        note(f"created repository {repo} (namespace {lakefs.settings.namespace_for(repo)})")
    if not lakefs.branch_exists(repo, target_branch):
        raise LakeFSError(f"target branch {target_branch!r} does not exist in repository {repo!r}")
    if lakefs.branch_exists(repo, run_branch) or lakefs.tag_exists(repo, run_branch):
        raise LakeFSError(f"run {run_id!r} already exists in {repo!r} (ref {run_branch!r}); pick another --run-id")
    # Before the branch: from its first moment on, gc finds the run's owner.
    lease = RunLease(lakefs, repo, run_branch).acquire("raw inputs")
    try:
        base = lakefs.create_branch(repo, run_branch, target_branch)
    except BaseException:
        lease.release()
        raise
    note(f"run branch {run_branch} from {target_branch}@{base[:12]}")
    ctx = RunContext(repo, target_branch, run_id, run_branch, base, lease)
    try:
        if input_dir is not None:
            raw_store.upload(lakefs, repo, run_branch, scanned)
    except BaseException:
        abort_run(lakefs, ctx)
        raise
    return ctx


def abort_run(lakefs: LakeFS, ctx: RunContext) -> None:
    """Drop the run branch, then its lease; the target branch was never touched. Where the
    branch cannot be deleted, the lease stays: it names this process, which is about to end,
    so `dfp runs gc` removes the branch later."""
    try:
        if lakefs.delete_branch(ctx.repo, ctx.run_branch):
            note(f"deleted run branch {ctx.run_branch}; {ctx.target_branch} is unchanged")
    except DfpError as exc:  # report the original failure, not this one
        note(f"could not delete run branch {ctx.run_branch}: {exc}")
        return
    _release(lakefs, ctx)


def finish_run(lakefs: LakeFS, ctx: RunContext) -> None:
    """The run is merged: its tag is in the target's history, nothing is left to judge."""
    _release(lakefs, ctx)


def _release(lakefs: LakeFS, ctx: RunContext) -> None:
    lease = ctx.lease or RunLease(lakefs, ctx.repo, ctx.run_branch)
    try:
        lease.release()
    except DfpError as exc:  # a stale lease only makes gc wait for --older-than
        note(f"could not release the lease of {ctx.run_branch}: {exc}")


def transform_on_branch(
    spark: "SparkSession", lakefs: LakeFS, repo: str, run_branch: str, run_id: str, split: SplitSpec,
    manifest: raw_files.RawManifest | None = None,
) -> dict:
    """Run the Spark transform on ``run_branch`` and write all tables there. ``manifest``: the
    branch's raw manifest where the caller has read it already."""
    # Deferred (PySpark, pyarrow): it loads with the transform, not for publishing or gc.
    from dfp_spark import transform

    lakefs.require_branch(repo, run_branch)
    if manifest is None:
        manifest = raw_store.load_manifest(lakefs, repo, run_branch)
    raw_store.verify_stored(lakefs, repo, run_branch, manifest)  # the bytes Spark reads are the bytes given
    parts = [(f"s3a://{repo}/{run_branch}/{p.lakefs_path}", p) for p in manifest.parts]
    frames = transform.build(spark, parts, run_id, split)
    props = {
        "dfp.run_id": run_id,
        "dfp.synthetic": str(manifest.synthetic).lower(),
        "dfp.code_version": code_version(),
    }
    fct_props = {
        **props, "dfp.split_spec": json.dumps(split.to_dict(), sort_keys=True),
        READ_SPLIT_SIZE_PROPERTY: str(FCT_READ_SPLIT_BYTES),
    }
    tables = [
        *[(frame, schema.STG_NAMESPACE, schema.STAGING_TABLES[source], props) for source, frame in frames.staging.items()],
        (frames.quarantine, schema.STG_NAMESPACE, schema.QUARANTINE_TABLE, props),
        (frames.families, schema.MART_NAMESPACE, schema.DIM_FAMILIES_TABLE, props),
    ]
    snapshots = _write_tables(spark, lakefs, repo, run_branch, tables, (frames.fct, fct_props), props)
    accounting = transform.row_accounting(frames.decided)
    split_counts = {r["dataset_split"]: r["count"] for r in frames.fct.groupBy("dataset_split").count().collect()}
    summary = {
        "run_id": run_id,
        "repository": repo,
        "run_branch": run_branch,
        "synthetic": manifest.synthetic,
        "inputs_sha256": manifest.input_checksums(),
        "snapshot_ids": {k: str(v) for k, v in snapshots.items()},
        "split_spec": split.to_dict(),
        "split_rows": dict(sorted(split_counts.items())),
        "code_version": code_version(),
        **accounting,
    }
    summary.update(reconcile(manifest, accounting))
    if not summary["reconciled"]:
        raise DatasetError(f"row reconciliation failed, nothing is merged: {summary['reconciliation_error']}")
    if summary["fct_rows"] == 0:
        raise DatasetError(
            f"no input row passed the checks ({summary['input_rows']} rows, quarantined by reason: "
            f"{summary['quarantine_by_reason']}); nothing is merged"
        )
    lakefs.upload_bytes(repo, run_branch, schema.TRANSFORM_SUMMARY_PATH,
                        json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary


def _write_tables(spark: "SparkSession", lakefs: LakeFS, repo: str, run_branch: str,
                  tables: list[tuple], fct: tuple, props: dict[str, str]) -> dict[str, int]:
    """Every table on the run branch, side by side; the entity index after the fct table,
    since it names the snapshot it lists. Each write is a short Spark job over the
    checkpointed rows and an Iceberg commit that mostly waits on lakeFS, so they overlap
    well. All writes end (or fail) before this returns; the first failure is raised."""
    def write(frame, namespace: str, name: str, table_props: dict[str, str]) -> int:
        snapshot = write_table(spark, lakefs, frame, TableRef(repo, run_branch, namespace, name), table_props)
        note(f"{namespace}.{name} written")
        faults.reached("spark-write")  # one table written, the others not (or not all)
        return snapshot

    def fct_then_index() -> dict[str, int]:
        fct_frame, fct_props = fct
        fct_snapshot = write(fct_frame, schema.MART_NAMESPACE, schema.FCT_TABLE, fct_props)
        index_props = {**props, entity_index.INDEXED_SNAPSHOT_PROPERTY: str(fct_snapshot)}
        index = write(fct_frame.select(*entity_index.COLUMNS), schema.MART_NAMESPACE, entity_index.TABLE, index_props)
        return {schema.FCT_TABLE_FQN: fct_snapshot, f"{schema.MART_NAMESPACE}.{entity_index.TABLE}": index}

    # The catalog and its namespaces first, once: concurrent first uses would race to create them.
    for namespace in (schema.STG_NAMESPACE, schema.MART_NAMESPACE):
        create_namespace(spark, repo, run_branch, namespace)
    with ThreadPoolExecutor(max_workers=len(tables) + 1, thread_name_prefix="dfp-write") as pool:
        futures = {f"{namespace}.{name}": pool.submit(write, frame, namespace, name, table_props)
                   for frame, namespace, name, table_props in tables}
        index_and_fct = pool.submit(fct_then_index)
    snapshots = {table: future.result() for table, future in futures.items()}
    return {**snapshots, **index_and_fct.result()}


def reconcile(manifest: raw_files.RawManifest, accounting: dict) -> dict:
    """Rows given (counted per part at scan time) against rows the transform
    accounted for, per part and in total: fct + quarantined + duplicates dropped."""
    given = {f"{p.source_file}:{p.member}": p.data_rows for p in manifest.parts}
    read = accounting["rows_by_part"]
    problems = [
        f"{part}: {given.get(part, 0)} rows given, {read.get(part, 0)} read"
        for part in sorted(set(given) | set(read)) if given.get(part, 0) != read.get(part, 0)
    ]
    accounted = accounting["fct_rows"] + accounting["quarantined_rows"] + accounting["duplicates_dropped"]
    if accounted != accounting["input_rows"]:
        problems.append(f"{accounting['input_rows']} rows read, {accounted} accounted for")
    return {
        "rows_given": sum(given.values()),
        "reconciled": not problems,
        "reconciliation_error": "; ".join(problems) or None,
    }


def check_shrink(lakefs: LakeFS, repo: str, target_branch: str, fct_rows: int, max_shrink: float | None) -> None:
    """Refuse a run that would shrink the fct table on the target branch by more
    than ``max_shrink`` (a fraction; None allows any shrink)."""
    if max_shrink is None or lakefs.stat(repo, target_branch, schema.TRANSFORM_SUMMARY_PATH) is None:
        return
    stored = json.loads(lakefs.read_bytes(repo, target_branch, schema.TRANSFORM_SUMMARY_PATH))
    previous = int(stored.get("fct_rows", 0))
    if previous and fct_rows < previous * (1 - max_shrink):
        raise DatasetError(
            f"this run would shrink {schema.FCT_TABLE_FQN} on {target_branch!r} from {previous} to {fct_rows} rows "
            f"({1 - fct_rows / previous:.0%} fewer; at most {max_shrink:.0%} is allowed); {target_branch!r} is unchanged. "
            "If that is intended, run again with --allow-shrink (or a larger --max-shrink)"
        )


def publish_run(lakefs: LakeFS, repo: str, run_branch: str, target_branch: str,
                max_fct_shrink: float | None = TransformConfig.max_shrink) -> dict:
    """Commit the run branch, freeze it as a tag, merge the tag into the target.

    Returns the merge commit id and the run commit. On failure the target
    branch is unchanged (the merge is the only step that touches it).
    """
    summary = json.loads(lakefs.read_bytes(repo, run_branch, schema.TRANSFORM_SUMMARY_PATH))
    run_id = summary["run_id"]
    check_shrink(lakefs, repo, target_branch, int(summary["fct_rows"]), max_fct_shrink)
    metadata = {
        "dfp.run_id": run_id,
        "dfp.code_version": summary["code_version"],
        "dfp.synthetic": str(summary["synthetic"]).lower(),
        "dfp.inputs_sha256": json.dumps(summary["inputs_sha256"], sort_keys=True),
        "dfp.row_counts": json.dumps({
            k: summary[k] for k in ("input_rows", "fct_rows", "quarantined_rows", "duplicates_dropped")
        }, sort_keys=True),
        "dfp.quarantine_by_reason": json.dumps(summary["quarantine_by_reason"], sort_keys=True),
        "dfp.snapshot_ids": json.dumps(summary["snapshot_ids"], sort_keys=True),
        "dfp.split_spec": json.dumps(summary["split_spec"], sort_keys=True),
    }
    synthetic = " (synthetic data)" if summary["synthetic"] else ""
    run_commit = lakefs.commit(repo, run_branch, f"KronoDroid transform run {run_id}{synthetic}", metadata)
    faults.reached("after-commit")
    # Freeze: the branch name baked into Iceberg paths becomes an immutable tag.
    lakefs.delete_branch(repo, run_branch)
    faults.reached("between-delete-and-tag")
    lakefs.create_tag(repo, run_branch, run_commit)
    faults.kill_soon("inside-merge")
    try:
        merge_commit = lakefs.merge(
            repo, run_branch, target_branch,
            message=f"Merge KronoDroid transform run {run_id}{synthetic}",
            metadata={"dfp.run_id": run_id, "dfp.run_commit": run_commit, "dfp.run_tag": run_branch},
        )
    except DfpError:
        # Nothing points at the run's tables now; drop the tag so the name is free.
        try:
            lakefs.delete_tag(repo, run_branch)
        except DfpError:  # the merge failure is what matters
            pass
        raise
    return {"merge_commit": merge_commit, "run_commit": run_commit, "run_tag": run_branch}


@dataclass(frozen=True)
class TransformSummary(Summary):
    """A transform run: the record it stored on its branch (``schema.TRANSFORM_SUMMARY_PATH``:
    the counts, the snapshot ids, the inputs' hashes, the split), the target it ran against and,
    once merged, the merge (``publish_run``)."""

    record: dict[str, Any]
    target_branch: str
    base_commit: str
    merge_commit: str | None = None
    run_commit: str | None = None
    run_tag: str | None = None
    AT_THE_TOP = "record"
    UNSET_LEFT_OUT = ("merge_commit", "run_commit", "run_tag")  # no merge fields before a merge



def check_disk_space(settings: "Settings", input_dir: Path | None, local_spark: bool) -> None:
    """Refuse in one line, before anything is written, when the input would not fit where its
    bytes land on this machine: the local stack's DFP_HOME (when lakeFS is that stack's) and
    local Spark's scratch folder."""
    if input_dir is None or not Path(input_dir).is_dir():
        return  # no upload, or a bad input the scan names
    own_lakefs = settings.lakefs.endpoint.rstrip("/") == settings.stack.lakefs_endpoint
    size = disk_space.input_bytes(Path(input_dir))
    disk_space.require(size, disk_space.needs(size, settings.stack.home if own_lakefs else None,
                                              settings.spark.scratch_dir if local_spark else None))


def run_transform(rt: "Runtime", config: TransformConfig) -> TransformSummary:
    """The whole run (or, with ``config.merge`` false, up to the tables on the run
    branch); returns the summary (merge commit, snapshot ids, counts).

    Given ``config.run_branch`` (the pipeline's Spark job), the run's lease is its caller's;
    otherwise this process takes it before the branch exists and holds it to the merge."""
    config = config.resolved(rt.settings)
    lakefs, repo = rt.lakefs, config.repo
    total = 3 if config.merge else 2
    with stage(1, total, "run branch and raw inputs"):
        if config.run_branch:  # created by the pipeline's first step
            lakefs.require_branch(repo, config.run_branch)
            if config.input_dir is not None:
                raw_store.upload(lakefs, repo, config.run_branch, raw_files.scan(Path(config.input_dir), measure_parts=True))
            run_id = config.run_id or config.run_branch.removeprefix(RUN_PREFIX)
            ctx = RunContext(repo, config.target_branch, run_id, config.run_branch,
                             lakefs.resolve_commit(repo, config.run_branch))
        else:
            check_disk_space(rt.settings, config.input_dir, rt.settings.spark.master.startswith("local"))
            ctx = prepare_run(lakefs, repo, config.target_branch, config.run_id or new_run_id(), config.input_dir)
    try:
        with _heartbeat(ctx):
            with stage(2, total, f"Spark transform on {ctx.run_branch}"):
                _lease_stage(ctx, "Spark transform")
                manifest = raw_store.load_manifest(lakefs, repo, ctx.run_branch)
                # The input rows settle how a local driver JVM compiles (SparkSettings.for_input_rows).
                summary = transform_on_branch(rt.spark(input_rows=manifest.data_rows), lakefs, repo, ctx.run_branch,
                                              ctx.run_id, config.split(), manifest)
                note(
                    f"{summary['input_rows']} input rows -> {summary['fct_rows']} samples, "
                    f"{summary['quarantined_rows']} quarantined, {summary['duplicates_dropped']} exact duplicates dropped"
                )
            published = None
            if config.merge:
                with stage(3, total, f"commit, freeze and merge into {config.target_branch}"):
                    _lease_stage(ctx, "commit, freeze and merge")
                    published = publish_run(lakefs, repo, ctx.run_branch, config.target_branch, config.shrink_limit)
                    note(f"merge commit {published['merge_commit']}")
    except BaseException as exc:
        _clean_up_failed(lakefs, repo, ctx, config.keep_failed_branch)
        failure = spark_error_line(exc)
        if failure:  # the JVM's cause in one line, not a Java stack
            raise SparkTransformError(f"the Spark transform on {ctx.run_branch} failed: {failure}") from None
        raise
    if ctx.lease is not None:
        if published:
            finish_run(lakefs, ctx)
        else:  # left for someone to merge: judged by the lease's age from now on
            ctx.lease.hand_over("tables written, not merged")
    return TransformSummary(summary, ctx.target_branch, ctx.base_commit, **(published or {}))


class SparkTransformError(DfpError):
    """The Spark job of a transform failed (a write lakeFS refused, a full disk, ...)."""


def _clean_up_failed(lakefs: LakeFS, repo: str, ctx: RunContext, keep_branch: bool) -> None:
    try:
        exists = lakefs.branch_exists(repo, ctx.run_branch)
    except DfpError as exc:  # lakeFS is away: the lease names this process, gc finishes the job
        note(f"could not clean up run branch {ctx.run_branch}: {exc}")
        return
    if not exists:  # e.g. a refused merge dropped the tag
        if ctx.lease is not None:
            _release(lakefs, ctx)
    elif keep_branch:
        if ctx.lease is not None:
            ctx.lease.hand_over("failed; branch kept for inspection")
    else:
        abort_run(lakefs, ctx)


def _heartbeat(ctx: RunContext):
    return ctx.lease.heartbeat() if ctx.lease is not None else contextlib.nullcontext()


def _lease_stage(ctx: RunContext, what: str) -> None:
    if ctx.lease is not None:
        ctx.lease.stage(what)

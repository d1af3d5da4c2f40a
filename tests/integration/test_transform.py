"""Issue: Spark transform. Real lakeFS + Spark/Iceberg on small generated data."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from dfp_core import iceberg, splits
from dfp_core.kronodroid import entity_index, schema
from dfp_core.errors import DatasetError, InputDataError
from dfp_core.kronodroid.generator import generate
from dfp_core.iceberg import TableRef
from dfp_spark import raw_store
from dfp_spark import transform_run as runs
from tests.inputs import archive_rows, csv_text, split_member

TABLES = [
    (schema.STG_NAMESPACE, schema.STAGING_TABLES[schema.EMULATOR]),
    (schema.STG_NAMESPACE, schema.STAGING_TABLES[schema.REAL_DEVICE]),
    (schema.STG_NAMESPACE, schema.QUARANTINE_TABLE),
    (schema.MART_NAMESPACE, schema.FCT_TABLE),
    (schema.MART_NAMESPACE, schema.DIM_FAMILIES_TABLE),
    (schema.MART_NAMESPACE, entity_index.TABLE),
]


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("archives")
    generate(out, 400, seed=11)
    return out


def row_hash(spark, table: TableRef) -> tuple[int, int]:
    """Order-independent fingerprint of every row of a table."""
    df = spark.table(iceberg.qualified(spark, table))
    row = df.agg(F.count(F.lit(1)).alias("n"), F.bit_xor(F.xxhash64(*df.columns)).alias("h")).collect()[0]
    return int(row["n"]), int(row["h"])


def fct(repo: str, ref: str) -> TableRef:
    return TableRef(repo, ref, schema.MART_NAMESPACE, schema.FCT_TABLE)


@pytest.mark.both_profiles
def test_generated_archives_end_to_end(transform, spark, lakefs, repo, archives):
    summary = transform(input_dir=archives, repo=repo, run_id="gen-a")

    # Row accounting reconciles; the generator's quirks land where they should.
    assert summary["input_rows"] == 400 and summary["reconciled"]
    assert summary["input_rows"] == summary["fct_rows"] + summary["quarantined_rows"] + summary["duplicates_dropped"]
    assert summary["quarantine_by_reason"] == {"conflicting_label": 8}  # 2 groups x 2 rows x 2 sources
    assert summary["duplicates_dropped"] == 4  # 2 exact-duplicate groups per source
    assert summary["synthetic"] is True

    merge = summary["merge_commit"]
    assert lakefs.resolve_commit(repo, "main") == merge
    # The run branch was frozen into a tag at the run commit.
    assert not lakefs.branch_exists(repo, "run-gen-a")
    assert lakefs.resolve_commit(repo, "run-gen-a") == summary["run_commit"]

    meta = lakefs.commit_metadata(repo, summary["run_commit"])
    assert meta["dfp.run_id"] == "gen-a" and meta["dfp.synthetic"] == "true"
    assert json.loads(meta["dfp.inputs_sha256"]) == summary["inputs_sha256"]
    assert json.loads(meta["dfp.row_counts"])["fct_rows"] == summary["fct_rows"]
    assert meta["dfp.code_version"]

    for namespace, name in TABLES:
        table = TableRef(repo, merge, namespace, name)
        props = iceberg.table_properties(spark, table)
        assert props["write.format.default"] == "avro", name
        files = iceberg.data_file_paths(spark, table)
        assert files and all(f.endswith(".avro") for f in files), name
        assert str(iceberg.current_snapshot_id(spark, table)) == summary["snapshot_ids"][f"{namespace}.{name}"]
    stored = lakefs.list_paths(repo, merge, "iceberg/")
    # S3A may leave empty directory markers (".../data/"); they hold no data.
    data_files = [p for p in stored if "/data/" in p and not p.endswith("/")]
    assert data_files and all(p.endswith(".avro") for p in data_files), [p for p in data_files if not p.endswith(".avro")]
    raw = lakefs.list_paths(repo, merge, "raw/kronodroid/")
    assert "raw/kronodroid/emulator/emu_malware_v1.zip" in raw and "raw/kronodroid/_manifest.json" in raw

    facts = spark.table(iceberg.qualified(spark, fct(repo, merge)))
    rows = facts.select("sample_id", "sample_year", "dataset_split", "label", "data_source").collect()
    assert len(rows) == summary["fct_rows"] == len({r["sample_id"] for r in rows})
    assert {r["data_source"] for r in rows} == {"emulator", "real_device"}
    assert set(facts.columns) >= set(schema.FEATURE_COLUMNS)
    assert not set(facts.columns) & {"scanners", "detection_ratio"}  # label leaks stay out
    # The Spark split expression agrees with the Python definition, row for row.
    spec = splits.SplitSpec()
    assert all(r["dataset_split"] == splits.assign_split(r["sample_id"], spec) for r in rows)
    assert dict(Counter(r["dataset_split"] for r in rows)) == summary["split_rows"]
    # The entity index lists exactly the fct rows' keys and names the fct snapshot it lists.
    index = TableRef(repo, merge, schema.MART_NAMESPACE, entity_index.TABLE)
    keys = list(entity_index.COLUMNS)
    assert spark.table(iceberg.qualified(spark, index)).columns == keys
    assert sorted(spark.table(iceberg.qualified(spark, index)).collect()) == sorted(facts.select(*keys).collect())
    assert iceberg.table_properties(spark, index)[entity_index.INDEXED_SNAPSHOT_PROPERTY] == summary["snapshot_ids"][schema.FCT_TABLE_FQN]

    staging = {
        src: spark.table(iceberg.qualified(spark, TableRef(repo, merge, schema.STG_NAMESPACE, name)))
        for src, name in schema.STAGING_TABLES.items()
    }
    emu = staging[schema.EMULATOR]
    assert emu.filter("source_file = 'emu_malware_v1.zip'").filter("files_inside_apk IS NOT NULL").count() == 0
    assert {"earliest_mod_date", "latest_mod_date", "source_row", "run_id"} <= set(emu.columns)
    assert staging[schema.REAL_DEVICE].filter("latest_mod_date IS NOT NULL").count() > 0
    assert emu.filter("earliest_mod_date = DATE'1980-01-01' OR latest_mod_date = DATE'1980-01-01'").count() == 0

    families = spark.table(iceberg.qualified(spark, TableRef(repo, merge, schema.MART_NAMESPACE, schema.DIM_FAMILIES_TABLE)))
    assert families.agg(F.sum("total_count")).collect()[0][0] == facts.filter("label = 1 AND malware_family IS NOT NULL").count()


def _subset_with_bad_cells(tmp_path: Path) -> Path:
    src = tmp_path / "gen"
    generate(src, 60, seed=4, layout="subset")
    [csv_path] = list(src.rglob("*.csv"))
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    header = rows[0] + ["VendorScore"]
    body = [r + ["7"] for r in rows[1:]]
    idx = {c: i for i, c in enumerate(header)}
    body[0][idx["read"]] = "lots"  # non-numeric
    body[1][idx["write"]] = "-5"  # negative count
    body[2][idx["Highest-date"]] = "31/02/2019x"  # unparsable date
    body[3][idx["INTERNET"]] = ""  # missing value
    body[4][idx["read"]] = "9" * 1_000_000  # a 1 MB count: out of range, not negative
    body[5].append("surplus")  # one cell more than the header
    body[6][idx[schema.PACKAGE]] = "com.NOT_UTF8.app"  # its bytes replaced below
    out = tmp_path / "input" / "real_device"
    out.mkdir(parents=True)
    text = csv_text([header, *body]).encode().replace(b"NOT_UTF8", b"\xff\xfe")
    (out / "kronodroid_real_device_2021_subset.csv").write_bytes(text)
    return out.parent


def test_subset_format_bad_cells_and_extra_columns(transform, spark, lakefs, repo, tmp_path):
    summary = transform(input_dir=_subset_with_bad_cells(tmp_path), repo=repo)
    assert summary["input_rows"] == 60 and summary["reconciled"]
    assert summary["quarantine_by_reason"] == {
        "count_out_of_range": 1, "invalid_utf8": 1, "malformed_row": 1, "missing_feature_value": 1,
        "negative_count": 1, "non_numeric_feature": 1, "unparsable_date": 1,
    }
    assert summary["synthetic"] is False  # no generator marker next to the CSV
    merge = summary["merge_commit"]
    quarantine = spark.table(iceberg.qualified(spark, TableRef(repo, merge, schema.STG_NAMESPACE, schema.QUARANTINE_TABLE)))
    details = {r["reason"]: r for r in quarantine.collect()}
    assert "non-numeric: sc_read" in details["non_numeric_feature"]["detail"]
    assert json.loads(details["negative_count"]["raw_record"])["write"] == "-5"
    assert details["unparsable_date"]["source_row"] == 3
    assert details["malformed_row"]["raw_record"].rstrip().endswith(",surplus")
    assert schema.PACKAGE in details["invalid_utf8"]["detail"]
    # dfp score of the same file rejects the same rows for the same reasons
    from dfp_core.kronodroid.reader import read_kronodroid

    _, rejected = read_kronodroid(tmp_path / "input")
    assert rejected["reason"].value_counts().to_dict() == summary["quarantine_by_reason"]
    staging = spark.table(iceberg.qualified(spark, TableRef(repo, merge, schema.STG_NAMESPACE, "real_device_samples")))
    assert "extra_vendor_score" in staging.columns and "categories" in staging.columns
    assert "extra_vendor_score" not in spark.table(iceberg.qualified(spark, fct(repo, merge))).columns


def test_real_subset_loads(transform, spark, lakefs, repo, real_subset, tmp_path):
    (tmp_path / "real_device").mkdir()
    shutil.copy(real_subset, tmp_path / "real_device" / real_subset.name)
    summary = transform(input_dir=tmp_path, repo=repo)
    assert summary["input_rows"] == 1622 and summary["reconciled"]
    assert summary["fct_rows"] + summary["quarantined_rows"] + summary["duplicates_dropped"] == 1622
    facts = spark.table(iceberg.qualified(spark, fct(repo, summary["merge_commit"])))
    assert facts.filter("label = 1").count() == 169 - summary["quarantine_by_reason"].get("conflicting_label", 0) // 2
    assert facts.filter("sample_year = 2019").count() == facts.count()


def test_missing_columns_fail_before_anything_is_written(transform, spark, lakefs, repo, tmp_path, archives):
    shutil.copytree(archives, tmp_path / "in")
    target = tmp_path / "in" / "real_device" / "real_legitimate_v1.zip"
    with __import__("zipfile").ZipFile(target) as zf:
        name = zf.namelist()[0]
        text = zf.read(name).decode()
    header, rest = text.split("\n", 1)
    cols = next(csv.reader([header]))
    cut = cols.index("sha256")
    lines = [",".join(cols[:cut] + cols[cut + 1:])]
    with __import__("zipfile").ZipFile(target, "w") as zf:
        zf.writestr(name, "\n".join(lines) + "\n")
    head = lakefs.resolve_commit(repo, "main")
    with pytest.raises(InputDataError, match="lacks 1 required column.*sha256"):
        transform(input_dir=tmp_path / "in", repo=repo, run_id="bad-cols")
    assert lakefs.resolve_commit(repo, "main") == head
    assert not lakefs.branch_exists(repo, "run-bad-cols")


@pytest.mark.both_profiles
def test_failure_before_merge_leaves_target_unchanged(transform, spark, lakefs, repo, archives, monkeypatch):
    head = lakefs.resolve_commit(repo, "main")
    written = []
    real_write = runs.write_table

    def failing_write(spark_, lakefs_, df, table, *args, **kwargs):
        if table.name == schema.QUARANTINE_TABLE:  # the other tables are written beside it
            raise RuntimeError("injected failure in one table's write")
        snapshot = real_write(spark_, lakefs_, df, table, *args, **kwargs)
        written.append(table.name)
        return snapshot

    monkeypatch.setattr(runs, "write_table", failing_write)
    with pytest.raises(RuntimeError, match="injected failure"):
        transform(input_dir=archives, repo=repo, run_id="boom")
    # Every other write ended before the failure was raised: none is left running on a deleted branch.
    assert set(written) == {*schema.STAGING_TABLES.values(), schema.DIM_FAMILIES_TABLE, schema.FCT_TABLE, entity_index.TABLE}
    assert lakefs.resolve_commit(repo, "main") == head
    assert not lakefs.branch_exists(repo, "run-boom") and not lakefs.tag_exists(repo, "run-boom")
    assert not iceberg.table_exists(spark, TableRef(repo, "main", schema.STG_NAMESPACE, "emulator_samples"))


@pytest.mark.both_profiles
def test_lineage_contract_survives_branch_deletion_and_rewrites(transform, spark, lakefs, repo, archives, tmp_path):
    first = transform(input_dir=archives, repo=repo, run_id="lineage-a")
    commit_a = first["merge_commit"]
    before = row_hash(spark, fct(repo, commit_a))
    snapshot_a = first["snapshot_ids"][schema.FCT_TABLE_FQN]
    paths_a = iceberg.data_file_paths(spark, fct(repo, commit_a))
    assert all(f"/{repo}/run-lineage-a/" in p for p in paths_a)  # paths name the (now frozen) run ref

    other = tmp_path / "other"
    generate(other, 300, seed=99)
    second = transform(input_dir=other, repo=repo, run_id="lineage-b", allow_shrink=True)
    assert lakefs.resolve_commit(repo, "main") == second["merge_commit"]
    assert row_hash(spark, fct(repo, "main")) != before

    # The run branch is gone (frozen); a branch of that name cannot sneak back in.
    assert not lakefs.branch_exists(repo, "run-lineage-a")
    with pytest.raises(Exception, match="a tag of that name exists"):
        lakefs.create_branch(repo, "run-lineage-a", "main")

    assert row_hash(spark, fct(repo, commit_a)) == before
    assert str(iceberg.current_snapshot_id(spark, fct(repo, commit_a))) == snapshot_a
    # Time travel from main finds A's snapshot too.
    old = spark.read.option("snapshot-id", snapshot_a).table(iceberg.qualified(spark, fct(repo, "main")))
    assert old.count() == before[0]


def test_members_with_one_base_name_are_all_loaded(transform, spark, lakefs, repo, archives, tmp_path):
    """Two zip members named real_malware_v1.csv in different folders are two parts, both loaded."""
    folder, total = split_member(archives, tmp_path / "in", first=50)
    summary = transform(input_dir=folder, repo=repo, run_id="same-name")
    a, b = "real_malware_v1.zip:a/real_malware_v1.csv", "real_malware_v1.zip:b/real_malware_v1.csv"
    assert summary["rows_by_part"] == {a: 50, b: total - 50}
    assert summary["rows_given"] == summary["input_rows"] == total and summary["reconciled"]
    assert summary["fct_rows"] + summary["quarantined_rows"] + summary["duplicates_dropped"] == total
    assert summary["fct_rows"] > total - 50  # not only b/'s rows
    staging = spark.table(iceberg.qualified(spark, TableRef(repo, summary["merge_commit"], schema.STG_NAMESPACE, "real_device_samples")))
    assert {r[0] for r in staging.select("source_member").distinct().collect()} == {
        "a/real_malware_v1.csv", "b/real_malware_v1.csv",
    }


def test_a_stored_part_that_changed_is_refused(spark, lakefs, repo, archives):
    ctx = runs.prepare_run(lakefs, repo, "main", "tampered", archives)
    manifest = raw_store.load_manifest(lakefs, repo, ctx.run_branch)
    part = manifest.parts[0]
    name, rows = archive_rows(archives / "emulator" / "emu_legitimate_v1.zip")
    lakefs.upload_bytes(repo, ctx.run_branch, part.lakefs_path, csv_text(rows[:3]).encode())  # overwritten
    try:
        with pytest.raises(InputDataError, match=f"{part.lakefs_path} holds .* bytes.*was overwritten or changed"):
            runs.transform_on_branch(spark, lakefs, repo, ctx.run_branch, ctx.run_id, splits.SplitSpec())
    finally:
        runs.abort_run(lakefs, ctx)


@pytest.mark.both_profiles
def test_empty_or_shrinking_input_never_reaches_main(transform, spark, lakefs, repo, archives, tmp_path):
    first = transform(input_dir=archives, repo=repo, run_id="full")
    before = row_hash(spark, fct(repo, "main"))

    # A header-only CSV: an error before anything is written.
    name, rows = archive_rows(archives / "real_device" / "real_legitimate_v1.zip")
    header_only = tmp_path / "header-only" / "real_device"
    header_only.mkdir(parents=True)
    (header_only / "real_legitimate_2021.csv").write_text(csv_text(rows[:1]))
    with pytest.raises(InputDataError, match="has a header but no data rows"):
        transform(input_dir=header_only.parent, repo=repo, run_id="empty")
    assert not lakefs.branch_exists(repo, "run-empty")

    # A quarter of the rows: refused before the merge, and every trace of the run removed.
    small = tmp_path / "small"
    generate(small, 100, seed=11)
    with pytest.raises(DatasetError, match=r"would shrink kronodroid.fct_training_dataset on 'main' from \d+ to \d+ rows"):
        transform(input_dir=small, repo=repo, run_id="small")
    assert lakefs.resolve_commit(repo, "main") == first["merge_commit"]
    assert row_hash(spark, fct(repo, "main")) == before
    assert not lakefs.branch_exists(repo, "run-small") and not lakefs.tag_exists(repo, "run-small")

    # Allowed explicitly, it merges.
    allowed = transform(input_dir=small, repo=repo, run_id="small-allowed", allow_shrink=True)
    assert lakefs.resolve_commit(repo, "main") == allowed["merge_commit"]
    assert row_hash(spark, fct(repo, allowed["merge_commit"]))[0] == allowed["fct_rows"] < before[0]

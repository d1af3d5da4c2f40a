"""The synthetic KronoDroid generator: files, headers, quirks, determinism, signal."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfp_core.kronodroid import generator, schema
from dfp_core.kronodroid.columns import PERMISSIONS, SYSCALLS

# The same file as the ``real_subset`` fixture of tests/conftest.py (absent for most users).
REAL_SUBSET = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kronodroid"
    / "kronodroid_real_device_2019_subset.csv"
)
ROWS = 3000
SEED = 7
ARCHIVE_NAMES = (
    "emulator/emu_legitimate_v1.zip", "emulator/emu_malware_v1.zip",
    "real_device/real_legitimate_v1.zip", "real_device/real_malware_v1.zip",
)
STRING_COLUMNS = {
    c: str for c in (schema.PACKAGE, schema.SHA256, schema.FAMILY, "Detection_Ratio", *schema.DATE_COLUMNS)
}
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def _read_csv(source) -> pd.DataFrame:
    return pd.read_csv(source, dtype=STRING_COLUMNS, keep_default_na=False)


def _member(path: Path) -> tuple[zipfile.ZipInfo, bytes]:
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        assert len(infos) == 1, f"{path.name} should hold exactly one member"
        return infos[0], archive.read(infos[0])


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("kronodroid")
    marker = generator.generate(out, ROWS, seed=SEED)
    frames = {}
    for name in ARCHIVE_NAMES:
        _, data = _member(out / name)
        frames[name] = _read_csv(io.BytesIO(data))
    return out, marker, frames


def _sub_dataset(frames: dict[str, pd.DataFrame], source: str) -> pd.DataFrame:
    return pd.concat([f for name, f in frames.items() if name.startswith(source + "/")], ignore_index=True)


# --- files, members, counts ----------------------------------------------------------


def test_writes_the_four_archives_with_one_csv_each_and_a_marker(generated):
    out, marker, frames = generated
    for name in ARCHIVE_NAMES:
        info, _ = _member(out / name)
        assert info.filename == Path(name).stem + ".csv"
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.compress_type == zipfile.ZIP_DEFLATED
    on_disk = json.loads((out / "GENERATED.json").read_text())
    assert on_disk == marker
    assert marker == {
        "generator": "dfp_core.generator", "synthetic": True, "seed": SEED, "rows": ROWS, "layout": "archives",
        "files": {name: len(frames[name]) for name in ARCHIVE_NAMES}, "version": generator.VERSION,
    }
    assert sum(marker["files"].values()) == ROWS
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [*ARCHIVE_NAMES, "GENERATED.json"]
    )


def test_rows_are_split_in_the_real_proportions():
    assert generator.split_rows(142_128) == [35_246, 28_745, 36_755, 41_382]
    assert generator.split_rows(4) == [1, 1, 1, 1]
    assert generator.split_rows(0) == [0, 0, 0, 0]
    for rows in (5, 7, 39, 1000, 12_345):
        shares = generator.split_rows(rows)
        assert sum(shares) == rows and min(shares) >= 1
        expected = [rows * a.real_rows / generator.FULL_ROWS for a in generator.ARCHIVES]
        assert all(abs(s - e) <= 1 for s, e in zip(shares, expected))


def test_every_file_is_classified_as_the_archive_it_claims_to_be(generated):
    out, _, frames = generated
    for name, frame in frames.items():
        spec = schema.classify_input(Path(name))
        assert spec == schema.KNOWN_ARCHIVES[Path(name).name]
        assert (frame[schema.LABEL] == spec.expected_label).all(), f"labels of {name}"


# --- headers ---------------------------------------------------------------------------


def test_headers_differ_per_archive_like_the_real_ones(generated):
    _, _, frames = generated
    for name, frame in frames.items():
        columns = list(frame.columns)
        emulator = name.startswith("emulator/")
        malware = "malware" in name
        first, last = ("FirstModDate", "LastModDate") if emulator else ("EarliestModDate", "HighestModDate")
        other = {"EarliestModDate", "HighestModDate"} if emulator else {"FirstModDate", "LastModDate"}
        assert not other & set(columns)
        assert columns.index("NrServices") + 1 == columns.index(first)
        assert columns.index(first) + 1 == columns.index(last)
        assert columns.index(last) + 1 == columns.index("Scanners")
        assert ("FilesInsideAPK" in columns) == (not (emulator and malware))
        assert len(columns) == (483 if emulator and malware else 484)
        assert not [c for c in schema.REQUIRED_RAW if c not in columns]
        assert not [c for c in schema.KNOWN_EXTRAS if c in columns]
        assert set(columns) <= schema.KNOWN_RAW
        assert columns[:2] == [schema.PACKAGE, schema.LABEL]
        assert columns[2:290] == list(SYSCALLS) and columns[290] == "nr_syscalls"
        assert columns[291:457] == list(PERMISSIONS)
        assert columns[-3:] == ["Scanners", "Detection_Ratio", "MalFamily"]
        assert tuple(columns) == generator.archive_columns(schema.EMULATOR if emulator else schema.REAL_DEVICE,
                                                           int(malware))


# --- values and quirks -----------------------------------------------------------------


def test_packages_end_with_an_embedded_newline_inside_quotes(generated):
    out, _, frames = generated
    for name, frame in frames.items():
        assert frame[schema.PACKAGE].str.endswith("\n").all()
        assert not frame[schema.PACKAGE].str[:-1].str.contains("\n").any()
        _, data = _member(out / name)
        first_record = data.split(b"\n", 1)[1]
        assert re.match(rb'"[a-z0-9_.]+\n",[01],', first_record), first_record[:40]


def test_labels_families_and_hashes(generated):
    _, _, frames = generated
    for name, frame in frames.items():
        assert frame[schema.SHA256].str.fullmatch(r"[0-9a-f]{64}").all()
        ratio = frame["Detection_Ratio"].astype(float)
        if "malware" in name:
            assert (frame[schema.FAMILY] != "").all()
            assert (ratio > 0).all()
        else:
            assert (frame[schema.FAMILY] == "").all()
            assert (ratio == 0).mean() > 0.9
        assert frame["Scanners"].between(55, 70).all()
    malware = pd.concat([f for n, f in frames.items() if "malware" in n])
    counts = malware[schema.FAMILY].value_counts()
    assert 30 <= len(counts) <= 60
    assert counts.iloc[0] > 5 * counts.iloc[-1], "family sizes should be Zipf-like"


def test_aggregates_are_consistent_and_syscalls_sparse(generated):
    _, _, frames = generated
    for name, frame in frames.items():
        calls = frame[list(SYSCALLS)].to_numpy()
        perms = frame[list(PERMISSIONS)].to_numpy()
        assert (calls >= 0).all() and calls.max() <= generator.MAX_SYSCALL_COUNT
        assert (frame["nr_syscalls"].to_numpy() == calls.sum(axis=1)).all()
        assert set(np.unique(perms)) <= {0, 1}
        assert (frame["nr_permissions"].to_numpy() == perms.sum(axis=1)).all()
        assert (frame["normal"] + frame["dangerous"] + frame["signature"] == frame["nr_permissions"]).all()
        assert (frame["total_perm"] == frame["nr_permissions"] + frame["nr_custom"]).all()
        assert (frame["custom_yes"] == (frame["nr_custom"] > 0)).all()
        assert (frame["UFileSize"] > frame["CFileSize"]).all()
        assert frame["CFileSize"].between(1e4, 1.5e8).all()
        assert frame["TimesSubmitted"].between(1, 100).all()
        if "FilesInsideAPK" in frame:
            assert frame["FilesInsideAPK"].between(10, 5000).all()
        distinct = (calls > 0).sum(axis=1)
        with_calls = distinct[distinct > 0]
        assert 20 <= np.median(with_calls) <= 120
        assert (calls > 0).mean() < 0.25, "most syscall counts are 0"
        assert calls.max() > 10_000, "non-zero counts are heavy tailed"
        assert (frame["nr_syscalls"] == 0).sum() >= 1, f"{name} has no app without syscalls"
        assert (frame["nr_syscalls"] == 0).mean() < 0.02


def test_dates_have_sentinels_and_are_ordered(generated):
    _, _, frames = generated
    sentinel = generator.SENTINEL_DATETIME
    assert sentinel == "1980-01-01 00:00:00"
    for name, frame in frames.items():
        first, last = generator.DATE_PAIRS[schema.EMULATOR if name.startswith("emulator/") else schema.REAL_DEVICE]
        assert frame[first].str.match(DATETIME).all() and frame[last].str.match(DATETIME).all()
        unknown = (frame[first] == sentinel) | (frame[last] == sentinel)
        assert 0.005 < unknown.mean() < 0.08
        known = frame[~unknown]
        assert (known[last] >= known[first]).all()
        years = known[last].str[:4].astype(int)
        assert years.between(2008, 2020).all() and years.nunique() >= 8


def test_duplicate_sha256_groups_exist_per_sub_dataset(generated):
    _, _, frames = generated
    for source in schema.DATA_SOURCES:
        both = _sub_dataset(frames, source)
        repeated = both[both[schema.SHA256].duplicated(keep=False)]
        groups = repeated.groupby(schema.SHA256)
        assert len(groups) == 4 and (groups.size() == 2).all()
        conflicting = groups[schema.LABEL].nunique() == 2
        assert conflicting.sum() == 2
        exact = [g for _, g in groups if g.drop_duplicates().shape[0] == 1]
        assert len(exact) == 2
        for sha in conflicting[conflicting].index:
            pair = repeated[repeated[schema.SHA256] == sha]
            assert (pair[schema.PACKAGE].nunique(), sorted(pair[schema.LABEL])) == (1, [0, 1])


def test_small_outputs_have_no_duplicates_and_zero_rows_still_have_headers(tmp_path):
    marker = generator.generate(tmp_path / "small", 30, seed=1)
    assert sum(marker["files"].values()) == 30
    for name in ARCHIVE_NAMES:
        frame = _read_csv(io.BytesIO(_member(tmp_path / "small" / name)[1]))
        assert not frame[schema.SHA256].duplicated().any()
    marker = generator.generate(tmp_path / "empty", 0)
    assert marker["files"] == dict.fromkeys(ARCHIVE_NAMES, 0)
    frame = _read_csv(io.BytesIO(_member(tmp_path / "empty" / ARCHIVE_NAMES[1])[1]))
    assert frame.empty and len(frame.columns) == 483


# --- determinism -----------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", generator.LAYOUTS)
def test_same_arguments_give_identical_bytes(tmp_path, layout):
    generator.generate(tmp_path / "a", 500, seed=3, layout=layout)
    generator.generate(tmp_path / "b", 500, seed=3, layout=layout)
    generator.generate(tmp_path / "c", 500, seed=4, layout=layout)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a), "another seed should change every file"


# --- subset layout ---------------------------------------------------------------------


def _expected_subset_header() -> list[str]:
    if REAL_SUBSET.is_file():
        with open(REAL_SUBSET, newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle))
    return [
        schema.PACKAGE, schema.LABEL, *SYSCALLS, "nr_syscalls", *PERMISSIONS, *schema.STATIC_AGGREGATES,
        schema.SHA256, *schema.APK_METADATA, *schema.LABEL_LEAKS, schema.FAMILY,
        "Categories", "Highest-date", "year_month", "Year",
    ]


def test_subset_layout_matches_the_public_subset_format(tmp_path):
    marker = generator.generate(tmp_path, 800, seed=5, layout="subset")
    rel = "real_device/kronodroid_real_device_synthetic_subset.csv"
    assert marker["layout"] == "subset" and marker["files"] == {rel: 800}
    path = tmp_path / rel
    assert schema.classify_input(Path(rel)) == schema.ArchiveSpec(schema.REAL_DEVICE, None)
    with open(path, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert header == _expected_subset_header()
    assert len(header) == 486
    raw = path.read_bytes()
    assert raw.count(b"\r\n") == 801, "records end with CRLF, like the public subset"
    frame = _read_csv(path)
    assert len(frame) == 800 and set(frame[schema.LABEL]) == {0, 1}
    assert (frame[schema.PACKAGE].str.endswith("\n")).all()
    assert ((frame[schema.FAMILY] == "") == (frame[schema.LABEL] == 0)).all()
    assert ((frame["Categories"] == "Benign") == (frame[schema.LABEL] == 0)).all()
    assert (frame["Highest-date"].str[:4].astype(int) == frame["Year"]).all()
    assert (frame["year_month"] == frame["Highest-date"].str[:8] + "01").all()
    assert frame["Year"].between(2008, 2020).all()
    assert (frame["nr_syscalls"].to_numpy() == frame[list(SYSCALLS)].to_numpy().sum(axis=1)).all()


def test_subset_header_line_equals_the_real_file_header_line(tmp_path, real_subset):
    generator.generate(tmp_path, 10, layout="subset")
    with open(tmp_path / generator.SUBSET_RELPATH, "rb") as ours, open(real_subset, "rb") as real:
        assert ours.readline() == real.readline()


# --- signal and drift ------------------------------------------------------------------


def test_a_few_permissions_separate_the_labels(generated):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    _, _, frames = generated
    full = pd.concat(frames.values(), ignore_index=True)
    few = ["READ_PHONE_STATE", "SEND_SMS", "RECEIVE_SMS", "READ_SMS", "RECEIVE_BOOT_COMPLETED",
           "SYSTEM_ALERT_WINDOW", "GET_TASKS", "ACCESS_WIFI_STATE"]
    y = full[schema.LABEL].to_numpy()
    scores = cross_val_predict(LogisticRegression(max_iter=500), full[few].to_numpy(), y, cv=5,
                               method="predict_proba")[:, 1]
    assert roc_auc_score(y, scores) > 0.85


def test_benign_trained_reconstruction_separates_but_no_single_column_does(generated):
    from sklearn.decomposition import PCA
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    _, _, frames = generated
    full = pd.concat(frames.values(), ignore_index=True)
    features = [c for c in schema.RAW_FEATURES if c not in schema.OPTIONAL_FEATURES]
    x = np.log1p(full[features].to_numpy(float))
    y = full[schema.LABEL].to_numpy()
    benign = np.flatnonzero(y == 0)
    np.random.default_rng(0).shuffle(benign)
    train = benign[: len(benign) // 2]
    test = np.setdiff1d(np.arange(len(y)), train)
    scaler = StandardScaler().fit(x[train])
    z = np.clip(scaler.transform(x), -10, 10)
    pca = PCA(16, random_state=0).fit(z[train])
    error = ((z - pca.inverse_transform(pca.transform(z))) ** 2).mean(axis=1)
    assert roc_auc_score(y[test], error[test]) > 0.85
    single = [roc_auc_score(y, x[:, i]) for i in range(x.shape[1])]
    # On the real 2019 subset the strongest single column (TimesSubmitted: malware is submitted
    # to VirusTotal far less often) reaches 0.975; the sample may be that separable, not more.
    assert max(max(a, 1 - a) for a in single) < 0.98, "one column alone should not separate the labels"


def test_data_drifts_over_the_years(generated):
    _, _, frames = generated
    parts = []
    for name, frame in frames.items():
        if "legitimate" in name:
            source = schema.EMULATOR if name.startswith("emulator/") else schema.REAL_DEVICE
            parts.append(frame.assign(year=frame[generator.DATE_PAIRS[source][1]].str[:4].astype(int)))
    benign = pd.concat(parts, ignore_index=True)
    early, late = benign[benign["year"].between(2008, 2012)], benign[benign["year"] >= 2018]
    assert late["CFileSize"].median() > 1.5 * early["CFileSize"].median()
    assert late["FOREGROUND_SERVICE"].mean() > 5 * max(early["FOREGROUND_SERVICE"].mean(), 0.002)


# --- arguments and CLI -----------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"rows": -1}, {"rows": 10, "layout": "nope"}, {"rows": 10, "seed": -3},
    {"rows": 10, "start_year": 2020, "end_year": 2010}, {"rows": 10, "start_year": 1980},
])
def test_bad_arguments_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generator.generate(tmp_path, **kwargs)


def test_year_range_is_respected(tmp_path):
    generator.generate(tmp_path, 400, seed=2, start_year=2015, end_year=2016)
    frame = _read_csv(io.BytesIO(_member(tmp_path / ARCHIVE_NAMES[3])[1]))
    dates = pd.concat([frame["EarliestModDate"], frame["HighestModDate"]])
    years = dates[dates != generator.SENTINEL_DATETIME].str[:4].astype(int)
    assert set(years) == {2015, 2016}

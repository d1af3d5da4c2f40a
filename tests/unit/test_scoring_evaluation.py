"""Local reading, batch scoring with an MLflow model, baselines and the
drift/comparison evaluation: CPU only, generated data, no services."""

from __future__ import annotations

import csv
import io
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")
pytest.importorskip("mlflow")
pytest.importorskip("sklearn")

from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from dfp_core.kronodroid import schema  # noqa: E402
from dfp_core.errors import ConfigError, InputDataError  # noqa: E402
from dfp_core.kronodroid.generator import SUBSET_RELPATH, generate  # noqa: E402
from dfp_core.ml import baselines  # noqa: E402
from dfp_core.ml.evaluation import COMPARE_PLOTS, DRIFT_PLOTS, METHODS, compare_models, time_split_evaluation  # noqa: E402
from dfp_core.kronodroid.reader import read_kronodroid  # noqa: E402
from dfp_core.ml.scoring import OUTPUT_COLUMNS, score  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning",  # Lightning: few dataloader workers, small batches; MLflow: env checks
    "ignore:.*does not have many workers.*",
)
TINY = dict(max_epochs=3, batch_size=64, hidden_dims=(32,), latent_dim=4, dropout=0.0, patience=2, seed=0,
            accelerator="cpu", devices="1", lr=3e-3)
ARCHIVE_LABELS = {"emu_legitimate_v1.zip": 0, "emu_malware_v1.zip": 1, "real_legitimate_v1.zip": 0, "real_malware_v1.zip": 1}
BAD = {2: ("read", "abc", "non_numeric_feature"), 5: (schema.SHA256, "", "invalid_sha256")}  # data row -> edit


def corrupt(text: str, edits=BAD, terminator: str = "\n") -> str:
    """The CSV text with the given cells of 1-based data rows replaced."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header = rows[0]
    for row, (column, value, _) in edits.items():
        rows[row][header.index(column)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator=terminator).writerows(rows)
    return out.getvalue()


def corrupt_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        [member] = archive.namelist()
        text = archive.read(member).decode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, corrupt(text))


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("archives")
    generate(out, 300, seed=1)
    return out


@pytest.fixture(scope="module")
def bad_archives(archives, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "in"
    shutil.copytree(archives, out)
    corrupt_zip(out / "real_device" / "real_malware_v1.zip")
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny autoencoder trained by fit_and_evaluate on a random split of generated data."""
    from types import SimpleNamespace

    from dfp_core.ml.fit import fit_and_evaluate
    from dfp_core.params import TrainConfig

    src = tmp_path_factory.mktemp("train-data")
    generate(src, 900, seed=2)
    valid, _ = read_kronodroid(src)
    split = np.random.default_rng(0).choice(["train", "val", "test"], len(valid), p=[0.6, 0.2, 0.2])
    frames = {s: valid[split == s].reset_index(drop=True) for s in ("train", "val", "test")}
    result = fit_and_evaluate(TrainConfig(**TINY), SimpleNamespace(frames=frames), tmp_path_factory.mktemp("work"))
    return {**vars(result), "frames": frames}


@pytest.fixture(scope="module")
def logged(trained, tmp_path_factory):
    """The trained model logged like `train` does, in a sqlite-backed local MLflow."""
    import mlflow

    from dfp_core.tracking.integrity import MODEL_DIGEST_TAG, record_model_digest
    from dfp_core.ml.pyfunc import as_model_input, log_scorer_model

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("scoring-test", artifact_location=(tmp / "artifacts").as_uri())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mlflow.start_run(experiment_id=experiment):
                info = log_scorer_model(trained["model"], trained["preprocessor"], trained["error_score"],
                                        trained["threshold"], 0.05,
                                        as_model_input(trained["frames"]["test"].head(3)), tmp / "log")
                digest = record_model_digest(info.model_uri)
            version = mlflow.register_model(info.model_uri, "kd-scoring-test", tags={MODEL_DIGEST_TAG: digest}).version
    finally:
        mlflow.set_tracking_uri(previous)
    return {"uri": uri, "model_uri": info.model_uri, "registered": f"models:/kd-scoring-test/{version}"}


# -- reading without Spark -----------------------------------------------------------

def test_read_archives(archives):
    valid, rejected = read_kronodroid(archives)
    assert len(valid) + len(rejected) == 300 and rejected.empty
    assert list(valid.columns[-len(schema.FEATURE_COLUMNS):]) == list(schema.FEATURE_COLUMNS)
    assert {"sample_id", "data_source", "label", "source_file", "source_row", "sample_year"} <= set(valid.columns)
    assert (valid["label"] == valid["source_file"].map(ARCHIVE_LABELS)).all()
    assert set(valid["data_source"]) == set(schema.DATA_SOURCES)
    assert (valid["sample_id"] == valid["data_source"] + ":" + valid["sha256"]).all()
    # FilesInsideAPK is absent from emu_malware: null there only
    missing = valid["files_inside_apk"].isna()
    assert missing.any() and (valid.loc[missing, "source_file"] == "emu_malware_v1.zip").all()
    # a single archive reads the same rows as in the directory
    one, _ = read_kronodroid(archives / "emulator" / "emu_malware_v1.zip")
    assert one["sample_id"].tolist() == valid.loc[valid["source_file"] == "emu_malware_v1.zip", "sample_id"].tolist()


def test_read_subset_csv_with_bad_rows(tmp_path):
    generate(tmp_path / "gen", 120, seed=3, layout="subset")
    src = tmp_path / "gen" / SUBSET_RELPATH
    clean, _ = read_kronodroid(src)
    assert len(clean) == 120 and set(clean["label"]) == {0, 1} and set(clean["data_source"]) == {schema.REAL_DEVICE}
    # outside a real_device/ folder, a name that says the device is enough
    bare = tmp_path / "real_sample.csv"
    bare.write_bytes(corrupt(src.read_bytes().decode(), terminator="\r\n").encode())
    valid, rejected = read_kronodroid(bare)
    assert len(valid) + len(rejected) == 120 and len(rejected) == 2
    assert rejected["source_row"].tolist() == list(BAD)
    assert rejected["reason"].tolist() == [reason for _, _, reason in BAD.values()]
    assert rejected["reasons"].tolist() == rejected["reason"].tolist()
    assert "sc_read" in rejected["detail"].iloc[0]
    assert rejected["sample_id"].iloc[0].startswith("real_device:") and rejected["sample_id"].isna().iloc[1]
    assert valid["sample_id"].tolist() == clean["sample_id"].drop(index=[r - 1 for r in BAD]).tolist()


def test_read_malformed_row_and_header_only(tmp_path):
    generate(tmp_path / "gen", 30, seed=3, layout="subset")
    lines = (tmp_path / "gen" / SUBSET_RELPATH).read_bytes().decode().split("\r\n")
    folder = tmp_path / "in" / "real_device"
    folder.mkdir(parents=True)
    (folder / "short.csv").write_bytes("\r\n".join([*lines[:4], "1,2,3", *lines[4:]]).encode())
    (folder / "header_only.csv").write_bytes((lines[0] + "\r\n").encode())
    valid, rejected = read_kronodroid(folder.parent)
    assert len(valid) == 30 and len(rejected) == 1
    row = rejected.iloc[0]
    assert row["reason"] == "malformed_row" and pd.isna(row["source_row"]) and row["detail"].startswith("3 cells")


def test_read_bytes_that_are_not_utf8(tmp_path):
    generate(tmp_path / "gen", 30, seed=3, layout="subset")
    raw = (tmp_path / "gen" / SUBSET_RELPATH).read_bytes()
    lines = raw.split(b"\r\n")
    package = lines[0].decode().split(",").index(schema.PACKAGE)
    cells = lines[3].split(b",")
    cells[package] = b"com.\xff\xfe.app"
    lines[3] = b",".join(cells)
    folder = tmp_path / "in" / "real_device"
    folder.mkdir(parents=True)
    (folder / "latin.csv").write_bytes(b"\r\n".join(lines))
    valid, rejected = read_kronodroid(folder.parent)
    assert len(valid) == 29 and rejected["reason"].tolist() == ["invalid_utf8"]
    assert rejected["source_row"].tolist() == [3] and schema.PACKAGE in rejected["detail"].iloc[0]


def test_read_unknown_inputs(tmp_path, archives):
    header = ",".join(schema.REQUIRED_RAW) + "\n"
    (tmp_path / "data.csv").write_text(header)
    with pytest.raises(InputDataError, match="unknown input file data.csv"):
        read_kronodroid(tmp_path / "data.csv")
    (tmp_path / "mystery.zip").write_bytes((archives / "emulator" / "emu_malware_v1.zip").read_bytes())
    with pytest.raises(InputDataError, match="unknown input file mystery.zip"):
        read_kronodroid(tmp_path / "mystery.zip")
    with pytest.raises(InputDataError, match="unknown input file"):
        read_kronodroid(tmp_path)
    with pytest.raises(InputDataError, match="does not exist"):
        read_kronodroid(tmp_path / "nope.csv")


# -- scoring with an MLflow model ----------------------------------------------------

from dfp_core.runtime import Runtime  # noqa: E402
from dfp_core.settings import Settings  # noqa: E402

def test_score_end_to_end(logged, trained, bad_archives, tmp_path):
    out = tmp_path / "scores" / "out.csv"
    rt = Runtime(Settings.from_env({}).override(mlflow={"tracking_uri": logged["uri"]}))
    summary = score(rt, logged["model_uri"], bad_archives, out)
    assert summary.rows_in == 300 and summary.scored == 298 and summary.rejected == 2
    assert summary.rejected_by_reason == {"invalid_sha256": 1, "non_numeric_feature": 1}
    assert summary.threshold == pytest.approx(trained["threshold"])
    frame = pd.read_csv(out)
    assert list(frame.columns) == list(OUTPUT_COLUMNS) and len(frame) == 300
    bad = frame[frame["status"] == "rejected"]
    assert bad["source_file"].tolist() == ["real_malware_v1.zip"] * 2 and bad["source_row"].tolist() == list(BAD)
    assert bad["reason"].tolist() == ["non_numeric_feature", "invalid_sha256"]
    assert bad["reconstruction_error"].isna().all() and bad["anomaly_score"].isna().all()
    assert bad["is_anomaly"].isna().all()
    good = frame[frame["status"] == "scored"]
    assert good["reason"].isna().all() and good["reconstruction_error"].notna().all()
    np.testing.assert_array_equal(good["is_anomaly"].astype(bool), good["anomaly_score"] > summary.threshold)
    assert summary.anomalies == int(good["is_anomaly"].astype(bool).sum())
    assert summary.target_fpr == pytest.approx(0.05) and summary.flagged_share == summary.anomalies / 298
    # same scores as the model in memory, input order kept
    valid, _ = read_kronodroid(bad_archives)
    x = trained["preprocessor"].transform(valid)
    direct = trained["model"].reconstruction_error(x).numpy()
    np.testing.assert_allclose(good["reconstruction_error"].to_numpy(), direct, rtol=1e-5, atol=1e-7)
    _, direct_score = trained["error_score"].scores(trained["model"], x)
    np.testing.assert_allclose(good["anomaly_score"].to_numpy(), direct_score, rtol=1e-5, atol=1e-7)
    assert good["sample_id"].tolist() == valid["sample_id"].tolist()

    # parquet, through the registry
    pq = score(rt, logged["registered"], bad_archives, tmp_path / "out.parquet")
    back = pd.read_parquet(tmp_path / "out.parquet")
    assert pq.scored == 298 and len(back) == 300 and list(back.columns) == list(OUTPUT_COLUMNS)
    assert str(back["is_anomaly"].dtype) == "boolean" and back["is_anomaly"].isna().sum() == 2
    np.testing.assert_allclose(back["reconstruction_error"].dropna().to_numpy(), direct, rtol=1e-5, atol=1e-7)

    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        score(rt, logged["model_uri"], bad_archives, tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


def test_score_explains_each_app_with_terms_that_add_up_to_its_score(logged, trained, bad_archives, tmp_path):
    rt = Runtime(Settings.from_env({}).override(mlflow={"tracking_uri": logged["uri"]}))
    score(rt, logged["model_uri"], bad_archives, tmp_path / "plain.parquet")
    summary = score(rt, logged["model_uri"], bad_archives, tmp_path / "explained.parquet", explain=3)
    plain, explained = pd.read_parquet(tmp_path / "plain.parquet"), pd.read_parquet(tmp_path / "explained.parquet")
    groups = ["permissions", "syscalls", "metadata"]
    extra = [f"top{i}_{what}" for i in (1, 2, 3) for what in ("feature", "group", "contribution")]
    assert list(explained.columns) == [*OUTPUT_COLUMNS, *extra, *(f"{g}_contribution" for g in groups)]
    pd.testing.assert_frame_equal(explained[list(OUTPUT_COLUMNS)], plain)  # the same scores, bit for bit
    assert summary.scored == 298
    good = explained[explained["status"] == "scored"]
    total = good[[f"{g}_contribution" for g in groups]].sum(axis=1)
    np.testing.assert_allclose(total, good["anomaly_score"], rtol=1e-9, atol=1e-9)
    tops = good[["top1_contribution", "top2_contribution", "top3_contribution"]].to_numpy()
    assert (np.diff(tops, axis=1) <= 0).all() and (tops[:, 0] > 0).all()
    for i in (1, 2, 3):
        assert all(f in schema.FEATURE_GROUPS[g] for f, g in zip(good[f"top{i}_feature"], good[f"top{i}_group"]))
    assert explained.loc[explained["status"] == "rejected", extra].isna().all().all()
    with pytest.raises(ConfigError, match="--explain takes a number of features from 1 to 476, got 477"):
        score(rt, logged["model_uri"], bad_archives, tmp_path / "too_many.parquet", explain=477)
    assert not (tmp_path / "too_many.parquet").exists()

    # The served model gives the same, asked with MLflow's params (the signature declares explain).
    import mlflow
    from dfp_core.ml.pyfunc import as_model_input

    valid, _ = read_kronodroid(bad_archives)
    rows = as_model_input(valid.head(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.set_tracking_uri(logged["uri"])
        try:
            loaded = mlflow.pyfunc.load_model(logged["model_uri"])
        finally:
            mlflow.set_tracking_uri(None)
        served = loaded.predict(rows, params={"explain": 3})
    assert loaded.metadata.signature.params.to_dict() == [{"name": "explain", "type": "long", "default": 0, "shape": None}]
    same = explained[explained["sample_id"].isin(rows["sample_id"])].set_index("sample_id").loc[rows["sample_id"]]
    for column in [*extra, *(f"{g}_contribution" for g in groups), "anomaly_score"]:
        if column.endswith(("_feature", "_group")):
            assert served[column].tolist() == same[column].tolist(), column
        else:  # 4 rows a batch here, the whole block there: float32 sums in another order
            np.testing.assert_allclose(served[column], same[column], rtol=1e-6, err_msg=column)


def test_an_explanation_of_a_score_without_feature_terms_is_refused(trained):
    from dfp_core.ml.scoring import explainer_for
    from dfp_core.serving.score import ErrorScore
    from dfp_core.serving.scorer import KronodroidScorer

    scorer = KronodroidScorer()
    scorer.network, scorer.preprocessor, scorer.threshold = trained["model"], trained["preprocessor"], 1.0
    scorer.error_score = ErrorScore("mse")
    with pytest.raises(ConfigError, match=r"cannot explain the scores of runs:/abc/model: it scores with mse \(trained "
                                          r"with --score mse, or before grouped_error was the default\)"):
        explainer_for(None, scorer, "runs:/abc/model", 3)
    # the served model refuses it too, as a client's mistake (MLflow's 400)
    from mlflow.exceptions import MlflowException

    frame = trained["frames"]["test"].head(2)
    with pytest.raises(MlflowException, match="this version scores with mse, which has no per-feature terms"):
        scorer.predict(None, frame, params={"explain": 3})
    assert len(scorer.predict(None, frame)) == 2


def _plain_scores(trained, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(reconstruction error, grouped-error score) of ``frame``'s rows computed plainly, one
    numpy step at a time as the model's description says, in float64 around the float32
    network: the reference the optimised scorer must match bit for bit."""
    import torch

    pre, error_score = trained["preprocessor"], trained["error_score"]
    raw = frame[list(pre.features)].to_numpy(np.float64)
    raw = np.where(np.isfinite(raw), raw, np.nan)
    raw = np.where(np.isnan(raw), pre.medians, raw)
    z = (np.log1p(np.clip(raw, 0.0, None)) - pre.means) / pre.stds
    z = np.clip(z, -pre.z_clip, pre.z_clip)
    z[:, pre.constant_mask] = 0.0
    x = torch.as_tensor(z.astype(np.float32))
    network = trained["model"].eval()
    with torch.no_grad():
        residual = (network(x) - x).numpy().astype(np.float64)
    terms = np.column_stack([
        ((np.clip(residual[:, error_score.groups == g], 0.0, None) if shortfall
          else residual[:, error_score.groups == g]) ** 2).mean(axis=1)
        for g, shortfall in enumerate(error_score.shortfall_only)])
    standardised = np.minimum((terms - error_score.location) / error_score.scale, error_score.cap)
    weakest = error_score.weakest_weight * np.maximum(standardised.min(axis=1), 0.0)
    return (residual ** 2).mean(axis=1), standardised.sum(axis=1) + weakest


def test_scores_are_bit_identical_to_the_plain_computation(logged, trained, archives, tmp_path):
    """`dfp score`'s fast path (blocks read ahead in a thread, masks per column, preprocessing
    in place) gives the very bits of the plain computation, for every row, in input order.
    The network sees the same rows together as in `dfp score` (one block per archive here):
    a BLAS may round a row differently in a batch of another size."""
    assert trained["error_score"].kind == "grouped_error"
    rt = Runtime(Settings.from_env({}).override(mlflow={"tracking_uri": logged["uri"]}))
    score(rt, logged["registered"], archives, tmp_path / "out.parquet")
    out = pd.read_parquet(tmp_path / "out.parquet")
    valid, rejected = read_kronodroid(archives)
    assert rejected.empty and out["sample_id"].tolist() == valid["sample_id"].tolist()
    for source_file, rows in valid.groupby("source_file", sort=False):
        mse, grouped = _plain_scores(trained, rows)
        mine = out[out["source_file"] == source_file]
        assert np.array_equal(mine["reconstruction_error"].to_numpy(), mse), source_file
        assert np.array_equal(mine["anomaly_score"].to_numpy(), grouped), source_file
        assert np.array_equal(mine["is_anomaly"].to_numpy(dtype=bool), grouped > trained["threshold"])


def test_score_never_writes_over_its_input(logged, bad_archives, tmp_path):
    rt = Runtime(Settings.from_env({}).override(mlflow={"tracking_uri": logged["uri"]}))
    generate(tmp_path / "gen", 30, seed=3, layout="subset")
    csv_in = tmp_path / "gen" / SUBSET_RELPATH
    before = csv_in.read_bytes()
    with pytest.raises(ConfigError, match="is the input file"):
        score(rt, logged["model_uri"], csv_in, csv_in)
    with pytest.raises(ConfigError, match="is the input file"):  # the same file by another path
        score(rt, logged["model_uri"], csv_in, csv_in.parent / ".." / csv_in.parent.name / csv_in.name)
    assert csv_in.read_bytes() == before
    with pytest.raises(ConfigError, match="inside the input folder"):
        score(rt, logged["model_uri"], bad_archives, bad_archives / "scores.csv")
    assert not (bad_archives / "scores.csv").exists()


def test_a_failed_score_leaves_no_partial_output(logged, bad_archives, tmp_path, monkeypatch):
    from dfp_core.ml import scoring

    rt = Runtime(Settings.from_env({}).override(mlflow={"tracking_uri": logged["uri"]}))
    out = tmp_path / "scores.parquet"
    calls = []

    def failing(model, frame, explainer=None):  # the second piece fails, after the first was written
        calls.append(len(frame))
        if len(calls) == 2:
            raise RuntimeError("model crashed")
        return real(model, frame, explainer)

    real = scoring.score_frame
    monkeypatch.setattr(scoring, "score_frame", failing)
    with pytest.raises(RuntimeError, match="model crashed"):
        score(rt, logged["model_uri"], bad_archives, out)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


# -- baselines -----------------------------------------------------------------------

def structured(seed: int = 0, n_benign: int = 400, n_anomalous: int = 80, d: int = 30):
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(3, d))
    benign = rng.normal(size=(n_benign, 3)) @ loadings + 0.1 * rng.normal(size=(n_benign, d))
    anomalous = rng.normal(size=(n_anomalous, 3)) @ loadings + rng.normal(0, 1.5, (n_anomalous, d))
    anomalous[:, :5] += 3.0
    x = np.vstack([benign, anomalous]).astype(np.float32)
    y = np.r_[np.zeros(n_benign, int), np.ones(n_anomalous, int)]
    return x, y


def test_baselines_separate_and_are_deterministic():
    x, y = structured(0)
    ex, ey = structured(1)
    benign = x[y == 0]
    pca = baselines.pca_errors(benign, ex, n_components=3)
    iso = baselines.isolation_forest_scores(benign, ex, seed=7)
    rf = baselines.random_forest_scores(x, y, ex, seed=7)
    for name, s in (("pca", pca), ("iforest", iso), ("rf", rf)):
        assert s.shape == (len(ex),) and s.dtype == np.float64
        assert roc_auc_score(ey, s) > 0.8, name
    np.testing.assert_array_equal(iso, baselines.isolation_forest_scores(benign, ex, seed=7))
    np.testing.assert_array_equal(rf, baselines.random_forest_scores(x, y, ex, seed=7))
    np.testing.assert_array_equal(pca, baselines.pca_errors(benign, ex, n_components=3))
    assert baselines.pca_errors(benign[:5], ex, n_components=16).shape == (len(ex),)  # components capped


# -- comparison and drift ------------------------------------------------------------

def test_threshold_meets_the_target_fpr_on_validation(trained):
    from dfp_core.ml.metrics import false_positive_rate

    figures = trained["metrics"]
    assert figures["target_fpr"] == 0.05 and figures["val_fpr"] <= 0.05
    val = trained["frames"]["val"]
    y = val["label"].to_numpy()
    assert false_positive_rate(trained["scores"]["val"], y, trained["threshold"]) == figures["val_fpr"]
    # where it lies on new benign apps, from how many it was set on
    assert figures["val_benign"] == (y == 0).sum() and figures["fpr_95_low"] < 0.05 < figures["fpr_95_high"]
    # the lowest such threshold: one step lower would flag one more benign validation app
    benign = np.sort(trained["scores"]["val"][y == 0])
    below = benign[benign < trained["threshold"]]
    assert ((benign > below.max()).sum() / benign.size) > 0.05
    for key in ("test_fpr", "test_tpr_at_fpr_1pct", "test_tpr_at_fpr_5pct", "test_tpr_at_fpr_10pct"):
        assert 0.0 <= figures[key] <= 1.0


def test_description_states_the_operating_point():
    from dfp_core.ml.pyfunc import model_description

    figures = {"val_fpr": 0.048, "test_precision": 0.71, "test_recall": 0.6, "test_f1": 0.65, "test_fpr": 0.052,
               "test_fpr__emulator": 0.04, "test_fpr__real_device": 0.061, "test_roc_auc": 0.93,
               "test_tpr_at_fpr_1pct": 0.2, "test_tpr_at_fpr_5pct": 0.55, "test_tpr_at_fpr_10pct": 0.8}
    text = model_description("error_mahalanobis", 0.123456789, 0.05, figures)
    assert "Score (error_mahalanobis): anomaly_score, the squared Mahalanobis distance" in text
    assert "is_anomaly = anomaly_score (error_mahalanobis) > 0.123457, set on the validation split so that at most 5% of its " \
           "benign apps are flagged (reached there: 4.8%)." in text
    assert "Test split at that threshold: precision 0.710, recall 0.600, F1 0.650, benign FPR 0.052." in text
    assert "Benign FPR on test per data source: emulator 4%, real_device 6.1%." in text
    assert "Malware caught (TPR) at a benign FPR of: 20% at 1%, 55% at 5%, 80% at 10%, ROC-AUC 0.930." in text
    assert "its FPR lies between" not in text  # a version trained before the interval was recorded
    figures.update(val_benign=222.0, fpr_95_low=0.0246, fpr_95_high=0.0854)
    assert "On new benign apps like the 222 it was set on, its FPR lies between 2.46% and 8.54% (95%)" in \
        model_description("error_mahalanobis", 0.123456789, 0.05, figures)
    # the input's groups are the score's: nr_syscalls, the total, is a syscall count
    assert "476 numeric columns" in text and "289 system-call counts (sc_* and nr_syscalls" in text
    assert "166 permission flags (perm_*" in text and "and 21 metadata counts and sizes (" in text
    assert "nr_syscalls" not in text.split("metadata counts and sizes (")[1].split(")")[0]
    assert "set by hand" in model_description("mse", 1.0, None, {})
    assert "Score (mse): anomaly_score = reconstruction_error" in model_description("mse", 1.0, None, {})
    assert "Score (grouped_error): anomaly_score, the sum over three feature groups" in \
        model_description("grouped_error", 1.0, 0.05, figures)
    # what a version's fitted score adds (ErrorScore.described) follows the general words
    grouped = model_description("grouped_error", 1.0, 0.05, figures, score_detail="Each group's term is capped at 10.")
    assert "is given beside it. Each group's term is capped at 10. Features are preprocessed" in grouped


def test_compare_models(trained, tmp_path):
    metrics, table = compare_models(trained["frames"], trained["error_score"].score_function(trained["model"]),
                                    trained["preprocessor"], seed=0,
                                    plots_dir=tmp_path)
    assert list(table.columns) == ["method", "data_source", "roc_auc", "pr_auc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct",
                                   "tpr_at_fpr_10pct", "n", "n_malware"]
    assert len(table) == len(METHODS) * 3 and set(table["method"]) == set(METHODS)
    assert set(table["data_source"]) == {"all", *schema.DATA_SOURCES}
    for method in METHODS:
        for metric in ("roc_auc", "pr_auc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct", "tpr_at_fpr_10pct"):
            assert 0.0 <= metrics[f"eval_{metric}__{method}"] <= 1.0
            for source in schema.DATA_SOURCES:
                assert f"eval_{metric}__{method}__{source}" in metrics
    assert len(metrics) == len(table) * 5
    assert metrics["eval_roc_auc__random_forest"] > 0.8
    test = trained["frames"]["test"]
    _, direct = trained["error_score"].scores(trained["model"], trained["preprocessor"].transform(test))
    assert metrics["eval_roc_auc__autoencoder"] == pytest.approx(roc_auc_score(test["label"], direct))
    # TPR at 5% FPR read off the ROC curve of the same scores
    fpr, tpr, _ = roc_curve(test["label"], direct, drop_intermediate=False)
    assert metrics["eval_tpr_at_fpr_5pct__autoencoder"] == pytest.approx(tpr[fpr <= 0.05].max())
    for name in COMPARE_PLOTS:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_the_training_report_writes_every_artifact_of_its_table(trained, tmp_path):
    """One step writes every file a training run logs, at the paths the commands that read
    them back use, and nothing else."""
    import json

    from dfp_core.lineage import DatasetSpec, RetrievedDataset
    from dfp_core.ml.evaluation import compare
    from dfp_core.ml.fit import FitResult
    from dfp_core.ml.training_report import ARTIFACTS, COMPARISON, write_training_report
    from dfp_core.serving.preprocess import Preprocessor

    result = FitResult(**{k: v for k, v in trained.items() if k != "frames"})
    spec = DatasetSpec("repo", "c0ffee", "kronodroid.fct_training_dataset", "1", "fv", "d1", {"mode": "random"})
    data = RetrievedDataset(spec, trained["frames"], {"train": "ds-1"}, {"train": "ab"})
    comparison = compare(trained["frames"], result.error_score.score_function(result.model), result.preprocessor)

    paths = write_training_report(tmp_path / "with", result, data, "grouped_error", comparison)
    assert {name: p.relative_to(tmp_path / "with").as_posix() for name, p in paths.items()} == ARTIFACTS
    written = {p.relative_to(tmp_path / "with").as_posix() for p in (tmp_path / "with").rglob("*") if p.is_file()}
    assert written == set(ARTIFACTS.values())  # nothing else, nothing missing
    for path in paths.values():
        if path.suffix == ".png":
            assert path.read_bytes()[:4] == b"\x89PNG", path
    record = json.loads(paths["benign_val_scores"].read_text())
    assert record["score"] == "grouped_error" and record["benign_val_scores"] == result.benign_val_scores.tolist()
    assert set(json.loads(paths["training_profile"].read_text())["features"]) == set(schema.FEATURE_COLUMNS)
    assert json.loads(paths["dataset_spec"].read_text())["spec"]["lakefs_commit"] == "c0ffee"
    assert Preprocessor.load(paths["preprocessor"]).to_dict() == result.preprocessor.to_dict()
    assert pd.read_csv(paths["comparison_table"]).shape == comparison.table.shape

    without = write_training_report(tmp_path / "without", result, data, "grouped_error")
    assert set(without) == set(ARTIFACTS) - set(COMPARISON)
    assert not (tmp_path / "without" / "evaluation").exists()


def test_time_split_evaluation(tmp_path):
    generate(tmp_path / "gen", 1500, seed=4, start_year=2010, end_year=2016)
    valid, _ = read_kronodroid(tmp_path / "gen")
    frame = valid.drop(columns=["sample_year"])  # derived again from sample_date
    metrics, table = time_split_evaluation(frame, 2013, plots_dir=tmp_path / "plots", val_fraction=0.15,
                                           **{**TINY, "max_epochs": 2, "batch_size": 128})
    later = sorted(int(y) for y in valid["sample_year"].dropna().unique() if y > 2013)
    assert later == [2014, 2015, 2016]
    for method in METHODS:
        for metric in ("roc_auc", "pr_auc"):
            for period in (*later, "in_period", "later"):
                assert 0.0 <= metrics[f"drift_{metric}__{method}__{period}"] <= 1.0
    assert not any(k.endswith(("__2013", "__2012")) for k in metrics)
    assert list(table.columns) == ["method", "period", "year", "roc_auc", "pr_auc", "tpr_at_fpr_1pct",
                                   "tpr_at_fpr_5pct", "tpr_at_fpr_10pct", "n", "n_malware"]
    # The autoencoder at its own threshold (5% benign FPR on the training years' validation rows)
    assert metrics["drift_target_fpr"] == 0.05
    for name in ("precision", "recall", "f1", "fpr"):
        assert 0.0 <= metrics[f"drift_{name}__autoencoder__later"] <= 1.0
    assert sorted(table["year"].dropna().unique().tolist()) == later
    per_year = table[table["year"].notna() & (table["method"] == "autoencoder")]
    assert per_year["n"].sum() == metrics["drift_eval_rows"]
    dated = valid["sample_year"].notna()
    assert metrics["drift_train_rows"] + metrics["drift_val_rows"] + metrics["drift_eval_rows"] == dated.sum()
    assert metrics["drift_threshold"] > 0 and metrics["drift_epochs_trained"] >= 1
    for name in DRIFT_PLOTS:
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="unknown training option"):
        time_split_evaluation(frame, 2013, max_epoch=2)


def test_the_scoring_servers_matrix_path_answers_what_predict_answers(logged, trained):
    """`dfp serve` scores a request's matrix without DataFrames (KronodroidScorer.score_matrix);
    its answer is the very one of the pyfunc's predict, sample ids, NaN imputation and all."""
    import mlflow

    from dfp_core.ml.serve_app import ScoringApp, typed_rows

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(logged["uri"])
    try:
        scorer = mlflow.pyfunc.load_model(logged["registered"]).unwrap_python_model()
    finally:
        mlflow.set_tracking_uri(previous)
    features = list(scorer.preprocessor.features)
    test = trained["frames"]["test"].head(40)
    rows = [[sid, *values] for sid, values in zip(test["sample_id"], test[features].astype(float).values.tolist())]
    rows[3][5] = None  # a missing value, imputed
    fast, plain = ScoringApp(scorer, features), ScoringApp(scorer, features)
    plain.by_matrix = False
    assert fast.by_matrix
    answers = [app._predict(*typed_rows(["sample_id", *features], rows, features, "sample_id")) for app in (fast, plain)]
    assert answers[0] == answers[1] and len(answers[0]) == 40
    assert list(answers[0][0]) == ["sample_id", "reconstruction_error", "anomaly_score", "is_anomaly"]
    assert answers[0][0]["sample_id"] == test["sample_id"].iloc[0]
    assert ScoringApp(object(), features).by_matrix is False  # a model without the matrix path


def test_score_calls_the_scorer_itself_only_under_the_signature_it_builds(logged):
    """`dfp score` skips MLflow's per-column schema pass only where it would change nothing: the
    model's signature is model_signature()'s, which as_model_input's frames meet by construction."""
    import mlflow
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Schema

    from dfp_core.ml.scoring import frame_scorer
    from dfp_core.serving.scorer import KronodroidScorer

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(logged["uri"])
    try:
        model = mlflow.pyfunc.load_model(logged["registered"])
    finally:
        mlflow.set_tracking_uri(previous)
    assert isinstance(frame_scorer(model), KronodroidScorer)
    model.metadata.signature = ModelSignature(inputs=Schema([ColSpec(DataType.long, c) for c in schema.FEATURE_COLUMNS]))
    assert frame_scorer(model) is model
    other = object()
    assert frame_scorer(other) is other

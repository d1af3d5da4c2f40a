"""The quickstart's final block: what the data was, and the model's figures beside the baselines'."""

from __future__ import annotations

from dfp_core.kronodroid import generator
from dfp_app.quickstart import data_kind, worth_lines


def test_generated_data_is_named_synthetic_and_real_data_by_its_folder(tmp_path):
    generator.generate(tmp_path / "gen", 8)
    assert data_kind(tmp_path / "gen").startswith("synthetic, KronoDroid-shaped sample from dfp generate")
    (tmp_path / "real").mkdir()
    assert data_kind(tmp_path / "real") == f"KronoDroid data from {tmp_path / 'real'}"


def test_the_figures_read_as_the_readme_table_and_missing_ones_are_left_out():
    metrics = {"test_roc_auc": 0.9712, "test_tpr_at_fpr_1pct": 0.46, "test_tpr_at_fpr_5pct": 0.836,
               "eval_roc_auc__pca": 0.9321, "eval_roc_auc__isolation_forest": 0.9108}
    lines = worth_lines(metrics, "synthetic")
    assert lines[0] == "  data        synthetic"
    assert lines[1] == "  test split  ROC-AUC 0.971; malware caught: 0.46 at 1% benign FPR, 0.84 at 5% benign FPR"
    assert lines[2].startswith("  baselines   ROC-AUC PCA 0.932, IsolationForest 0.911 (")
    assert "RandomForest" not in lines[2]
    assert worth_lines({}, "x") == ["  data        x"]

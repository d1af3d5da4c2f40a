"""`dfp diff`'s pure pieces (dfp_core.ml.data_diff): the keys that differ. The comparisons run in
Spark: tests/integration/test_data_diff_in_spark.py."""

from __future__ import annotations

from dfp_core.ml import data_diff as dd


def test_differing_lists_changed_and_one_sided_keys():
    assert dd.differing({"lr": "0.001", "seed": "1", "resolved_commit": "a"},
                        {"lr": "0.01", "seed": "1", "epochs": "5", "resolved_commit": "b"},
                        ignore=("resolved_commit",)) == {"epochs": [None, "5"], "lr": ["0.001", "0.01"]}

"""`dfp diff`'s pure pieces (dfp_core.ml.data_diff): the keys that differ. The comparisons run in
Spark: tests/integration/test_data_diff_in_spark.py."""

from __future__ import annotations

from dfp_core.ml import data_diff as dd


def test_differing_lists_changed_and_one_sided_keys():
    assert dd.differing({"lr": "0.001", "seed": "1", "resolved_commit": "a"},
                        {"lr": "0.01", "seed": "1", "epochs": "5", "resolved_commit": "b"},
                        ignore=("resolved_commit",)) == {"epochs": [None, "5"], "lr": ["0.001", "0.01"]}


def test_the_verdict_ends_with_what_the_shift_left_out_when_the_definitions_differ():
    summary = {"apps": {k: {"total": n} for k, n in (("added", 0), ("removed", 0), ("kept", 9), ("label_changed", 0),
                                                      ("moved", 0))},
               "families": {"appeared": [], "disappeared": []},
               "train_shift": {"features_shifted": 0, "features": 475, "psi_bound": 0.25}}
    plain = dd.verdict(summary)
    assert plain == ("0 apps added, 0 removed, 9 kept (0 changed label, 0 moved split); families +0/-0; "
                     "0 of 475 training features shifted beyond PSI 0.25")
    note = "the feature columns differ: the shift is on the 475 shared features; only in older: sc_read; only in newer: none"
    assert dd.verdict({**summary, "feature_definitions": {"differ": False, "note": note}}) == f"{plain}; {note}"
    assert dd.verdict({**summary, "feature_definitions": {"differ": False}}) == plain

"""The benchmarks' pure logic: how `bench/run_all.py` reads its targets out of results files,
and how `bench/serving.py`'s stress section builds its cases and counts failures. No figure
is measured or asserted here: the benchmarks never assert."""

from __future__ import annotations

import json

from bench import run_all, serving

MET = {
    "scoring": {"measured_at": "2026-12-07T12:00:00Z", "rows": 200_000,
                "parquet": {"rows_per_s": 17_329.0, "peak_rss_mb": 1081.0},
                "csv": {"rows_per_s": 16_760.0, "peak_rss_mb": 1076.0}},
    "serving": {"measured_at": "2026-12-07T12:30:00Z", "rest_one_row_p50_ms": 2.0, "rest_one_row_p99_ms": 3.2,
                "rest_batch_rows_per_s": 37_899.0, "rest_over_in_process_batch_time": 1.25,
                "concurrent_one_row_p99_ms": 15.1, "concurrent_failed": 0, "stress": {"failures": 0}},
}


def _statuses(results: dict) -> dict[str, str]:
    return {f"{row['file']}.{row['key']}": row["status"] for row in run_all.target_rows(results)}


def test_a_figure_inside_a_section_is_found_by_its_dotted_name():
    assert run_all.figure(MET["scoring"], "parquet.rows_per_s") == 17_329.0
    assert run_all.figure(MET["serving"], "stress.failures") == 0
    assert run_all.figure(MET["scoring"], "peak_rss_mb") is None  # no longer at the top
    assert run_all.figure(MET["scoring"], "rows.anything") is None
    assert run_all.figure({}, "parquet.rows_per_s") is None


def test_scoring_is_judged_per_output_format_on_the_nested_figures():
    statuses = _statuses(MET)
    for fmt in ("parquet", "csv"):
        assert statuses[f"scoring.{fmt}.rows_per_s"] == "met"
        assert statuses[f"scoring.{fmt}.peak_rss_mb"] == "met"
    slow_csv = {**MET, "scoring": {**MET["scoring"], "csv": {"rows_per_s": 14_999.0, "peak_rss_mb": 1537.0}}}
    statuses = _statuses(slow_csv)
    assert statuses["scoring.parquet.rows_per_s"] == "met"
    assert statuses["scoring.csv.rows_per_s"] == "not met"
    assert statuses["scoring.csv.peak_rss_mb"] == "not met"


def test_every_serving_target_of_issue_30_is_read_from_serving_json():
    keys = {row["key"] for row in run_all.target_rows(MET) if row["file"] == "serving"}
    assert keys == {"rest_one_row_p50_ms", "rest_one_row_p99_ms", "rest_batch_rows_per_s",
                    "rest_over_in_process_batch_time", "concurrent_one_row_p99_ms", "concurrent_failed",
                    "stress.failures"}
    assert all(status == "met" for key, status in _statuses(MET).items() if key.startswith("serving."))
    missed = {**MET["serving"], "rest_one_row_p99_ms": 20.5, "rest_over_in_process_batch_time": 2.1,
              "concurrent_failed": 1, "stress": {"failures": 3}}
    statuses = _statuses({**MET, "serving": missed})
    assert {k for k, v in statuses.items() if k.startswith("serving.") and v == "not met"} == {
        "serving.rest_one_row_p99_ms", "serving.rest_over_in_process_batch_time", "serving.concurrent_failed",
        "serving.stress.failures"}


def test_a_target_not_measured_is_a_dash_and_quick_settings_are_flagged():
    rows = run_all.target_rows({"scoring": {"quick_settings": True, "parquet": {"rows_per_s": 20_000.0}}})
    by_key = {(r["file"], r["key"]): r for r in rows}
    assert by_key[("scoring", "parquet.rows_per_s")]["quick"] is True
    assert by_key[("scoring", "csv.rows_per_s")]["status"] == "-"
    assert by_key[("serving", "rest_one_row_p50_ms")]["status"] == "-"


def test_run_all_runs_serving_with_the_kserve_runtime_full_and_quick():
    full, quick = run_all.BENCHMARKS["serving"]
    assert "--mlserver" in full and "--mlserver" in quick
    assert "serving" in run_all.ORDER


def test_the_stress_cases_are_the_issues_bad_inputs_beside_a_normal_request():
    columns, rows = ["f1", "f2", "sample_id"], [[1.0, None, "a"], [2.0, 3.0, "b"]]
    cases = serving.stress_cases(columns, rows, "f1")
    assert set(cases) == set(serving.DFP_SERVE_STATUS)
    assert len(cases["30 MB body"][0]) == 30 << 20
    assert cases["wrong Content-Type"][1] == "text/plain" and cases["no Content-Type"][1] is None
    assert json.loads(cases["missing columns"][0])["dataframe_split"]["columns"] == ["f2", "sample_id"]
    assert json.loads(cases["normal"][0]) == {"dataframe_split": {"columns": columns, "data": rows}}
    assert json.loads(cases["non-numeric value"][0])["dataframe_split"]["data"][0][0] == "twelve"
    assert b"[[NaN, null" in cases["NaN"][0] and b"[[Infinity, null" in cases["Infinity"][0]
    # By design: NaN is a missing value (imputed), an extra column is ignored.
    assert serving.DFP_SERVE_STATUS["NaN"] == serving.DFP_SERVE_STATUS["extra column"] == 200

    request = {"inputs": [{"name": "f1", "datatype": "FP64", "shape": [2, 1], "data": [1.0, 2.0]},
                          {"name": "sample_id", "datatype": "BYTES", "shape": [2, 1], "data": ["a", "b"]}],
               "parameters": {"content_type": "pd"}}
    v2 = serving.v2_stress_cases(request, "f1")
    assert set(v2) == set(cases)
    assert [i["name"] for i in json.loads(v2["missing columns"][0])["inputs"]] == ["sample_id"]
    assert [i["name"] for i in json.loads(v2["extra column"][0])["inputs"]] == ["f1", "sample_id", "not_a_feature"]
    assert json.loads(v2["normal"][0]) == request


def test_only_server_errors_dropped_connections_and_silence_afterwards_are_stress_failures():
    cases = {"30 MB body": {"seen": serving.tally([413, 413])}, "NaN": {"seen": serving.tally([200, 200])},
             "Infinity": {"seen": serving.tally([400, 400])}}
    assert serving.stress_failures(cases, {"normal": 200, "health": 200}) == 0
    cases["malformed JSON"] = {"seen": serving.tally([500, 400, "ConnectionError"])}
    assert serving.tally([500, 400, "ConnectionError", 400]) == {"400": 2, "500": 1, "ConnectionError": 1}
    assert serving.stress_failures(cases, {"normal": 200, "health": 200}) == 2
    assert serving.stress_failures(cases, {"normal": 503, "health": "ReadTimeout"}) == 4


def test_the_weakest_pair_is_chosen_on_validation_figures_alone():
    """`bench/detection.py --variants weakest`: each (cap, weight) pair ranked by its validation
    TPR at 1% FPR, averaged per kind of split over its partitions, then over the kinds; the test
    figures play no part, and the default partition counts like any other."""
    from bench import detection

    def methods(val: dict, test: float) -> dict:
        return {"methods": {detection._weakest_label(cap, weight): {"val_tpr_at_fpr_1pct": val.get((cap, weight), 0.1),
                                                                   "tpr_at_fpr_1pct": test}
                            for cap, weight in detection.WEAKEST}}

    # month favours (10, 3); random, over its two partitions, (8, 2); pooled, (10, 3) wins
    out = {"input": "subset.csv", "seeds": [0],
           "month@9": methods({(10.0, 3.0): 0.8, (8.0, 2.0): 0.5}, test=0.0),
           "month@10": methods({(10.0, 3.0): 0.6, (8.0, 2.0): 0.5}, test=0.0),
           "random": methods({(10.0, 3.0): 0.4, (8.0, 2.0): 0.9}, test=1.0),
           "random@9": methods({(10.0, 3.0): 0.6, (8.0, 2.0): 0.3}, test=1.0)}
    ranked = detection.chosen_on_validation(out, ["month", "random"])
    assert len(ranked) == len(detection.WEAKEST)
    assert [(r["cap"], r["weakest_weight"]) for r in ranked[:2]] == [(10.0, 3.0), (8.0, 2.0)]
    assert ranked[0]["val_tpr_at_fpr_1pct"] == {"month": 0.7, "random": 0.5} and ranked[0]["pooled"] == 0.6
    assert ranked[1]["val_tpr_at_fpr_1pct"] == {"month": 0.5, "random": 0.6} and ranked[1]["pooled"] == 0.55
    assert all(r["pooled"] == 0.1 for r in ranked[2:])

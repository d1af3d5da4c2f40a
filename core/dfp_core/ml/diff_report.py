"""`dfp diff`'s report for a person: ``report.md`` and its PNG plots, from the diff summary.

The plots: the training features that shifted most (PSI), apps per split and label on each side,
malware apps per family on each side, and, for two versions, both versions' scores on the same
test apps. The markdown gives the verdict, the tables behind them and the rest of the summary
(quarantine, lakeFS commits and raw changes, definitions, hyperparameters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dfp_core.ml import plots

REPORT = "report.md"
FAMILIES_SHOWN = 20
COMMITS_SHOWN = 20


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value).replace("|", "\\|")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows), ""]


def _apps_section(summary: Mapping[str, Any], out: Path) -> list[str]:
    apps = summary["apps"]
    counts = apps["by_split_and_label"]
    categories = [f"{s} {label}" for s in ("train", "val", "test") for label in ("benign", "malware")]
    plots.plot_grouped_bars(categories, {side: [counts[side][c.split()[0]][c.split()[1]] for c in categories]
                                         for side in ("older", "newer")},
                            out / "apps_by_split_and_label.png", "Apps per split and label", "apps")
    rows = [[kind, apps[kind]["total"], *apps[kind]["by_split"].values(), *apps[kind]["by_label"].values()]
            for kind in ("added", "removed", "kept")]
    lines = ["## Apps", "", "![apps per split and label](apps_by_split_and_label.png)", "",
             *_table(["apps", "total", "train", "val", "test", "benign", "malware"], rows)]
    for kind, by in (("label_changed", "by_change"), ("moved", "by_move")):
        change = apps[kind]
        detail = ", ".join(f"{k}: {v}" for k, v in change[by].items()) or "none"
        examples = f" (for example {', '.join(change['examples'])})" if change["examples"] else ""
        lines.append(f"- {kind.replace('_', ' ')}: {change['total']} ({detail}){examples}")
    return [*lines, ""]


def _families_section(summary: Mapping[str, Any], out: Path) -> list[str]:
    families = summary["families"]
    shown = list(families["counts"].items())[:FAMILIES_SHOWN]
    plots.plot_grouped_bars([f for f, _ in shown], {"older": [c[0] for _, c in shown], "newer": [c[1] for _, c in shown]},
                            out / "families.png", f"Malware apps per family (the {len(shown)} largest)", "apps",
                            horizontal=True)
    return ["## Malware families", "", "![malware apps per family](families.png)", "",
            f"- appeared: {', '.join(families['appeared']) or 'none'}",
            f"- disappeared: {', '.join(families['disappeared']) or 'none'}", ""]


def _features_section(summary: Mapping[str, Any], out: Path) -> list[str]:
    shift = summary["train_shift"]
    top = shift["top_features"]
    plots.plot_grouped_bars([f["feature"] for f in top], {"PSI": [f["psi"] for f in top]}, out / "feature_shift.png",
                            f"Training features, newer against older (PSI; shifted above {shift['psi_bound']:g})",
                            "PSI", horizontal=True)
    rows = [[f["feature"], f["group"], f["psi"], f["ks"], f["train_mean"], f["input_mean"]] for f in top]
    lines = ["## Training split: features that shifted", "",
             f"{shift['features_shifted']} of {shift['features']} features above PSI {shift['psi_bound']:g}.", "",
             "![feature shift](feature_shift.png)", "",
             *_table(["feature", "group", "PSI", "KS", "older mean", "newer mean"], rows)]
    for side in ("older", "newer"):
        only = shift[f"only_in_{side}"]
        if only:
            lines.append(f"Only in the {side} data (not compared): {', '.join(only)}")
    return [*lines, ""]


def _scores_section(summary: Mapping[str, Any], scores: Mapping[str, np.ndarray], thresholds: Mapping[str, float],
                    out: Path) -> list[str]:
    figures = summary["scores"]
    plots.plot_score_distributions(scores, thresholds, out / "scores.png",
                                   f"Both versions on the same {figures['apps']} test apps")
    rows = [[side, figures[side]["threshold"], figures[side]["flagged_share"], figures[side]["p50"],
             figures[side]["p90"], figures[side]["p99"]] for side in ("older", "newer")]
    return ["## Scores on the same test apps", "", "![scores](scores.png)", "",
            *_table(["version", "threshold", "flagged share", "p50", "p90", "p99"], rows)]


def _rest(summary: Mapping[str, Any]) -> list[str]:
    lines = ["## Quarantine, lakeFS and definitions", ""]
    reasons = sorted(set(summary["quarantine"]["older"] or {}) | set(summary["quarantine"]["newer"] or {}))
    lines += _table(["quarantine reason", "older", "newer"],
                    [[r, (summary["quarantine"]["older"] or {}).get(r, 0), (summary["quarantine"]["newer"] or {}).get(r, 0)]
                     for r in reasons]) if reasons else ["No quarantined rows on either side (or no transform run behind them).", ""]
    history = summary["lakefs"]
    if not history["same_repository"]:
        lines += ["The two sides are in different lakeFS repositories: no commits or raw changes between them.", ""]
    else:
        commits = history["commits"]
        lines += [f"{len(commits)} lakeFS commit(s) from the older side to the newer:", "",
                  *_table(["commit", "run", "message"], [[c["id"][:12], c["run_id"], c["message"]]
                                                          for c in commits[:COMMITS_SHOWN]])]
        if history.get("truncated"):
            lines += ["(lakeFS listed more than the summary keeps: the lists above and below are cut short.)", ""]
        changes = history["raw_changes"]
        lines += [f"{len(changes)} raw object(s) changed:", "",
                  *_table(["object", "change"], [[c["path"], c["type"]] for c in changes[:COMMITS_SHOWN]])]
    definitions = summary["feature_definitions"]
    lines.append(f"- feature definitions (`feast.defs_sha256`): {'differ' if definitions['differ'] else 'the same'}")
    if definitions.get("note"):
        lines.append(f"- {definitions['note']}")
    if (summary.get("scores") or {}).get("not_compared"):
        lines.append(f"- scores on the same test apps: not compared, {summary['scores']['not_compared']}")
    if summary["hyperparameters"] is not None:
        changed = ", ".join(f"{k}: {v[0]} -> {v[1]}" for k, v in summary["hyperparameters"].items()) or "none"
        lines.append(f"- hyperparameters that differ: {changed}")
    return [*lines, ""]


def write_report(summary: Mapping[str, Any], out: Path, scores: Mapping[str, np.ndarray] | None = None,
                 thresholds: Mapping[str, float] | None = None) -> Path:
    """``out``/report.md and its plots; ``scores``: each version's scores on the same test apps."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Data diff: {summary['older']['data']} -> {summary['newer']['data']}", "", summary["verdict"], "",
             *_table(["", "commit", "Iceberg snapshot", "train", "val", "test"],
                     [[side, summary[side]["commit"][:12], summary[side]["iceberg_snapshot_id"],
                       *summary[side]["rows"].values()] for side in ("older", "newer")]),
             *_apps_section(summary, out), *_families_section(summary, out), *_features_section(summary, out)]
    if scores and summary.get("scores"):
        lines += _scores_section(summary, scores, thresholds or {}, out)
    lines += _rest(summary)
    path = out / REPORT
    path.write_text("\n".join(lines))
    return path

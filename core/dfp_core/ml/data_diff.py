"""What changed between two datasets' train/val/test splits (`dfp diff`'s comparisons, no I/O).

Apps are matched by ``sample_id`` (sha256 and data source). An app in the newer data only was
added, in the older only removed, in both kept; a kept app whose label or split differs changed
label or moved. Counts are given per split (the split it is in: the newer data's for added and
kept apps, the older's for removed ones) and per label. The training split's features are
compared as `dfp drift` compares a batch with a version's training: the older train split's
profile, the newer one counted into its bins.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from dfp_core.errors import DatasetError
from dfp_core.ml.feature_drift import BatchCounts, feature_shift, training_profile
from dfp_core.params import PSI_BOUND

SPLITS = ("train", "val", "test")
KEY = "sample_id"
FAMILY = "malware_family"
SHOWN_IDS = 5  # example sample ids per kind of change


def apps(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per app of the splits: ``sample_id`` (index), ``split``, ``label``, ``family``."""
    parts = []
    for split in SPLITS:
        frame = frames.get(split)
        if frame is None:
            raise DatasetError(f"the data has no {split} split")
        missing = [c for c in (KEY, "label") if c not in frame.columns]
        if missing:
            raise DatasetError(f"the {split} split lacks column(s): {', '.join(missing)}")
        family = frame[FAMILY] if FAMILY in frame.columns else pd.Series(None, index=frame.index, dtype=object)
        parts.append(pd.DataFrame({KEY: frame[KEY].astype(str).to_numpy(), "split": split,
                                   "label": frame["label"].astype(int).to_numpy(),
                                   "family": family.fillna("").astype(str).to_numpy()}))
    table = pd.concat(parts, ignore_index=True)
    repeated = table[KEY][table[KEY].duplicated()]
    if len(repeated):
        raise DatasetError(f"sample_id {repeated.iloc[0]} is in the splits more than once")
    return table.set_index(KEY)


def _counted(table: pd.DataFrame) -> dict[str, Any]:
    return {"total": int(len(table)),
            "by_split": {s: int((table["split"] == s).sum()) for s in SPLITS},
            "by_label": {"benign": int((table["label"] == 0).sum()), "malware": int((table["label"] == 1).sum())}}


def _changes(before: pd.Series, after: pd.Series, name: str) -> dict[str, Any]:
    changed = before != after
    moves = (before[changed].astype(str) + "->" + after[changed].astype(str)).value_counts()
    return {"total": int(changed.sum()), f"by_{name}": {k: int(v) for k, v in sorted(moves.items())},
            "examples": sorted(before.index[changed])[:SHOWN_IDS]}


def membership(older: pd.DataFrame, newer: pd.DataFrame) -> dict[str, Any]:
    """Apps added, removed and kept; kept apps whose label changed or that moved between splits
    (``apps`` tables)."""
    added = newer.loc[newer.index.difference(older.index)]
    removed = older.loc[older.index.difference(newer.index)]
    kept = newer.index.intersection(older.index)
    return {
        "added": _counted(added), "removed": _counted(removed), "kept": _counted(newer.loc[kept]),
        "label_changed": _changes(older.loc[kept, "label"], newer.loc[kept, "label"], "change"),
        "moved": _changes(older.loc[kept, "split"], newer.loc[kept, "split"], "move"),
    }


def split_label_counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Apps per split and label of an ``apps`` table."""
    return {s: {"benign": int(((table["split"] == s) & (table["label"] == 0)).sum()),
                "malware": int(((table["split"] == s) & (table["label"] == 1)).sum())} for s in SPLITS}


def families(older: pd.DataFrame, newer: pd.DataFrame) -> dict[str, Any]:
    """Malware families present in one side only, and every family's malware apps on each side
    as [older, newer], the most frequent first."""
    def counts(table: pd.DataFrame) -> pd.Series:
        return table.loc[(table["label"] == 1) & (table["family"] != ""), "family"].value_counts()

    a, b = counts(older), counts(newer)
    both = pd.concat([a.rename("older"), b.rename("newer")], axis=1).fillna(0).astype(int)
    both = both.assign(total=both.sum(axis=1)).sort_values(["total"], ascending=False, kind="stable")
    return {"appeared": sorted(set(b.index) - set(a.index)), "disappeared": sorted(set(a.index) - set(b.index)),
            "counts": {str(f): [int(r.older), int(r.newer)] for f, r in both.iterrows()}}


def train_shift(older_train: pd.DataFrame, newer_train: pd.DataFrame, features: Sequence[str],
                psi_bound: float = PSI_BOUND, top: int = 10) -> dict[str, Any]:
    """Every shared feature's PSI and binned KS, newer train split against the older one's
    profile, the largest first; the features only one side has are listed."""
    shared = [f for f in features if f in older_train.columns and f in newer_train.columns]
    if not shared:
        raise DatasetError("the two train splits share no feature column")
    profile = training_profile(older_train, shared)
    counts = BatchCounts(profile)
    counts.add(newer_train)
    shifts = feature_shift(profile, counts)
    shifted = [s for s in shifts if s["psi"] > psi_bound]
    return {"features": len(shifts), "features_shifted": len(shifted), "psi_bound": psi_bound,
            "top_features": shifts[:top],
            "only_in_older": sorted(c for c in features if c in older_train.columns and c not in newer_train.columns),
            "only_in_newer": sorted(c for c in features if c in newer_train.columns and c not in older_train.columns)}


def differing(older: Mapping[str, str], newer: Mapping[str, str], ignore: Sequence[str] = ()) -> dict[str, list]:
    """Keys whose values differ (absent: None), as [older, newer]."""
    keys = sorted((set(older) | set(newer)) - set(ignore))
    return {k: [older.get(k), newer.get(k)] for k in keys if older.get(k) != newer.get(k)}


def verdict(summary: Mapping[str, Any]) -> str:
    """One line a person reads first."""
    m = summary["apps"]
    shift = summary["train_shift"]
    return (f"{m['added']['total']} apps added, {m['removed']['total']} removed, {m['kept']['total']} kept "
            f"({m['label_changed']['total']} changed label, {m['moved']['total']} moved split); "
            f"families +{len(summary['families']['appeared'])}/-{len(summary['families']['disappeared'])}; "
            f"{shift['features_shifted']} of {shift['features']} training features shifted beyond PSI {shift['psi_bound']:g}")


def compare(older_frames: Mapping[str, pd.DataFrame], newer_frames: Mapping[str, pd.DataFrame],
            features: Sequence[str], psi_bound: float = PSI_BOUND, top: int = 10) -> dict[str, Any]:
    """The data part of the diff: apps, families, the training split's shift."""
    older, newer = apps(older_frames), apps(newer_frames)
    summary = {"apps": membership(older, newer),
               "families": families(older, newer),
               "train_shift": train_shift(older_frames["train"], newer_frames["train"], features, psi_bound, top)}
    summary["apps"]["rows"] = {"older": int(len(older)), "newer": int(len(newer))}
    summary["apps"]["by_split_and_label"] = {"older": split_label_counts(older), "newer": split_label_counts(newer)}
    return summary

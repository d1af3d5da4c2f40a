"""The unified KronoDroid schema: raw column names -> stable snake_case names,
which columns are model features, which are required, and the known archives.

Used by the Spark transform (validation, renaming), the generator, the Feast
feature definitions and the trainer, so they can never disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from dfp_core.kronodroid.columns import PERMISSIONS, SYSCALLS

EMULATOR = "emulator"
REAL_DEVICE = "real_device"
DATA_SOURCES = (EMULATOR, REAL_DEVICE)

STATIC_AGGREGATES = ("nr_permissions", "normal", "dangerous", "signature", "custom_yes", "nr_custom", "total_perm")
APK_METADATA = (
    "CFileSize", "UFileSize", "FilesInsideAPK", "TimesSubmitted", "NrContactedIps", "Activities",
    "NrIntServices", "NrIntServicesActions", "NrIntActivities", "NrIntActivitiesActions",
    "NrIntReceivers", "NrIntReceiversActions", "TotalIntentFilters", "NrServices",
)
# Columns present in only some archives: null where absent.
OPTIONAL_FEATURES = ("FilesInsideAPK",)
# VirusTotal outcomes: they encode the label, so they never become features.
LABEL_LEAKS = ("Scanners", "Detection_Ratio")

LABEL = "Malware"
SHA256 = "sha256"
PACKAGE = "Package"
FAMILY = "MalFamily"

# Date columns differ per archive; both pairs map onto one unified pair.
DATE_COLUMNS = {
    "FirstModDate": "earliest_mod_date",   # emulator archives
    "LastModDate": "latest_mod_date",
    "EarliestModDate": "earliest_mod_date",  # real-device archives
    "HighestModDate": "latest_mod_date",
    "Highest-date": "latest_mod_date",      # the single-CSV subset format
}
# "Unknown date" marker used by KronoDroid.
SENTINEL_DATE = "1980-01-01"
# Known extra columns of the subset format: kept in staging, not features.
KNOWN_EXTRAS = ("Categories", "year_month", "Year")


def _snake(name: str) -> str:
    name = re.sub(r"[^0-9A-Za-z]+", "_", name)
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    name = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return re.sub(r"_+", "_", name).strip("_").lower()


def canonical_name(raw: str) -> str:
    """Stable snake_case name for a raw column. Syscalls and permissions get a
    prefix because they collide otherwise (syscall ``reboot`` vs ``REBOOT``)."""
    if raw in _SYSCALL_SET:
        return "sc_" + _snake(raw)
    if raw in _PERMISSION_SET:
        return "perm_" + _snake(raw)
    special = {
        LABEL: "label", SHA256: "sha256", PACKAGE: "package_name", FAMILY: "malware_family",
        "CFileSize": "c_file_size", "UFileSize": "u_file_size", "FilesInsideAPK": "files_inside_apk",
        "NrContactedIps": "nr_contacted_ips", "Detection_Ratio": "detection_ratio",
    }
    if raw in special:
        return special[raw]
    if raw in DATE_COLUMNS:
        return DATE_COLUMNS[raw]
    return _snake(raw)


_SYSCALL_SET = frozenset(SYSCALLS)
_PERMISSION_SET = frozenset(PERMISSIONS)

# Raw feature columns in archive order, and their canonical names.
RAW_FEATURES: tuple[str, ...] = (*SYSCALLS, "nr_syscalls", *PERMISSIONS, *STATIC_AGGREGATES, *APK_METADATA)
FEATURE_COLUMNS: tuple[str, ...] = tuple(canonical_name(c) for c in RAW_FEATURES)
RAW_TO_CANONICAL = {c: canonical_name(c) for c in (*RAW_FEATURES, LABEL, SHA256, PACKAGE, FAMILY, *LABEL_LEAKS, *DATE_COLUMNS, *KNOWN_EXTRAS)}
PERMISSION_FEATURES = tuple(canonical_name(p) for p in PERMISSIONS)
SYSCALL_FEATURES = tuple(canonical_name(s) for s in (*SYSCALLS, "nr_syscalls"))
METADATA_FEATURES = tuple(canonical_name(c) for c in (*STATIC_AGGREGATES, *APK_METADATA))
# The three kinds of feature (binary permission flags, syscall counts, APK metadata and
# permission aggregates), in feature order: for scores that weigh each kind apart.
FEATURE_GROUPS = {"permissions": PERMISSION_FEATURES, "syscalls": SYSCALL_FEATURES, "metadata": METADATA_FEATURES}
GROUP_OF = {feature: group for group, features in FEATURE_GROUPS.items() for feature in features}

# Every input must have these; anything else known is optional.
REQUIRED_RAW = (LABEL, SHA256, *(c for c in RAW_FEATURES if c not in OPTIONAL_FEATURES))
KNOWN_RAW = frozenset(RAW_TO_CANONICAL)

assert len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS), "canonical feature names collide"
assert sorted(sum(FEATURE_GROUPS.values(), ())) == sorted(FEATURE_COLUMNS), "the feature groups partition the features"

# Columns of kronodroid.fct_training_dataset, besides the features.
FCT_KEY_COLUMNS = (
    "sample_id", "sha256", "data_source", "label", "malware_family", "package_name",
    "sample_date", "sample_year", "event_timestamp", "dataset_split",
)
# The evaluation view's fields (not fed to the model).
EVAL_COLUMNS = ("label", "malware_family", "data_source", "dataset_split", "sample_year")


@dataclass(frozen=True)
class ArchiveSpec:
    """What a known input file is: its data source and the label its rows carry."""

    data_source: str
    expected_label: int | None  # None: mixed labels (the subset CSV format)


KNOWN_ARCHIVES = {
    "emu_legitimate_v1.zip": ArchiveSpec(EMULATOR, 0),
    "emu_malware_v1.zip": ArchiveSpec(EMULATOR, 1),
    "real_legitimate_v1.zip": ArchiveSpec(REAL_DEVICE, 0),
    "real_malware_v1.zip": ArchiveSpec(REAL_DEVICE, 1),
}


def classify_input(path: PurePath) -> ArchiveSpec | None:
    """The spec of an input file by its name, or None when it is not ours to read.

    Zip archives must be one of the four KronoDroid archives. A plain CSV is
    accepted when its name or folder says which device it came from
    (``emulator``/``emu_`` or ``real_device``/``real_``).
    """
    name = path.name.lower()
    if name in KNOWN_ARCHIVES:
        return KNOWN_ARCHIVES[name]
    if name.endswith(".csv"):
        hint = "/".join(p.lower() for p in path.parts[-2:])
        if re.search(r"(^|[/_])real(_device)?([/_.]|$)", hint):
            return ArchiveSpec(REAL_DEVICE, None)
        if re.search(r"(^|[/_])emu(lator)?([/_.]|$)", hint):
            return ArchiveSpec(EMULATOR, None)
    return None

# Iceberg tables the transform writes (namespace, name).
STG_NAMESPACE = "stg_kronodroid"
MART_NAMESPACE = "kronodroid"
STAGING_TABLES = {EMULATOR: "emulator_samples", REAL_DEVICE: "real_device_samples"}
QUARANTINE_TABLE = "quarantine"
FCT_TABLE = "fct_training_dataset"
DIM_FAMILIES_TABLE = "dim_malware_families"
FCT_TABLE_FQN = f"{MART_NAMESPACE}.{FCT_TABLE}"
# Beside the tables on the ref, the transform's summary (counts, snapshot ids, inputs' hashes).
TRANSFORM_SUMMARY_PATH = "_dfp/transform_summary.json"

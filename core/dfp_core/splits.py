"""Sample ids and the deterministic train/val/test assignment.

Defined once here. The Spark job evaluates the same definition as a SQL
expression (``spark_*_sql``); a test checks the two agree row for row.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from dfp_core.errors import ConfigError

SPLITS = ("train", "val", "test")
UNDATED = "undated"  # time mode: rows without a date are in no split
_BUCKETS = 2**32


def sample_id(sha256: str, data_source: str) -> str:
    """One id per app per data source (the same APK can occur in both sources)."""
    return f"{data_source}:{sha256.strip().lower()}"


def spark_sample_id_sql(sha256_col: str = "sha256", source_col: str = "data_source") -> str:
    return f"concat({source_col}, ':', lower(trim({sha256_col})))"


def arrow_sample_id(sha256, data_source):
    """``sample_id`` over pyarrow string arrays (the scorer's reader builds its frames in Arrow)."""
    # Deferred (pyarrow): only the vectorised split of an Arrow column needs it.
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(data_source, pc.utf8_lower(pc.utf8_trim_whitespace(sha256)), ":")


@dataclass(frozen=True)
class SplitSpec:
    """How rows are assigned to splits; part of every dataset id."""

    mode: str = "random"  # "random": hash of sample_id and seed; "time": by sample date
    seed: int = 42
    train_ratio: float = 0.7
    val_ratio: float = 0.15
    test_ratio: float = 0.15
    train_end_year: int | None = None  # time mode: dates up to the end of this year (or month) are train
    val_end_year: int | None = None  # time mode: later dates up to the end of this year (or month) are val
    # Time mode, optional: the cut-offs' months (1-12); unset is the year's end. A month split
    # serves data of one year, such as the real 2019 subset.
    train_end_month: int | None = None
    val_end_month: int | None = None

    def __post_init__(self):
        if self.mode not in ("random", "time"):
            raise ConfigError(f"split mode must be 'random' or 'time', got {self.mode!r}")
        if self.mode == "random":
            ratios = (self.train_ratio, self.val_ratio, self.test_ratio)
            if any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-9:
                raise ConfigError(f"split ratios must be >= 0 and sum to 1, got {ratios}")
            return
        if self.train_end_year is None or self.val_end_year is None:
            raise ConfigError("time split needs train_end_year and val_end_year")
        for name in ("train_end_month", "val_end_month"):
            month = getattr(self, name)
            if month is not None and not 1 <= month <= 12:
                raise ConfigError(f"{name} must be a month from 1 to 12, got {month}")
        if self.val_end_key < self.train_end_key:
            raise ConfigError("the val cut-off (val_end_year, val_end_month) must not come before the train "
                              "cut-off (train_end_year, train_end_month)")

    @property
    def train_end_key(self) -> int:
        """Time mode: the last train month as year * 100 + month."""
        return _month_key(self.train_end_year, self.train_end_month)

    @property
    def val_end_key(self) -> int:
        return _month_key(self.val_end_year, self.val_end_month)

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.mode == "random":
            for key in ("train_end_year", "val_end_year", "train_end_month", "val_end_month"):
                data.pop(key)
        else:
            for key in ("seed", "train_ratio", "val_ratio", "test_ratio"):
                data.pop(key)
            for key in ("train_end_month", "val_end_month"):  # unset: the spec (and dataset ids) of a year split
                if data[key] is None:
                    data.pop(key)
        return data


def _month_key(year: int, month: int | None) -> int:
    return int(year) * 100 + (12 if month is None else int(month))


def split_bucket(sample_id_value: str, seed: int) -> int:
    """Uniform integer in [0, 2**32) from the first 8 hex digits of a SHA-256."""
    return int(hashlib.sha256(f"{seed}:{sample_id_value}".encode()).hexdigest()[:8], 16)


def _thresholds(spec: SplitSpec) -> tuple[int, int]:
    train_end = int(round(spec.train_ratio * _BUCKETS))
    val_end = int(round((spec.train_ratio + spec.val_ratio) * _BUCKETS))
    return train_end, val_end


def assign_split(sample_id_value: str, spec: SplitSpec, year: int | None = None, month: int | None = None) -> str:
    """The split of one row; time mode needs its sample date's year, and its month where the
    spec cuts by month."""
    if spec.mode == "time":
        if year is None:
            return UNDATED
        if spec.train_end_month is None and spec.val_end_month is None:
            key = _month_key(year, None)
        elif month is None:
            raise ValueError("a split by month needs each row's month")
        else:
            key = _month_key(year, month)
        if key <= spec.train_end_key:
            return "train"
        return "val" if key <= spec.val_end_key else "test"
    bucket = split_bucket(sample_id_value, spec.seed)
    train_end, val_end = _thresholds(spec)
    if bucket < train_end:
        return "train"
    return "val" if bucket < val_end else "test"


def spark_split_sql(spec: SplitSpec, sample_id_col: str = "sample_id", year_col: str = "sample_year",
                    date_col: str = "sample_date") -> str:
    """The same assignment as ``assign_split``, as a Spark SQL expression."""
    if spec.mode == "time":
        if spec.train_end_month is None and spec.val_end_month is None:
            return (
                f"CASE WHEN {year_col} IS NULL THEN '{UNDATED}' "
                f"WHEN {year_col} <= {int(spec.train_end_year)} THEN 'train' "
                f"WHEN {year_col} <= {int(spec.val_end_year)} THEN 'val' ELSE 'test' END"
            )
        key = f"({year_col} * 100 + month({date_col}))"
        return (
            f"CASE WHEN {year_col} IS NULL THEN '{UNDATED}' "
            f"WHEN {key} <= {spec.train_end_key} THEN 'train' "
            f"WHEN {key} <= {spec.val_end_key} THEN 'val' ELSE 'test' END"
        )
    train_end, val_end = _thresholds(spec)
    bucket = (
        f"CAST(conv(substring(sha2(concat('{int(spec.seed)}', ':', {sample_id_col}), 256), 1, 8), 16, 10) AS BIGINT)"
    )
    return f"CASE WHEN {bucket} < {train_end} THEN 'train' WHEN {bucket} < {val_end} THEN 'val' ELSE 'test' END"

"""Errors the CLI reports as one clear line instead of a traceback."""

from __future__ import annotations

from typing import Sequence


def listed(names: Sequence[str], shown: int = 10) -> str:
    """Names for a one-line message: the first ``shown``, then how many there are in all."""
    return ", ".join(names[:shown]) + (f" ... ({len(names)} in all)" if len(names) > shown else "")


class DfpError(Exception):
    """A failure with a message meant for the user (what is wrong, what to do)."""


class ConfigError(DfpError):
    """Settings are missing or invalid."""


class StackError(DfpError):
    """The local stack cannot be started, stopped or inspected."""


class LakeFSError(DfpError):
    """A lakeFS operation failed."""


class RefNotFoundError(LakeFSError):
    """A repository, branch, tag or commit does not exist."""


class ReadOnlyRefError(LakeFSError):
    """A write was attempted on a ref that is not a branch."""


class InputDataError(DfpError):
    """Raw input files are unusable (missing columns, unknown archive, ...)."""


class DatasetError(DfpError):
    """A table, view or split does not have what training needs."""


class TrackingError(DfpError):
    """MLflow tracking or registry failed."""

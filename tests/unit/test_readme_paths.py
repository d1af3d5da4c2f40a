"""Every source file README.md names exists, so a move or a rename cannot leave it behind."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# A path in backquotes ending in a source or config suffix: `dfp_spark/transform_run.py`.
NAMED_FILE = re.compile(r"`([\w./-]+/[\w.-]+\.(?:py|sh|yaml|toml|Dockerfile))`")


def _named_files(text: str) -> set[str]:
    return {m.group(1) for m in NAMED_FILE.finditer(text) if not m.group(1).startswith(("/", "$", "."))}


def _exists(path: str) -> bool:
    """Named from the repository root, or from a package folder (`dfp_core/...`)."""
    if (REPO_ROOT / path).exists():
        return True
    return any(p.is_file() for p in REPO_ROOT.glob(f"*/**/{path}") if ".venv" not in p.parts)


def test_the_files_readme_names_exist():
    named = _named_files((REPO_ROOT / "README.md").read_text())
    assert len(named) > 10  # the pattern still finds the README's paths
    assert sorted(p for p in named if not _exists(p)) == []


def test_a_stale_path_would_be_found():
    assert _named_files("see `dfp_spark/run.py` and `core/dfp_core/cli.py`") == {"dfp_spark/run.py", "core/dfp_core/cli.py"}
    assert not _exists("dfp_spark/run.py") and _exists("dfp_core/cli.py")

"""Every source file, document and `dfp` command that README.md and docs/ name exists, so a
move, a rename or a dropped command cannot leave the documentation behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# A path in backquotes ending in a source or config suffix: `dfp_spark/transform_run.py`.
NAMED_FILE = re.compile(r"`([\w./-]+/[\w.-]+\.(?:py|sh|yaml|toml|md))`")  # not .json: artifact names
# A relative Markdown link: [text](docs/stack.md#anchor).
LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)#\s]+)(?:#[^)]*)?\)")
# `dfp <command> [<subcommand>]` in backquotes, or at the start of a line in a code block.
DFP_COMMAND = re.compile(r"(?:`|^(?:\.venv/bin/)?)dfp ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", re.M)


def _named_files(text: str) -> set[str]:
    return {m.group(1) for m in NAMED_FILE.finditer(text) if not m.group(1).startswith(("/", "$", "."))
            and "<" not in m.group(1)}


def _exists(path: str) -> bool:
    """Named from the repository root, or from a package folder (`dfp_core/...`)."""
    if (REPO_ROOT / path).exists():
        return True
    return any(p.is_file() for p in REPO_ROOT.glob(f"*/**/{path}") if ".venv" not in p.parts)


def _commands() -> dict[str, set[str]]:
    """The CLI's commands, each with its subcommands (empty for a leaf command)."""
    from dfp_app.cli import app

    root = typer.main.get_command(app)
    return {name: set(getattr(cmd, "commands", {}) or {}) for name, cmd in root.commands.items()}


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_the_files_a_document_names_exist(doc):
    missing = sorted(p for p in _named_files(doc.read_text()) if not _exists(p))
    assert missing == [], f"{doc.name} names files that do not exist"


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_the_links_of_a_document_lead_somewhere(doc):
    broken = sorted(target for target in LINK.findall(doc.read_text()) if not (doc.parent / target).exists())
    assert broken == [], f"{doc.name} links to missing files"


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_the_dfp_commands_a_document_names_exist(doc):
    commands = _commands()
    wrong = []
    for command, sub in DFP_COMMAND.findall(doc.read_text()):
        if command not in commands:
            wrong.append(command)
        elif commands[command] and sub and sub not in commands[command]:
            wrong.append(f"{command} {sub}")
    assert wrong == [], f"{doc.name} names dfp commands that do not exist"


def test_the_checks_find_what_they_look_for():
    assert _named_files("see `dfp_spark/run.py` and `apps/dfp_app/cli.py`") == {"dfp_spark/run.py", "apps/dfp_app/cli.py"}
    assert not _exists("dfp_spark/run.py") and _exists("apps/dfp_app/cli.py") and _exists("dfp_app/cli.py")
    assert LINK.findall("[a](docs/x.md#y) [b](https://e.org) [c](#z)") == ["docs/x.md"]
    assert DFP_COMMAND.findall("`dfp runs gc --older-than 1h` and\ndfp stack up") == [("runs", "gc"), ("stack", "up")]
    assert {"runs", "stack", "pipeline", "cluster"} <= set(_commands()) and "gc" in _commands()["runs"]
    assert len(DOCUMENTS) > 5

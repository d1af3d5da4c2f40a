"""The splits-reader entry points (dfp_feast.plugin): Feast imported without typeguard's
import-time instrumentation, in a process of its own (this one has imported Feast already)."""

from __future__ import annotations

import json
import subprocess
import sys

# typeguard's instrumented functions call its checkers: their names are in the code object.
PROBE = """
import json, sys
from dfp_feast import plugin
from dfp_feast import retrieval as before
assert "feast" in sys.modules  # the module is imported already here: checks stay on
import typeguard
checked = "check_argument_types_internal" in __import__("feast").FeatureView.__init__.__code__.co_names
print(json.dumps({"checked": checked, "decorator_restored": typeguard.typechecked is __import__("typeguard._decorators")._decorators.typechecked}))
"""
FRESH = """
import json
from dfp_feast import plugin
import typeguard
loaded = plugin._retrieval("load_splits")
import feast
from dfp_feast import retrieval
print(json.dumps({
    "checked": "check_argument_types_internal" in feast.FeatureView.__init__.__code__.co_names,
    "decorator_restored": typeguard.typechecked is __import__("typeguard._decorators")._decorators.typechecked,
    "same_function": loaded is retrieval.load_splits,
    "split_rows": plugin._retrieval("split_rows") is retrieval.split_rows,
}))
"""


def _run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_entry_points_load_feast_without_its_import_time_type_checks_and_restore_typeguard():
    seen = _run(FRESH)
    assert seen == {"checked": False, "decorator_restored": True, "same_function": True, "split_rows": True}


def test_feast_imported_as_it_ships_keeps_its_checks():
    """What the tests and `dfp feast apply` import: the decorator as Feast ships it."""
    assert _run(PROBE) == {"checked": True, "decorator_restored": True}

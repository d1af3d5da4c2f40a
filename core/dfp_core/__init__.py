"""Shared pure logic and service helpers for the KronoDroid data plane.

Import submodules explicitly (``from dfp_core import splits``); this package
keeps its top level free of heavy imports so the CLI starts fast.
"""

__version__ = "0.1.0"

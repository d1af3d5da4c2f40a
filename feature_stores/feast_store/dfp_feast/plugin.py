"""The entry points ``Runtime`` loads to serve the splits (``dfp.splits_reader``,
``dfp.split_rows``): ``retrieval``'s functions, imported with Feast's run-time type checks
left out.

Feast decorates its classes with typeguard's ``@typechecked``, which parses and compiles
each decorated class's module source again when Feast is imported (agronholm/typeguard#468):
2.6 of the 5.3 s that ``import feast`` takes on 2 cores, in every process that reads splits.
These processes build the definitions in ``kronodroid_features``, which the tests and
``dfp feast apply`` build with the checks on; so here they buy nothing but start-up time.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator


def _unchecked(target: Any = None, **_options: Any) -> Any:
    """``typechecked``'s signature (bare, or called with options), returning the target as is."""
    return (lambda decorated: decorated) if target is None else target


@contextlib.contextmanager
def _feast_type_checks_off() -> Iterator[None]:
    """While Feast's modules are first imported, ``typeguard.typechecked`` leaves what it
    decorates as is; restored after, for any other user of typeguard. A Feast already
    imported in this process keeps its checks."""
    # Deferred: typeguard is Feast's dependency, needed only where Feast is about to load.
    import typeguard

    if "feast" in sys.modules:
        yield
        return
    decorator = typeguard.typechecked
    typeguard.typechecked = _unchecked
    try:
        yield
    finally:
        typeguard.typechecked = decorator


def _retrieval(name: str) -> Callable[..., Any]:
    with _feast_type_checks_off():
        # Deferred (Feast, pandas): imported under the context above, on the first call.
        from dfp_feast import retrieval
    return getattr(retrieval, name)


def load_splits(*args: Any, **kwargs: Any):
    """``retrieval.load_splits`` (the entry point ``dfp.splits_reader``)."""
    return _retrieval("load_splits")(*args, **kwargs)


def split_rows(*args: Any, **kwargs: Any):
    """``retrieval.split_rows`` (the entry point ``dfp.split_rows``)."""
    return _retrieval("split_rows")(*args, **kwargs)

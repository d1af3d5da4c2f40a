"""What a use case returns: a typed summary, which an entry point prints as the JSON line."""

from __future__ import annotations

import dataclasses
from typing import Any


class Summary:
    """Mixed into the use cases' summaries (dataclasses): ``to_json`` is the JSON line's fields,
    every field by its name."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

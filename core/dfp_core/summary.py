"""What a use case returns: a typed summary, which an entry point prints as the JSON line."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


class Summary:
    """Mixed into the use cases' summaries (dataclasses): ``to_json`` is the JSON line's fields,
    every field by its name, but for two choices a summary may make:

    - ``UNSET_LEFT_OUT``: fields left out of the line while None (what this run did not produce);
    - ``AT_THE_TOP``: a field holding a dict whose keys print at the top of the line, beside the
      other fields (figures the line has always carried there)."""

    UNSET_LEFT_OUT: ClassVar[tuple[str, ...]] = ()
    AT_THE_TOP: ClassVar[str | None] = None

    def to_json(self) -> dict[str, Any]:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k not in self.UNSET_LEFT_OUT}
        if self.AT_THE_TOP is not None:
            nested = fields.pop(self.AT_THE_TOP)
            fields = {**fields, **nested}
        return fields

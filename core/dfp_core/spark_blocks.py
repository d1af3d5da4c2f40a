"""A Spark frame's rows on the driver a block at a time, for work that streams them (scoring the
rows of a pinned snapshot) without ``toPandas`` of them all.

Spark writes the rows to a scratch Parquet folder on this machine and pyarrow reads it back one
batch at a time; the folder is removed when the blocks are done. The executors write it, so it
serves Spark's local mode and workers on this machine (the project's standalone set-up).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pyarrow.parquet as pq

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pyspark.sql import DataFrame

ROWS_PER_BLOCK = 50_000


def local_blocks(frame: "DataFrame", rows_per_block: int = ROWS_PER_BLOCK) -> Iterator["pd.DataFrame"]:
    """``frame``'s rows as pandas blocks of at most ``rows_per_block`` rows."""
    with tempfile.TemporaryDirectory(prefix="dfp-blocks-") as scratch:
        folder = Path(scratch) / "rows"
        frame.write.parquet(folder.as_uri())
        for path in sorted(folder.glob("*.parquet")):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows_per_block):
                yield batch.to_pandas()

"""KronoDroid -> Avro Iceberg tables on a per-run lakeFS branch.

The ``spark-submit`` entry point (what the SparkApplication and the pipeline's
local Spark step run); ``dfp transform`` runs the same use case in-process.
Stages (``dfp_spark.transform_run.run_transform``):

1. run branch ``run-<run id>`` from the target branch, raw inputs versioned on it
   (``--input DIR``; without it the raw files already on the target branch are used);
2. the Spark transform writes ``stg_kronodroid.*`` and ``kronodroid.*`` on the branch;
3. commit with metadata, freeze the branch as a tag, merge into the target
   (skipped with ``--merge false``: the pipeline's commit+merge step does it).

Options are the fields of ``dfp_core.params.TransformConfig``. The last line on
stdout is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # spark-submit runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfp_core.errors import DfpError  # noqa: E402
from dfp_core.params import TransformConfig, add_arguments, from_namespace  # noqa: E402
from dfp_core.process_exit import leave_heap_to_the_os  # noqa: E402
from dfp_core.progress import error  # noqa: E402
from dfp_core.runtime import Runtime


def parse_args(argv: list[str] | None = None) -> TransformConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, TransformConfig)
    return from_namespace(TransformConfig, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    # Deferred (the lakeFS SDK, requests): the argument parser runs and is tested without it.
    from dfp_spark.transform_run import run_transform

    try:
        config = parse_args(argv)
        with Runtime.from_env(app_name="kronodroid-iceberg-job") as rt:
            summary = run_transform(rt, config)
    except DfpError as exc:
        error(str(exc))
        return 2
    print(json.dumps(summary.to_json(), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        leave_heap_to_the_os()

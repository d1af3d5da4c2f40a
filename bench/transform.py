"""Transform benchmark: full KronoDroid size (~64k emulator + ~78k real-device
generated rows). Measures `dfp transform` (wall, rows/s, peak memory of the
whole process tree incl. the Spark JVM) and, in the same run, a baseline that
reads the same CSVs with pyarrow and writes them with fastavro.

  .venv/bin/python bench/transform.py [--rows 142128]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, private_stack, run_measured, save  # noqa: E402


def baseline(input_dir: Path, out_dir: Path) -> dict:
    """pyarrow CSV read + fastavro write of every archive member (no validation)."""
    import fastavro
    import pyarrow as pa
    import pyarrow.csv as pcsv

    started = time.monotonic()
    rows = 0
    for archive in sorted(input_dir.rglob("*.zip")):
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(zf.namelist()[0])
        table = pcsv.read_csv(io.BytesIO(data), parse_options=pcsv.ParseOptions(newlines_in_values=True),
                              read_options=pcsv.ReadOptions(autogenerate_column_names=False))
        names = [f"c{i}" for i in range(table.num_columns)]
        table = table.rename_columns(names)
        fields = []
        for name, field in zip(names, table.schema):
            kind = "long" if pa.types.is_integer(field.type) else "double" if pa.types.is_floating(field.type) else "string"
            if kind == "string" and not pa.types.is_string(field.type):
                table = table.set_column(names.index(name), name, table[name].cast(pa.string()))
            fields.append({"name": name, "type": ["null", kind]})
        schema = fastavro.parse_schema({"type": "record", "name": "row", "fields": fields})
        with open(out_dir / f"{archive.stem}.avro", "wb") as handle:
            fastavro.writer(handle, schema, table.to_pylist(), codec="null")
        rows += table.num_rows
    return {"seconds": time.monotonic() - started, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=142128)
    args = parser.parse_args()
    from dfp_core.kronodroid.generator import generate

    with tempfile.TemporaryDirectory(prefix="dfp-bench-") as tmp:
        tmp = Path(tmp)
        data = tmp / "input"
        generate(data, args.rows, seed=1)
        (tmp / "avro").mkdir()
        base = baseline(data, tmp / "avro")
        with private_stack(tmp / "home") as (_, _, env):
            dfp = str(ROOT / ".venv" / "bin" / "dfp")
            result = run_measured([dfp, "transform", "--input", str(data), "--repo", "bench", "--run-id", "bench-full"],
                                  env=env)
        import json

        summary = json.loads(result["last_line"])
    figures = {
        "rows": args.rows,
        "transform_seconds": round(result["seconds"], 1),
        "transform_rows_per_second": round(args.rows / result["seconds"]),
        "transform_peak_rss_mb": round(result["peak_rss_mb"]),
        "baseline_pyarrow_fastavro_seconds": round(base["seconds"], 1),
        "ratio_transform_to_baseline": round(result["seconds"] / base["seconds"], 2),
        "target_ratio": 3.0,
        "fct_rows": summary["fct_rows"],
        "quarantined_rows": summary["quarantined_rows"],
        "reconciled": summary["reconciled"],
    }
    save("transform", figures)


if __name__ == "__main__":
    main()

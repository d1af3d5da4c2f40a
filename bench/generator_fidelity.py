"""Does the generated sample rank the detectors as real KronoDroid does?

  .venv/bin/python bench/generator_fidelity.py                       # real subset, 4,000 and 40,000 generated rows
  .venv/bin/python bench/generator_fidelity.py --rows 4000 --seeds 0,1

For the real 2019 subset (``../shared/data/kronodroid/``; left out with a message when
absent) and for generated samples of each ``--rows`` (the subset layout, generator seed
``--generator-seed``): the random and the month split of ``bench/detection.py``, the
autoencoder as ``dfp train`` fits it and the three baselines (PCA, IsolationForest,
RandomForest), ROC-AUC and TPR at 1% and 5% FPR averaged over ``--seeds``. Prints one
table per split with a column per data set, and the autoencoder's margins over PCA and
IsolationForest, which the generator is calibrated to reproduce (issue 36). The JSON
summary is the last line and ``results/generator_fidelity.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REAL_SUBSET, save  # noqa: E402
from _common import log as _log  # noqa: E402
from detection import _quiet, load_subset, month_split, random_split, run_tasks  # noqa: E402

METHODS = ("ae_default", "pca", "isolation_forest", "random_forest")
SHOWN = ("roc_auc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct")


def log(message: str) -> None:
    _log("generator_fidelity", message)


def data_sets(rows: list[int], generator_seed: int, tmp: Path) -> dict[str, Path]:
    """Name -> the subset-format CSV to read: the real subset when present, then each generated size."""
    from dfp_core.kronodroid.generator import SUBSET_RELPATH, generate

    out = {}
    if REAL_SUBSET.is_file():
        out["real"] = REAL_SUBSET
    else:
        log(f"the real KronoDroid subset is not at {REAL_SUBSET}: its column is left out")
    for n in rows:
        folder = tmp / f"generated_{n}"
        generate(folder, n, seed=generator_seed, layout="subset")
        out[f"generated_{n}"] = folder / SUBSET_RELPATH
    return out


def table(results: dict, split: str) -> str:
    names = list(results)
    lines = [f"{split} split: ROC-AUC / TPR at 1% FPR / TPR at 5% FPR", "| method | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for method in METHODS:
        cells = [" / ".join(f"{results[n][split]['methods'][method][k]:.3f}" for k in SHOWN) for n in names]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for base in ("pca", "isolation_forest"):
        cells = [f"{margin(results[n][split], base):+.3f}" for n in names]
        lines.append(f"| AE - {base} (ROC-AUC) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def margin(split_result: dict, base: str) -> float:
    methods = split_result["methods"]
    return round(methods["ae_default"]["roc_auc"] - methods[base]["roc_auc"], 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="4000,40000", help="comma-separated generated sample sizes")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--generator-seed", type=int, default=0)
    parser.add_argument("--target-fpr", type=float, default=0.05)
    args = parser.parse_args(argv)
    rows = [int(r) for r in args.rows.split(",") if r]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if any(r < 100 for r in rows):
        parser.error("--rows: each generated sample needs at least 100 rows")
    _quiet()
    run_args = SimpleNamespace(jobs=1, target_fpr=args.target_fpr, accelerator="cpu")
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="dfp-bench-fidelity-") as tmp:
        for name, path in data_sets(rows, args.generator_seed, Path(tmp)).items():
            log(f"{name}: {path.name}")
            frame = load_subset(path, Path(tmp) / name)
            tasks = {"random": random_split(frame), "month": month_split(frame, 0)}
            results[name] = run_tasks(tasks, seeds, ["default"], run_args)
    for split in ("random", "month"):
        print(table(results, split), file=sys.stderr)
    out = {"seeds": seeds, "generator_seed": args.generator_seed, "target_fpr": args.target_fpr,
           "data_sets": {name: {split: {"rows": r[split]["rows"], "malware": r[split]["malware"],
                                        "methods": {m: {k: r[split]["methods"][m][k] for k in SHOWN} for m in METHODS},
                                        "ae_minus_pca": margin(r[split], "pca"),
                                        "ae_minus_isolation_forest": margin(r[split], "isolation_forest")}
                                for split in ("random", "month")}
                         for name, r in results.items()}}
    save("generator_fidelity", out)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

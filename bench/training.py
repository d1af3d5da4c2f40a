"""Training benchmarks. Each part writes its own results file.

  .venv/bin/python bench/training.py                       # all four parts
  .venv/bin/python bench/training.py --lightning-vs-plain  # training_lightning_vs_plain.json
  .venv/bin/python bench/training.py --feast-vs-spark      # training_feast_vs_spark.json
  .venv/bin/python bench/training.py --quality-real-subset # training_quality_real_subset.json
  .venv/bin/python bench/training.py --time-split-generated # training_time_split_generated.json

--lightning-vs-plain: samples/s of Lightning's Trainer vs ``loop.train_plain``
(same data, model, batches and epochs; alternating order in one process; the
first, warm-up epoch of every fit left out). --feast-vs-spark: Feast historical
retrieval of the training split (the repo's store, and Feast's stock Spark store
for reference; the entity keys given) and ``load_splits`` end to end, each vs a
direct Spark read of the same Iceberg snapshot into pandas. --quality-real-subset: test ROC-AUC/PR-AUC of
the autoencoder (default and long-training configs, two seeds) and the baselines on the
real KronoDroid subset. --time-split-generated: per-year ROC-AUC of every method
trained on 2010-2014 generated data. The two stack-based parts share one private
stack and one Spark session.
"""

from __future__ import annotations

import argparse
import gc
import logging
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REAL_SUBSET, quiet_lightning, save, stack_with_spark  # noqa: E402
from _common import log as _log  # noqa: E402

# The default architecture trained longer, on smaller batches.
LONG = {"batch_size": 64, "max_epochs": 200}
METHODS = ("autoencoder", "pca", "isolation_forest", "random_forest")


def log(message: str) -> None:
    _log("training", message)


def _quiet() -> None:
    quiet_lightning(logging.WARNING, ".*The spark (data source API|offline store) is an experimental.*")


def _generated_frame(tmp: Path, rows: int, **kwargs):
    from dfp_core.kronodroid.generator import generate
    from dfp_core.kronodroid.reader import read_kronodroid

    data = tmp / f"gen-{rows}"
    generate(data, rows, seed=1, **kwargs)
    valid, rejected = read_kronodroid(data)
    log(f"generated {rows} rows: {len(valid)} valid, {len(rejected)} rejected")
    return valid


# --------------------------------------------------------------------------- Lightning vs plain


def lightning_vs_plain(tmp: Path, rows: int, epochs: int, batch_size: int, repeats: int) -> dict:
    import lightning as L
    import numpy as np
    import torch

    from dfp_core.ml.data import KronodroidDataModule
    from plain_loop import train_plain
    from dfp_core.ml.model import KronodroidAutoencoder
    from dfp_core.kronodroid.schema import FEATURE_COLUMNS
    from dfp_core.params import TrainConfig
    from dfp_core.serving.preprocess import Preprocessor

    frame = _generated_frame(tmp, rows)
    y = frame["label"].to_numpy()
    held = np.random.default_rng(0).random(len(frame)) < 0.15
    preprocessor = Preprocessor(FEATURE_COLUMNS).fit(frame[~held & (y == 0)])
    x = preprocessor.transform(frame)
    dm = KronodroidDataModule(x[~held], x[held], None, y[~held], y[held], train_on="benign",
                              batch_size=batch_size, seed=0)
    cfg = TrainConfig()  # the architecture a training run uses by default

    def new_model() -> KronodroidAutoencoder:
        torch.manual_seed(0)  # same initial weights for both
        return KronodroidAutoencoder(input_dim=x.shape[1], hidden_dims=cfg.hidden_dims, latent_dim=cfg.latent_dim,
                                     dropout=cfg.dropout, lr=cfg.lr, weight_decay=cfg.weight_decay)

    class EpochTimer(L.Callback):
        """Epoch k lasts from its on_train_epoch_start to the next one (the last
        one to on_train_end): training batches, validation, every hook."""

        def __init__(self):
            self.marks: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.marks.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            self.marks.append(time.perf_counter())

        def epoch_seconds(self) -> list[float]:
            return [b - a for a, b in zip(self.marks, self.marks[1:])]

    def run_plain() -> tuple[list[float], float]:
        model = new_model()
        started = time.perf_counter()
        history = train_plain(model, dm.train_dataloader(), dm.val_dataloader(), max_epochs=epochs)
        return history["epoch_seconds"], time.perf_counter() - started

    def run_lightning() -> tuple[list[float], float]:
        model = new_model()
        timer = EpochTimer()
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, max_epochs=epochs,
                            callbacks=[timer])
        started = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        return timer.epoch_seconds(), time.perf_counter() - started

    skip = 1 if epochs >= 2 else 0  # the warm-up epoch, when there is another one

    def throughput(epoch_seconds: list[float]) -> float:
        timed = epoch_seconds[skip:]
        return dm.n_train * len(timed) / sum(timed)

    results: dict[str, list] = {"plain": [], "lightning": []}
    walls: dict[str, list] = {"plain": [], "lightning": []}
    for i in range(repeats):
        for kind, fn in (("plain", run_plain), ("lightning", run_lightning)):
            epoch_seconds, wall = fn()
            results[kind].append(throughput(epoch_seconds))
            walls[kind].append(wall)
            log(f"{kind} #{i + 1}: {results[kind][-1]:.0f} samples/s, epochs "
                f"{', '.join(f'{s:.2f}s' for s in epoch_seconds)}, fit {wall:.1f}s")
    lightning_sps = statistics.mean(results["lightning"])
    plain_sps = statistics.mean(results["plain"])
    return {
        "rows": rows,
        "train_samples_per_epoch": dm.n_train,
        "val_samples_per_epoch": dm.n_val,
        "epochs": epochs,
        "batch_size": batch_size,
        "hidden_dims": list(cfg.hidden_dims),
        "latent_dim": cfg.latent_dim,
        "warmup_epochs_excluded": skip,
        "order": "plain, lightning, " * (repeats - 1) + "plain, lightning",
        "torch_threads": torch.get_num_threads(),
        "lightning_samples_per_s_each": [round(v) for v in results["lightning"]],
        "plain_samples_per_s_each": [round(v) for v in results["plain"]],
        "lightning_samples_per_s": round(lightning_sps),
        "plain_samples_per_s": round(plain_sps),
        "lightning_fit_seconds_mean": round(statistics.mean(walls["lightning"]), 2),
        "plain_fit_seconds_mean": round(statistics.mean(walls["plain"]), 2),
        "ratio_lightning_to_plain": round(lightning_sps / plain_sps, 3),
        # Epochs are short on small data: the medians show how much one slow epoch moved the means.
        "ratio_lightning_to_plain_of_medians": round(
            statistics.median(results["lightning"]) / statistics.median(results["plain"]), 3),
        "target_ratio_min": 0.9,
    }


# --------------------------------------------------------------------------- transform helper


def _transform(rt, input_dir: Path, repo: str, run_id: str) -> tuple[dict, float]:
    from dfp_core.params import TransformConfig
    from dfp_spark.transform_run import run_transform

    started = time.monotonic()
    summary = run_transform(rt, TransformConfig(input_dir=input_dir, repo=repo, run_id=run_id)).to_json()
    seconds = time.monotonic() - started
    log(f"transform into {repo}: {summary['fct_rows']} rows in {seconds:.1f}s")
    return summary, seconds


def _pins(summary: dict) -> tuple[str, str]:
    from dfp_core.kronodroid import schema

    return summary["merge_commit"], str(summary["snapshot_ids"][schema.FCT_TABLE_FQN])


# --------------------------------------------------------------------------- Feast vs direct Spark read


def feast_vs_spark(rt, tmp: Path, rows: int, repeats: int) -> dict:
    from dfp_core import iceberg
    from dfp_core.kronodroid import schema
    from dfp_core.kronodroid.generator import generate
    from dfp_core.iceberg import TableRef
    from dfp_feast.kronodroid_features import build_definitions
    from dfp_feast.retrieval import EVAL_FIELDS, FEATURE_REFS, _entity_keys, feature_store, load_splits

    data = tmp / "feast-input"
    generate(data, rows, seed=1)
    repo = "benchfeast" + uuid.uuid4().hex[:8]
    spark, lakefs = rt.spark(), rt.lakefs
    summary, transform_seconds = _transform(rt, data, repo, "bench-feast")
    commit, snapshot = _pins(summary)
    columns = list(dict.fromkeys(["sample_id", "event_timestamp", *EVAL_FIELDS, *schema.FEATURE_COLUMNS]))
    name = iceberg.qualified(spark, TableRef(repo, commit, schema.MART_NAMESPACE, schema.FCT_TABLE))  # registers the catalog
    defs = build_definitions(repo, commit, snapshot)
    snapshot_table = spark.read.format("iceberg").option("snapshot-id", snapshot).load(name)
    entity_df = _entity_keys(snapshot_table, ("train",), 0)[["sample_id", "event_timestamp"]]
    features = list(FEATURE_REFS)
    stores = {
        "feast": feature_store(tmp / "feast-registry"),  # the repo's store (ours, single scan)
        "feast_stock_store": feature_store(tmp / "feast-registry-stock", "spark"),  # Feast's own Spark store
    }
    for store in stores.values():
        store.apply(defs.objects())

    def retrieval(store):
        return lambda: store.get_historical_features(entity_df=entity_df, features=features).to_df()

    def direct():
        table = spark.read.format("iceberg").option("snapshot-id", snapshot).load(name)
        return table.where("dataset_split = 'train'").select(*columns).toPandas()

    def end_to_end():
        return load_splits(spark, lakefs, repo, commit, snapshot, splits=("train",)).frames["train"]

    kinds = {"feast": retrieval(stores["feast"]), "direct": direct, "load_splits": end_to_end,
             "feast_stock_store": retrieval(stores["feast_stock_store"])}
    timings: dict[str, list[float]] = {kind: [] for kind in kinds}
    shapes = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning, message="The spark")
        order = list(kinds)
        for i in range(repeats + 1):  # round 0 warms everything up
            for kind in order[i % len(order):] + order[:i % len(order)]:  # rotate: no kind always follows another
                fn = kinds[kind]
                # Collect the previous retrieval's garbage (Python and JVM) outside the timing.
                gc.collect()
                spark._jvm.System.gc()
                started = time.monotonic()
                frame = fn()
                seconds = time.monotonic() - started
                shapes[kind] = frame.shape
                if i:
                    timings[kind].append(seconds)
                log(f"{kind} {'warm-up' if not i else f'#{i}'}: {seconds:.2f}s, {frame.shape[0]} rows x {frame.shape[1]} columns")
    mean = {kind: statistics.mean(values) for kind, values in timings.items()}
    median = {kind: statistics.median(values) for kind, values in timings.items()}
    return {
        "rows_generated": rows,
        "fct_rows": summary["fct_rows"],
        "train_rows": shapes["feast"][0],
        "rows_and_columns": {kind: list(shape) for kind, shape in shapes.items()},
        "transform_seconds": round(transform_seconds, 1),
        "seconds_each": {kind: [round(s, 2) for s in values] for kind, values in timings.items()},
        "feast_retrieval_seconds": round(mean["feast"], 2),
        "direct_spark_read_seconds": round(mean["direct"], 2),
        "load_splits_seconds": round(mean["load_splits"], 2),
        "feast_stock_store_seconds": round(mean["feast_stock_store"], 2),
        "ratio_feast_to_direct": round(mean["feast"] / mean["direct"], 2),
        # Single retrievals move by ~0.5 s on 2 cores (GC, JIT): the medians are steadier.
        "ratio_feast_to_direct_of_medians": round(median["feast"] / median["direct"], 2),
        "ratio_load_splits_to_direct": round(mean["load_splits"] / mean["direct"], 2),
        "ratio_feast_stock_store_to_direct": round(mean["feast_stock_store"] / mean["direct"], 2),
        "target_ratio_max": 1.5,
    }


# --------------------------------------------------------------------------- quality on the real subset


def quality_real_subset(rt, tmp: Path, seeds: list[int], max_epochs: int | None) -> dict:
    from dfp_core.ml.evaluation import compare_models
    from dfp_core.ml.fit import fit_and_evaluate
    from dfp_core.params import TrainConfig

    data_dir = tmp / "real"
    (data_dir / "real_device").mkdir(parents=True)
    shutil.copy(REAL_SUBSET, data_dir / "real_device" / REAL_SUBSET.name)
    repo = "benchreal" + uuid.uuid4().hex[:8]
    summary, _ = _transform(rt, data_dir, repo, "bench-real")
    commit, snapshot = _pins(summary)
    data = rt.retrieve_splits(repo, commit, snapshot)
    log(f"splits: {data.rows}")

    configs = {"default": {}, "long": dict(LONG)}
    figures: dict = {"input": REAL_SUBSET.name, "fct_rows": summary["fct_rows"], "split_rows": data.rows,
                     "seeds": seeds, "long_config": dict(LONG)}
    if max_epochs is not None:
        figures["max_epochs_cap"] = max_epochs
    ae: dict[str, dict[str, list[float]]] = {}
    baselines: dict[str, dict[str, list[float]]] = {m: {"roc_auc": [], "pr_auc": []} for m in METHODS[1:]}
    for name, overrides in configs.items():
        ae[name] = {"roc_auc": [], "pr_auc": [], "epochs": []}
        for seed in seeds:
            values = {**overrides}
            if max_epochs is not None:
                values["max_epochs"] = min(values.get("max_epochs", TrainConfig.max_epochs), max_epochs)
            config = TrainConfig(repo=repo, ref=commit, snapshot_id=snapshot, seed=seed, accelerator="cpu", devices="1",
                                 register=False, evaluate_baselines=False, **values)
            started = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="dfp-bench-fit-") as work:
                result = fit_and_evaluate(config, data, Path(work))
            metrics = result.metrics
            comparison, _ = compare_models(data.frames, result.error_score.score_function(result.model),
                                           result.preprocessor, seed=seed,
                                           train_on=config.train_on)
            ae[name]["roc_auc"].append(metrics["test_roc_auc"])
            ae[name]["pr_auc"].append(metrics["test_pr_auc"])
            ae[name]["epochs"].append(int(metrics["epochs_trained"]))
            log(f"AE {name} seed {seed}: ROC-AUC {metrics['test_roc_auc']:.4f}, PR-AUC {metrics['test_pr_auc']:.4f}, "
                f"{int(metrics['epochs_trained'])} epochs, {time.monotonic() - started:.0f}s")
            if name == "default":  # the baselines depend on the seed only (same preprocessor)
                for method in METHODS[1:]:
                    for metric in ("roc_auc", "pr_auc"):
                        key = f"eval_{metric}__{method}"
                        if key in comparison:
                            baselines[method][metric].append(comparison[key])
                log("baselines seed {}: {}".format(seed, ", ".join(
                    f"{m} {comparison.get(f'eval_roc_auc__{m}', float('nan')):.4f}" for m in METHODS[1:])))

    for name, values in ae.items():
        for metric in ("roc_auc", "pr_auc"):
            for seed, value in zip(seeds, values[metric]):
                figures[f"ae_{name}_{metric}_seed{seed}"] = round(value, 4)
            figures[f"ae_{name}_{metric}_mean"] = round(statistics.mean(values[metric]), 4)
        figures[f"ae_{name}_epochs_trained"] = values["epochs"]
    for method, values in baselines.items():
        for metric in ("roc_auc", "pr_auc"):
            if values[metric]:
                figures[f"{method}_{metric}_mean"] = round(statistics.mean(values[metric]), 4)
    best = max(ae, key=lambda n: statistics.mean(ae[n]["roc_auc"]))
    best_auc = statistics.mean(ae[best]["roc_auc"])
    figures.update({
        "ae_best_config": best,
        "ae_best_roc_auc_mean": round(best_auc, 4),
        "target_ae_roc_auc_min": 0.92,
        "ae_meets_target": bool(
            best_auc >= 0.92
            and all(best_auc > figures.get(f"{m}_roc_auc_mean", 0.0) for m in ("pca", "isolation_forest"))
        ),
    })
    return figures


# --------------------------------------------------------------------------- time split on generated data


def time_split_generated(tmp: Path, rows: int, max_epochs: int, batch_size: int, train_end_year: int) -> dict:
    from dfp_core.ml.evaluation import time_split_evaluation
    from dfp_core.kronodroid.reader import sample_years

    frame = _generated_frame(tmp, rows, start_year=2010, end_year=2019)
    frame["sample_year"] = sample_years(frame)
    started = time.monotonic()
    metrics, table = time_split_evaluation(frame, train_end_year, max_epochs=max_epochs, batch_size=batch_size,
                                           accelerator="cpu", devices="1")
    seconds = time.monotonic() - started
    roc: dict[str, dict[str, float]] = {}
    pr: dict[str, dict[str, float]] = {}
    for row in table.itertuples(index=False):
        roc.setdefault(row.method, {})[str(row.period)] = round(float(row.roc_auc), 4)
        pr.setdefault(row.method, {})[str(row.period)] = round(float(row.pr_auc), 4)
    rows_per_period = {str(p): int(n) for p, n in table.groupby("period", sort=False)["n"].first().items()}
    for method, years in roc.items():
        log(f"{method}: " + ", ".join(f"{p} {v:.3f}" for p, v in years.items()))
    return {
        "rows": rows,
        "years": "2010-2019",
        "train_end_year": train_end_year,
        "max_epochs": max_epochs,
        "batch_size": batch_size,
        "epochs_trained": int(metrics["drift_epochs_trained"]),
        "train_rows": int(metrics["drift_train_rows"]),
        "val_rows": int(metrics["drift_val_rows"]),
        "eval_rows": int(metrics["drift_eval_rows"]),
        "seconds": round(seconds, 1),
        "rows_per_period": rows_per_period,
        "roc_auc_per_period": roc,
        "pr_auc_per_period": pr,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lightning-vs-plain", action="store_true")
    parser.add_argument("--feast-vs-spark", action="store_true")
    parser.add_argument("--quality-real-subset", action="store_true")
    parser.add_argument("--time-split-generated", action="store_true")
    parser.add_argument("--rows", type=int, default=40000, help="generated rows for lightning-vs-plain and feast-vs-spark")
    parser.add_argument("--epochs", type=int, default=3, help="lightning-vs-plain epochs per fit")
    parser.add_argument("--batch-size", type=int, default=256, help="lightning-vs-plain and time-split batch size")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds of lightning-vs-plain and feast-vs-spark")
    parser.add_argument("--seeds", default="0,1", help="quality-real-subset seeds")
    parser.add_argument("--quality-max-epochs", type=int, default=None, help="cap max_epochs of both configs (smoke runs)")
    parser.add_argument("--time-split-rows", type=int, default=20000)
    parser.add_argument("--time-split-max-epochs", type=int, default=30)
    parser.add_argument("--train-end-year", type=int, default=2014)
    args = parser.parse_args()
    if min(args.rows, args.epochs, args.batch_size, args.repeats, args.time_split_rows, args.time_split_max_epochs) < 1:
        parser.error("--rows, --epochs, --batch-size, --repeats and the --time-split-* values must be >= 1")
    parts = [p for p in ("lightning_vs_plain", "time_split_generated", "feast_vs_spark", "quality_real_subset")
             if getattr(args, p)]
    parts = parts or ["lightning_vs_plain", "time_split_generated", "feast_vs_spark", "quality_real_subset"]
    _quiet()

    with tempfile.TemporaryDirectory(prefix="dfp-bench-training-") as tmp:
        tmp = Path(tmp)
        # Parts without a stack first: no JVM or servers beside them.
        if "lightning_vs_plain" in parts:
            log(f"lightning vs plain: {args.rows} rows, {args.epochs} epochs, batch {args.batch_size}")
            save("training_lightning_vs_plain", lightning_vs_plain(tmp, args.rows, args.epochs, args.batch_size, args.repeats))
        if "time_split_generated" in parts:
            log(f"time split: {args.time_split_rows} rows, train <= {args.train_end_year}")
            save("training_time_split_generated", time_split_generated(
                tmp, args.time_split_rows, args.time_split_max_epochs, args.batch_size, args.train_end_year))
        stack_parts = [p for p in ("feast_vs_spark", "quality_real_subset") if p in parts]
        if "quality_real_subset" in stack_parts and not REAL_SUBSET.is_file():
            log(f"skipping quality-real-subset: {REAL_SUBSET} does not exist")
            save("training_quality_real_subset", {"skipped": f"{REAL_SUBSET} does not exist"})
            stack_parts.remove("quality_real_subset")
        if stack_parts:
            log("starting a private stack and a Spark session")
            with stack_with_spark(tmp / "home", "dfp-bench-training") as rt:
                if "feast_vs_spark" in stack_parts:
                    log(f"feast vs spark: {args.rows} rows")
                    save("training_feast_vs_spark", feast_vs_spark(rt, tmp, args.rows, args.repeats))
                if "quality_real_subset" in stack_parts:
                    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
                    log(f"quality on the real subset: seeds {seeds}")
                    save("training_quality_real_subset", quality_real_subset(rt, tmp, seeds, args.quality_max_epochs))


if __name__ == "__main__":
    main()

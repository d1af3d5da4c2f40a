"""The parameters of a transform run and a training run, each defined once:
name, type, default and help.

``TransformConfig`` and ``TrainConfig`` are the single source. The ``dfp`` CLI
and the Spark job's argument parser are generated from them (``Param.flag``);
the Kubeflow pipeline exposes the fields that have a ``Param.pipeline`` name,
and a test checks its signature against them; a ``TrainConfig`` is logged as
MLflow params and read back exactly (``to_params`` / ``from_params``).

Fields whose default is None and that say "from settings" take their value
from the runtime settings (environment, ``stack.env``) when left unset.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dfp_core.errors import ConfigError
from dfp_core.settings import LakeFSSettings, MLflowSettings, Settings
from dfp_core.splits import SplitSpec

_META = "dfp"


@dataclass(frozen=True)
class Param:
    """How a field is exposed. ``flag``: its command-line option (default
    ``--<field-name>``); ``cli``: whether ``dfp`` offers it; ``pipeline``: its
    Kubeflow pipeline parameter (None: not exposed); ``min``/``max``/``choices``:
    checked when a config is made."""

    help: str
    flag: str | None = None
    cli: bool = True  # an option of the `dfp` command (the Spark job's parser has every field)
    pipeline: str | None = None
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    mlflow: bool = True  # logged as an MLflow param (TrainConfig)
    fallback: Any = None  # for a None default taken from the settings: their default (the pipeline's)


def param(default: Any, help: str, *, cli: bool = True, flag: str | None = None, pipeline: str | None = None,
          min: float | None = None, max: float | None = None, choices: tuple[str, ...] | None = None,
          mlflow: bool = True, fallback: Any = None, default_factory: Any = None):
    """A dataclass field with its ``Param``; ``flag`` defaults to ``--<field-name>``
    (filled in by ``params_of``)."""
    meta = {_META: Param(help=help, flag=flag, cli=cli, pipeline=pipeline, min=min, max=max, choices=choices,
                         mlflow=mlflow, fallback=fallback)}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Field:
    """One parameter: the dataclass field, its plain type and how it is exposed."""

    name: str
    type: type
    optional: bool
    default: Any
    param: Param

    @property
    def flag(self) -> str:
        return self.param.flag


def _plain_type(annotation: Any) -> tuple[type, bool]:
    """(type, optional) of ``int``, ``int | None``, ``tuple[int, ...]``, ``Path | None`` ..."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _plain_type(inner[0])[0], True
    origin = typing.get_origin(annotation)
    return (origin or annotation), False


def params_of(cls) -> list[Field]:
    """The exposed fields of a config dataclass, in definition order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if _META not in f.metadata:
            continue
        kind, optional = _plain_type(hints[f.name])
        meta: Param = f.metadata[_META]
        if meta.flag is None:
            meta = dataclasses.replace(meta, flag="--" + f.name.replace("_", "-"))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(Field(f.name, kind, optional, default, meta))
    return out


def parse_value(fld: Field, text: str | None) -> Any:
    """A field's value from its string form (command line, MLflow param, KFP input)."""
    if text is None or (fld.optional and text in ("", "None")):
        return None
    if fld.type is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{fld.name} must be true or false, got {text!r}")
    if fld.type is tuple:
        try:
            return tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"{fld.name} must be comma-separated integers, got {text!r}") from None
    try:
        return fld.type(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{fld.name} must be of type {fld.type.__name__}, got {text!r}") from None


def format_value(value: Any) -> str:
    """The string form ``parse_value`` reads back."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def check_bounds(cls, values: Mapping[str, Any]) -> None:
    """Range and choice checks of ``Param``, with the field's flag in the message."""
    for fld in params_of(cls):
        value = values.get(fld.name)
        if value is None:
            continue
        shown = fld.flag
        p = fld.param
        if p.choices and value not in p.choices:
            raise ConfigError(f"{shown} must be one of {', '.join(p.choices)}, got {value!r}")
        if p.min is not None and value < p.min:
            raise ConfigError(f"{shown} must be >= {p.min}, got {value}")
        if p.max is not None and value > p.max:
            raise ConfigError(f"{shown} must be <= {p.max}, got {value}")


def check_target_fpr(target_fpr: float) -> None:
    """A benign FPR to set a threshold for: above 0 (0 would set it at the highest benign
    validation score, an outlier) and below 0.5."""
    if not 0.0 < float(target_fpr) < 0.5:
        raise ConfigError(f"--target-fpr must be above 0 and below 0.5, got {target_fpr}")


# The lakeFS repository option's help, shared by the configs and the commands that take --repo.
REPO_HELP = "lakeFS repository (default: LAKEFS_REPOSITORY, else kronodroid)."
PSI_BOUND = 0.25  # `dfp drift`: a feature whose PSI is above it has shifted ("a major shift" in PSI's usual reading)


def check_psi_bound(psi_bound: float) -> None:
    if not float(psi_bound) > 0.0:
        raise ConfigError(f"--psi-bound must be above 0, got {psi_bound}")


def check_top(top: int) -> None:
    """How many features a drift or diff summary lists."""
    if int(top) < 0:
        raise ConfigError(f"--top must be 0 or more, got {top}")


@dataclass(frozen=True)
class TransformConfig:
    """A transform run: raw KronoDroid inputs -> Avro Iceberg tables, committed and merged."""

    repo: str | None = param(None, REPO_HELP, pipeline="lakefs_repository", fallback=LakeFSSettings.repository)
    target_branch: str = param("main", "Branch the run merges into.", pipeline="target_branch")
    run_id: str | None = param(None, "Run id; the run branch is run-<id> (default: UTC time + random).",
                               pipeline="run_id")
    input_dir: Path | None = param(None, "Folder of KronoDroid archives or CSVs; omit to reuse the raw files "
                                         "on the target branch.", flag="--input", pipeline="input_dir")
    split_mode: str = param("random", "random (hash of sample id and seed) or time (by sample date).",
                            choices=("random", "time"), pipeline="split_mode")
    split_seed: int = param(42, "Seed of the random split.", pipeline="split_seed")
    train_ratio: float = param(0.7, "Random split: share of train.", min=0, max=1, pipeline="train_ratio")
    val_ratio: float = param(0.15, "Random split: share of val.", min=0, max=1, pipeline="val_ratio")
    test_ratio: float = param(0.15, "Random split: share of test.", min=0, max=1, pipeline="test_ratio")
    train_end_year: int | None = param(None, "Time split: years up to this one are train.",
                                       pipeline="train_end_year")
    val_end_year: int | None = param(None, "Time split: later years up to this one are val.",
                                     pipeline="val_end_year")
    train_end_month: int | None = param(None, "Time split by month: train ends with this month (1-12) of "
                                              "--train-end-year (default: the year's end).", min=1, max=12,
                                        pipeline="train_end_month")
    val_end_month: int | None = param(None, "Time split by month: val ends with this month (1-12) of "
                                            "--val-end-year (default: the year's end).", min=1, max=12,
                                      pipeline="val_end_month")
    max_shrink: float = param(0.2, "Largest fraction of fct rows a run may remove from the target branch.",
                              min=0, max=1, pipeline="max_shrink")
    allow_shrink: bool = param(False, "Merge however much the fct table shrinks.", pipeline="allow_shrink")
    keep_failed_branch: bool = param(False, "Keep the run branch when the run fails (to inspect it).")
    # Set by the pipeline's steps, not by users of `dfp transform`.
    run_branch: str | None = param(None, "Write on this existing run branch (created by the pipeline).", cli=False,
                                   flag="--run-branch")
    merge: bool = param(True, "Commit, freeze and merge after the transform (false: stop on the run branch).",
                        cli=False, flag="--merge")

    def __post_init__(self):
        check_bounds(TransformConfig, dataclasses.asdict(self))
        self.split()  # ratios and years are checked now, not after the upload

    def split(self) -> SplitSpec:
        return SplitSpec(
            mode=self.split_mode, seed=self.split_seed, train_ratio=self.train_ratio, val_ratio=self.val_ratio,
            test_ratio=self.test_ratio, train_end_year=self.train_end_year, val_end_year=self.val_end_year,
            train_end_month=self.train_end_month, val_end_month=self.val_end_month,
        )

    @property
    def shrink_limit(self) -> float | None:
        """The shrink the merge accepts (None: any)."""
        return None if self.allow_shrink else self.max_shrink

    def resolved(self, settings: Settings) -> "TransformConfig":
        return dataclasses.replace(self, repo=self.repo or settings.lakefs.repository)


SPARK_MODES = ("auto", "kubernetes", "local")


@dataclass(frozen=True)
class SparkJobConfig:
    """Where the pipeline's transform step runs its Spark job: ``spark-submit`` in local mode
    inside the step, or a Spark Operator ``SparkApplication`` on the cluster. The job's image
    is the pipeline's ``spark_image`` (its default is the image it was compiled with)."""

    mode: str = param("auto", "auto (the Spark Operator when the step runs in a pod, else local), kubernetes or "
                              "local.", choices=SPARK_MODES, flag="--spark-mode", pipeline="spark_mode")
    namespace: str = param("kubeflow", "Namespace of the SparkApplication; the Spark Operator must watch it.",
                           flag="--spark-namespace", pipeline="spark_namespace")
    timeout_seconds: int = param(3600, "Seconds the SparkApplication may take before it is deleted and the step "
                                       "fails.", min=1, flag="--spark-timeout-seconds", pipeline="spark_timeout_seconds")
    executor_instances: int = param(2, "Executor pods of the SparkApplication (one core each).", min=1,
                                    flag="--spark-executor-instances", pipeline="spark_executor_instances")
    service_account: str = param("spark", "Service account of the SparkApplication's driver (manifests/"
                                          "spark-rbac.yaml).", flag="--spark-service-account",
                                 pipeline="spark_service_account")

    def __post_init__(self):
        check_bounds(SparkJobConfig, dataclasses.asdict(self))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (logged as MLflow params)."""

    # data
    repo: str | None = param(None, REPO_HELP)
    ref: str | None = param(None, "Branch or commit id; resolved to a commit (from settings: LAKEFS_BRANCH, "
                                  "default main).")
    snapshot_id: str | None = param(None, "Pin an Iceberg snapshot (default: the ref's current one).")
    max_rows_per_split: int = param(0, "0 = all rows; N = a deterministic subset of N rows per split.", min=0,
                                    pipeline="max_rows_per_split")
    train_on: str = param("benign", "benign (anomaly detection), all, or semi (semi-supervised: benign rows "
                                    "reconstructed, the train split's labelled malware pushed to a high error).",
                          choices=("benign", "all", "semi"), pipeline="train_on")
    # model: (512, 128) -> 64 beat (256, 64) -> 16 on the real KronoDroid subset (test ROC-AUC
    # 0.963 vs 0.954, both seeds above PCA's 0.960): bench/training.py --quality-real-subset.
    latent_dim: int = param(64, "Size of the code layer.", min=1, pipeline="latent_dim")
    hidden_dims: tuple[int, ...] = param((512, 128), "Encoder layer sizes, comma-separated.",
                                         pipeline="hidden_dims")
    dropout: float = param(0.1, "Dropout between layers.", min=0, max=0.99, pipeline="dropout")
    lr: float = param(1e-3, "Adam learning rate.", min=0, pipeline="lr")
    weight_decay: float = param(1e-5, "Adam weight decay.", min=0, pipeline="weight_decay")
    # optimisation
    batch_size: int = param(128, "Rows per batch.", min=1, pipeline="batch_size")
    max_epochs: int = param(50, "Upper bound on epochs.", min=1, pipeline="max_epochs")
    patience: int = param(10, "Early stopping patience on val_loss (epochs).", min=0, pipeline="patience")
    seed: int = param(42, "Seed of weights, shuffling and baselines.", pipeline="train_seed")
    deterministic: bool = param(True, "Deterministic kernels (Lightning's deterministic=True).", cli=False)
    # The operating point: an analyst accepts this share of benign apps flagged (5 in 100 by default).
    target_fpr: float = param(0.05, "Benign false-positive rate the anomaly threshold is set for, on the "
                                    "validation split.", min=0.0, max=0.5, pipeline="target_fpr")
    # The anomaly score: grouped_error ranks best on the real subset, on random and month splits
    # (bench/detection.py: random ROC-AUC 0.988 vs 0.962 for the MSE; month TPR at 5% FPR 0.93 vs 0.18).
    score: str = param("grouped_error", "Anomaly score: grouped_error (standardised error per feature group: "
                                        "permissions, syscalls, metadata), error_mahalanobis (distance of the "
                                        "per-feature error vector from the benign training apps') or mse.",
                       choices=("grouped_error", "error_mahalanobis", "mse"),
                       pipeline="score")
    # hardware: the same code on a laptop, a GPU node or a multi-node cluster
    accelerator: str = param("auto", "cpu, gpu or auto.", pipeline="accelerator")
    devices: str = param("auto", "Devices per node (a count, a list, or auto).", pipeline="devices")
    strategy: str = param("auto", "Lightning strategy: auto, ddp, ...", pipeline="strategy")
    num_nodes: int = param(1, "Nodes (multi-node DDP).", min=1, pipeline="num_nodes")
    # tracking
    experiment_name: str | None = param(None, "MLflow experiment (from settings: MLFLOW_EXPERIMENT_NAME).",
                                        flag="--experiment")
    model_name: str | None = param(None, "Registered model name (from settings: DFP_MODEL_NAME, default "
                                         "kronodroid_autoencoder).", pipeline="model_name",
                                        fallback=MLflowSettings.model_name)
    model_alias: str | None = param(None, "Alias set on the new version (from settings: DFP_MODEL_ALIAS, "
                                          "default candidate).", flag="--alias")
    register: bool = param(True, "Register the model in the MLflow Model Registry.", cli=False, mlflow=False)
    evaluate_baselines: bool = param(True, "Also evaluate PCA, IsolationForest and a supervised RandomForest.",
                                     flag="--baselines", pipeline="evaluate_baselines")
    extra_tags: dict[str, str] = field(default_factory=dict)  # added to the run's tags

    def __post_init__(self):
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        check_bounds(TrainConfig, dataclasses.asdict(self))
        check_target_fpr(self.target_fpr)

    def resolved(self, settings: Settings) -> "TrainConfig":
        """Unset repository, ref and MLflow names taken from the settings."""
        return dataclasses.replace(
            self, repo=self.repo or settings.lakefs.repository, ref=self.ref or settings.lakefs.branch,
            experiment_name=self.experiment_name or settings.mlflow.experiment_name,
            model_name=self.model_name or settings.mlflow.model_name,
            model_alias=self.model_alias or settings.mlflow.model_alias,
        )

    def to_params(self) -> dict[str, str]:
        """MLflow params: every logged field as its string form."""
        return {f.name: format_value(getattr(self, f.name)) for f in params_of(TrainConfig) if f.param.mlflow}

    @classmethod
    def from_params(cls, params: Mapping[str, str], **overrides) -> "TrainConfig":
        """The config a run logged (``to_params``); fields it did not log keep their defaults."""
        values = {f.name: parse_value(f, params[f.name]) for f in params_of(cls) if f.param.mlflow and f.name in params}
        return cls(**{**values, **overrides})


def from_strings(cls, values: Mapping[str, Any]):
    """A config from parameters given as strings or typed values (KFP inputs, argparse)."""
    fields = {f.name: f for f in params_of(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} parameter(s): {', '.join(unknown)}")
    typed = {
        name: parse_value(fields[name], value) if isinstance(value, str) or value is None else value
        for name, value in values.items()
    }
    return cls(**typed)


def pipeline_fields(cls) -> dict[str, Field]:
    """The fields of ``cls`` the Kubeflow pipeline exposes, by pipeline parameter name."""
    return {f.param.pipeline: f for f in params_of(cls) if f.param.pipeline}


def pipeline_type(fld: Field) -> type:
    """A field's type as a pipeline parameter: KFP's bool, int and float, otherwise text
    (paths, and tuples as ``format_value`` writes them)."""
    return fld.type if fld.type in (bool, int, float) else str


def pipeline_default(fld: Field) -> Any:
    """A field's default as a pipeline parameter: the settings' default for values
    taken from the settings; otherwise, as KFP's local runner cannot pass None, an
    unset optional value is "" (strings, paths) or 0 (numbers)."""
    if fld.default is None and fld.param.fallback is not None:
        return fld.param.fallback
    if fld.default is None:
        return 0 if fld.type in (int, float) else ""
    return format_value(fld.default) if fld.type is tuple else fld.default


def from_pipeline(cls, values: Mapping[str, Any], **extra):
    """A config from pipeline parameter values (names as in ``pipeline_fields``)."""
    fields = pipeline_fields(cls)
    typed = {}
    for name, value in values.items():
        fld = fields[name]
        if fld.optional and value in ("", 0, None):
            value = None
        elif isinstance(value, str):
            value = parse_value(fld, value)
        typed[fld.name] = value
    return cls(**typed, **extra)


def add_arguments(parser, cls) -> None:
    """An ``argparse`` option per field of ``cls`` (the Spark job's
    parser); booleans get ``--x/--no-x``."""
    for fld in params_of(cls):
        if fld.type is bool:
            parser.add_argument(fld.flag, dest=fld.name, default=fld.default, action=argparse.BooleanOptionalAction,
                                help=fld.param.help)
        else:
            parser.add_argument(fld.flag, dest=fld.name, default=fld.default, type=lambda t, f=fld: parse_value(f, t),
                                choices=fld.param.choices, help=fld.param.help)


def from_namespace(cls, namespace) -> Any:
    """A config from parsed ``add_arguments`` options."""
    return cls(**{f.name: getattr(namespace, f.name) for f in params_of(cls)})


def to_arguments(config) -> list[str]:
    """The command line that ``add_arguments`` parses back into ``config``
    (fields left at None are not passed)."""
    args: list[str] = []
    for fld in params_of(type(config)):
        value = getattr(config, fld.name)
        if value is None:
            continue
        if fld.type is bool:
            args.append(fld.flag if value else "--no-" + fld.flag.removeprefix("--"))
        else:
            args += [fld.flag, format_value(value)]
    return args

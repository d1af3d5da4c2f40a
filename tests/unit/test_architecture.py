"""The architecture holds: imports point down (the import contract), importing
has no side effects, raw files are read without Spark, and every parameter is
defined once (the CLI, the Spark job, the pipeline and MLflow agree with the
configs)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dfp_core.params import (
    SparkJobConfig, TrainConfig, TransformConfig, from_pipeline, params_of, pipeline_default, pipeline_fields, to_arguments,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dfp_app", "dfp_core", "dfp_spark", "dfp_feast", "dfp_kfp")


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                          **kwargs)


def test_the_import_contract_is_kept():
    """Layers (entry points > use cases > runtime > adapters > domain > foundation) and
    the forbidden imports, as declared in pyproject.toml."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_importing_any_module_reads_no_settings_writes_no_environment_and_starts_nothing():
    code = f"""
import importlib, json, os, pkgutil, sys
# Third-party libraries set variables of their own when imported: import them first.
for lib in ("torch", "lightning", "mlflow", "sklearn", "matplotlib", "pyspark", "feast", "kfp", "kubernetes", "docker",
            "lakefs"):
    importlib.import_module(lib)
before = dict(os.environ)
names = []
for pkg in {PACKAGES!r}:
    module = importlib.import_module(pkg)
    names += [pkg] + [m.name for m in pkgutil.walk_packages(module.__path__, pkg + ".")]
for name in names:
    importlib.import_module(name)
from pyspark import SparkContext
changed = sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k))
print(json.dumps({{"modules": len(names), "changed": changed, "spark": SparkContext._active_spark_context is not None}}))
"""
    # A hostile environment: if a module read these at import, its objects would show them.
    env = {**__import__("os").environ, "LAKEFS_REPOSITORY": "from-the-environment", "LAKEFS_BRANCH": "nope"}
    done = _python(code, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["modules"] > 40 and result["changed"] == [] and result["spark"] is False
    # The Feast objects the module exposes are the defaults, whatever the environment says.
    probe = _python("from dfp_feast import kronodroid_features as k; print(k.kronodroid_fct_training_dataset.tags['lakefs_ref'])",
                    env=env)
    assert probe.stdout.strip().splitlines()[-1] == "main"


def test_reading_and_scoring_raw_files_loads_no_spark(tmp_path):
    from dfp_core.kronodroid.generator import generate

    generate(tmp_path, 40, seed=1, layout="subset")
    code = f"""
import sys
from pathlib import Path
from dfp_core.kronodroid.reader import read_kronodroid
from dfp_core.ml import scoring
valid, rejected = read_kronodroid(Path({str(tmp_path)!r}))
assert len(valid) + len(rejected) == 40
print(sorted(m for m in sys.modules if m.split(".")[0] in ("pyspark", "dfp_spark", "dfp_feast", "feast")))
"""
    done = _python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


# -- parameters defined once -----------------------------------------------------------------

@pytest.mark.parametrize("config", [
    TrainConfig(),
    TrainConfig(repo="r", ref="a" * 64, snapshot_id="123", max_rows_per_split=7, train_on="all", latent_dim=3,
                hidden_dims=(9, 5, 4), dropout=0.0, lr=0.01, weight_decay=0.0, batch_size=2, max_epochs=3,
                patience=0, seed=5, deterministic=False, target_fpr=0.01, accelerator="cpu", devices="1",
                strategy="ddp", num_nodes=2, experiment_name="e", model_name="m", model_alias="a",
                evaluate_baselines=False),
])
def test_train_config_round_trips_through_mlflow_params(config):
    params = config.to_params()
    assert all(isinstance(v, str) for v in params.values())
    assert TrainConfig.from_params(params) == config


def test_the_spark_job_parses_what_the_pipeline_passes():
    from dfp_spark.kronodroid_iceberg_job import parse_args

    config = TransformConfig(repo="r", target_branch="dev", run_id="abc", split_mode="time", train_end_year=2015,
                             val_end_year=2016, max_shrink=0.5, allow_shrink=True, run_branch="run-abc", merge=False)
    assert parse_args(to_arguments(config)) == config
    assert parse_args([]) == TransformConfig()


def _pipeline_parameters() -> dict:
    from dfp_kfp.pipelines.kronodroid_autoencoder_pipeline import kronodroid_autoencoder_pipeline

    return kronodroid_autoencoder_pipeline.component_spec.inputs


def test_the_pipeline_exposes_every_config_parameter_with_its_default():
    inputs = _pipeline_parameters()
    for cls in (TransformConfig, TrainConfig, SparkJobConfig):
        for name, fld in pipeline_fields(cls).items():
            assert name in inputs, f"{cls.__name__}.{fld.name} is not a pipeline parameter ({name})"
            assert inputs[name].default == pipeline_default(fld), (name, inputs[name].default, fld.default)
    # Every other parameter is the pipeline's own (where to run, on what), named here once.
    own = {"run_transform", "lakefs_endpoint", "mlflow_tracking_uri", "spark_image"}
    configured = set(pipeline_fields(TransformConfig)) | set(pipeline_fields(TrainConfig)) | set(pipeline_fields(SparkJobConfig))
    assert set(inputs) == configured | own
    # The time split and the ratios are there (and a pipeline value makes the config).
    assert from_pipeline(TransformConfig, {"split_mode": "time", "train_end_year": 2015, "val_end_year": 2016,
                                           "input_dir": "", "run_id": ""}).split().mode == "time"


def test_each_component_takes_its_configs_parameters():
    from dfp_kfp.components.lakefs_commit_merge_component import lakefs_commit_merge
    from dfp_kfp.components.spark_transform_component import kronodroid_spark_transform
    from dfp_kfp.components.train_kronodroid_autoencoder_component import train_kronodroid_autoencoder

    transform = set(kronodroid_spark_transform.component_spec.inputs)
    assert set(pipeline_fields(TransformConfig)) | set(pipeline_fields(SparkJobConfig)) <= transform
    train = set(train_kronodroid_autoencoder.component_spec.inputs)
    assert set(pipeline_fields(TrainConfig)) <= train
    merge = set(lakefs_commit_merge.component_spec.inputs)
    assert {"lakefs_repository", "target_branch", "max_shrink", "allow_shrink"} <= merge


def test_the_component_signatures_are_generated_from_the_configs():
    """The parameters in each component file are what ``dfp_kfp.components.signatures``
    writes, and a config field the files lack makes them stale (named by ``--check``)."""
    from dfp_kfp.components import signatures

    assert signatures.stale(rewrite=False) == []
    assert subprocess.run([sys.executable, "-m", "dfp_kfp.components.signatures", "--check"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120).returncode == 0


def test_a_component_file_missing_a_parameter_is_stale_and_regenerated(tmp_path):
    from dfp_kfp.components import signatures

    for name in signatures.COMPONENTS:
        (tmp_path / name).write_text((signatures.HERE / name).read_text())
    train = tmp_path / "train_kronodroid_autoencoder_component.py"
    train.write_text(train.read_text().replace("    patience: int,\n", ""))
    assert "patience: int" not in train.read_text()
    assert signatures.stale(rewrite=False, folder=tmp_path) == ["train_kronodroid_autoencoder_component.py"]
    assert signatures.stale(rewrite=True, folder=tmp_path) == ["train_kronodroid_autoencoder_component.py"]
    assert "    patience: int,\n" in train.read_text()
    assert signatures.stale(rewrite=False, folder=tmp_path) == []
    train.write_text(train.read_text().replace(signatures.END, ""))  # a broken marker is named, not guessed
    with pytest.raises(ValueError, match="marker lines"):
        signatures.stale(rewrite=False, folder=tmp_path)


def _import_blocks_inside_functions(path: Path):
    """(line, commented) of each run of import statements inside a function of ``path``:
    commented when the line above the run, or its first line, carries a comment."""
    import ast

    lines = path.read_text().splitlines()

    def runs(body):
        run = []
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                run.append(node)
                continue
            if run:
                yield run
                run = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue  # their own bodies are walked as functions
            for field in ("body", "orelse", "finalbody"):
                yield from runs(getattr(node, field, None) or [])
            for handler in getattr(node, "handlers", None) or []:
                yield from runs(handler.body)
        if run:
            yield run

    for fn in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for run in runs(fn.body):
                first = run[0].lineno
                yield first, lines[first - 2].strip().startswith("#") or "#" in lines[first - 1]


def test_imports_inside_functions_say_what_they_defer():
    """Imports sit at module level; one inside a function has a comment above it saying which
    heavy library it defers and why (or why it cannot be at the top)."""
    roots = ["apps", "core", "engines", "feature_stores", "orchestration"]
    silent = [f"{path.relative_to(REPO_ROOT)}:{line}" for root in roots for path in sorted((REPO_ROOT / root).rglob("*.py"))
              for line, commented in _import_blocks_inside_functions(path) if not commented]
    assert silent == [], f"imports inside functions without a comment saying why: {silent}"


def test_an_import_inside_a_function_without_a_comment_is_found(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\n\ndef f():\n    import json\n    import re\n\n    if os.sep:\n"
                      "        # Deferred (pandas): only f needs it.\n        import pandas\n    return json, re, pandas\n")
    assert list(_import_blocks_inside_functions(module)) == [(5, False), (10, True)]


def test_the_cli_offers_every_config_option():
    from typer.main import get_command

    from dfp_app.cli import app

    group = get_command(app)

    def options(*path) -> set[str]:
        command = group
        for name in path:
            command = command.commands[name]
        return {opt for p in command.params for opt in p.opts + p.secondary_opts}

    for path, cls in ((("transform",), TransformConfig), (("train",), TrainConfig)):
        for fld in params_of(cls):
            if fld.param.cli:
                assert fld.flag in options(*path), (path, fld.name)
    run_local = options("pipeline", "run-local")
    for cls in (TransformConfig, TrainConfig):
        for fld in params_of(cls):
            if fld.param.cli and fld.param.pipeline:
                assert fld.flag in run_local, fld.name


def test_step_functions_take_keyword_parameters_only():
    """No positional lists to keep in step: the components pass their parameters by name."""
    from dfp_kfp import steps

    for fn in (steps.spark_transform_step, steps.commit_merge_step, steps.train_step):
        kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD in kinds, fn.__name__


def test_an_option_several_commands_share_means_the_same_in_each():
    """--tracking-uri, --repo, --model, --version, --alias, --psi-bound and --top are defined once (cli.py's
    *_option helpers): every command that takes one shows the same help for it."""
    from typer.main import get_command

    from dfp_app.cli import app

    def commands(group, path=()):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from commands(command, (*path, name))
            else:
                yield (*path, name), command

    # Where training sets an alias on the version it registers, --alias names that alias
    # (TrainConfig's field), not one to look a version up by.
    sets_an_alias = {("train",), ("pipeline", "run-local")}
    helps: dict[str, dict[str, tuple]] = {}
    for path, command in commands(get_command(app)):
        for param in command.params:
            for flag in param.opts:
                if not (flag == "--alias" and path in sets_an_alias):
                    helps.setdefault(flag, {}).setdefault(param.help or "", path)
    for flag in ("--tracking-uri", "--repo", "--version", "--alias", "--psi-bound", "--top"):
        assert len(helps[flag]) == 1, (flag, helps[flag])
    assert all(text.startswith("Registered model name") for text in helps["--model"]), helps["--model"]


def test_the_core_finds_the_splits_readers_through_their_entry_points(monkeypatch):
    """dfp_core imports no plugin: the runtime loads Feast's retrieval, and the same rows left in
    Spark, through the entry point groups the package declares, and names the group when none
    (or several) is installed."""
    from dfp_core import runtime
    from dfp_core.errors import ConfigError
    from dfp_feast.plugin import load_splits, split_rows

    runtime._plugin.cache_clear()
    try:
        assert runtime.splits_reader() is load_splits
        assert runtime._plugin(runtime.SPLIT_ROWS_GROUP) is split_rows
        monkeypatch.setattr(runtime, "entry_points", lambda group: [])
        runtime._plugin.cache_clear()
        with pytest.raises(ConfigError, match="expected one entry point in group dfp.splits_reader, found none"):
            runtime.splits_reader()
    finally:
        runtime._plugin.cache_clear()

"""The pipeline's parameters, in one place: its own (where it runs), then every config field
the pipeline exposes (``dfp_core.params``). The pipeline's signature is built from them, and
the components' signatures are generated from them (``dfp_kfp.components.signatures``)."""

import inspect

from dfp_core.params import SparkJobConfig, TrainConfig, TransformConfig, pipeline_default, pipeline_fields, pipeline_type

# The pipeline's own parameters (where it runs); every other one is a config field's.
OWN_PARAMETERS = (
    ("run_transform", bool, True, "Run the transform (false: train on target_branch's head as it is)."),
    ("lakefs_endpoint", str, "http://lakefs:8000", "lakeFS as the steps reach it."),
    ("mlflow_tracking_uri", str, "http://mlflow:5000", "MLflow as the training step reaches it."),
)
SPARK_IMAGE_HELP = "Image of the SparkApplication's driver and executors (default: this version's tag)."
CONFIGS = (TransformConfig, TrainConfig, SparkJobConfig)


def _parameter(name: str, annotation: type, default, help_text: str) -> tuple[inspect.Parameter, str]:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation), \
        f"{name}: {help_text}"


def pipeline_parameters(spark_image: str) -> list[tuple[inspect.Parameter, str]]:
    """The pipeline's parameters, with their help: its own (``OWN_PARAMETERS``), every
    ``TransformConfig``, ``TrainConfig`` and ``SparkJobConfig`` field the pipeline exposes,
    under its pipeline name, with its pipeline default (``params.pipeline_default``: an unset
    optional value is "" or 0) and its help, then ``spark_image`` (default: ``spark_image``)."""
    params = [_parameter(*own) for own in OWN_PARAMETERS]
    named = {p.name for p, _ in params}
    for cls in CONFIGS:
        for name, fld in pipeline_fields(cls).items():
            if name not in named:  # lakefs_repository is both configs' repo
                params.append(_parameter(name, pipeline_type(fld), pipeline_default(fld), fld.param.help))
                named.add(name)
    params.append(_parameter("spark_image", str, spark_image, SPARK_IMAGE_HELP))
    return params

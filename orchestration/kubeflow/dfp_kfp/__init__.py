"""Kubeflow Pipelines: SparkOperator transform -> lakeFS commit + merge -> training + registration."""

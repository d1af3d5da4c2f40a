"""The ML core: the Lightning autoencoder and its data module, fitting, metrics,
plots, baselines, and the MLflow pieces of training, scoring and reproduction.
What the registered model runs (network, preprocessing, scorer) is ``dfp_core.serving``.

The package itself imports nothing heavy; import the submodule you need (torch,
lightning and mlflow load only with the submodules that use them).
"""

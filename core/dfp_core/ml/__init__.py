"""The ML core: preprocessing, the Lightning autoencoder and its data module,
metrics, plots, the MLflow pyfunc scorer and a plain-PyTorch benchmark loop.

The package itself imports nothing heavy; import the submodule you need, e.g.
``from dfp_core.ml.preprocess import Preprocessor`` (torch, lightning and
mlflow load only with the submodules that use them).
"""

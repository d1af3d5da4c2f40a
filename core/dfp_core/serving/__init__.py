"""What scoring needs, and nothing else: the network, the fitted preprocessing and the
MLflow scorer that the registered model runs.

The registered model is logged "from code": ``model_code.py`` is its python_model file
and these modules (with ``dfp_core/__init__.py`` and ``dfp_core/errors.py``) are its
``code_paths``, so it loads with numpy, pandas, torch and MLflow alone, unpickles
nothing, and imports no training module (Lightning, Spark, Feast, rich).
"""

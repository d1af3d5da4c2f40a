"""Feast definitions and retrieval for the KronoDroid autoencoder."""

from pathlib import Path

FEAST_REPO_DIR = Path(__file__).resolve().parents[1]
FEAST_CONFIG_FILE = FEAST_REPO_DIR / "feature_store_spark.yaml"

# The two commands a new user needs: `make quickstart` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DFP := $(VENV)/bin/dfp

.PHONY: setup setup-s3 quickstart test test-unit stack-up stack-down compile images lock-jars bench clean

setup:  ## venv + pinned deps, lakeFS binary, Spark jars (idempotent): the local profile and the quickstart
	@tools/scripts/setup.sh

setup-s3:  ## the s3 profile's servers: SeaweedFS (built, cached) and PostgreSQL (apt, as root)
	@tools/scripts/setup_s3.sh

quickstart: setup  ## stack + generated sample + the whole pipeline with KFP's local runner
	@$(DFP) quickstart

test: setup  ## the whole suite (starts its own stack on free ports), then the data-plane tests on the s3 profile
	@tools/scripts/setup_s3.sh || echo "warning: the s3 profile's servers are not ready (above); its tests will skip" >&2
	@$(VENV)/bin/pytest --durations=25
	@DFP_TEST_STACK_PROFILE=s3 $(VENV)/bin/pytest -m 'both_profiles or s3_profile'

test-unit: setup
	@$(VENV)/bin/pytest tests/unit

stack-up: setup
	@$(DFP) stack up

stack-down:
	@$(DFP) stack down

compile: setup  ## writes kronodroid_autoencoder_pipeline.yaml
	@$(PY) -c "from orchestration.kubeflow.dfp_kfp.pipelines.kronodroid_autoencoder_pipeline import compile_kronodroid_autoencoder_pipeline; print(compile_kronodroid_autoencoder_pipeline())"

images:  ## the train, Spark and MLflow images (version tag + latest); starts/installs the Docker engine if needed
	@tools/scripts/build_images.sh

lock-jars:  ## re-resolve tools/spark-jars/pom.xml into jars.lock (needs Maven)
	@tools/scripts/lock_spark_jars.sh

bench: setup
	@$(PY) bench/run_all.py

clean:
	rm -rf .pytest_cache build *.egg-info

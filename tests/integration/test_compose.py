"""docker-compose.yml started for real, with the images built here (the built-images
override), set up by tools/scripts/bootstrap_compose.sh, and the pipeline run against it by
the CLI with exactly the exports the bootstrap prints."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest

from dfp_core import lineage
from dfp_core.kronodroid.generator import generate
from dfp_core.stack import free_port
from tests.images import build_env, skip_without_disk

pytestmark = [pytest.mark.docker, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = REPO_ROOT / "tools" / "scripts" / "bootstrap_compose.sh"


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    for key, value in values.items():
        if value == "change-me":
            values[key] = secrets.token_hex(20)
    values.update(LAKEFS_ACCESS_KEY_ID="AKIA" + secrets.token_hex(8).upper(),
                  LAKEFS_PORT=str(free_port()), MLFLOW_PORT=str(free_port()))
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return values


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory):
    from dfp_kfp.docker_engine import DockerError, docker_client

    try:
        docker_client()
    except DockerError as exc:
        pytest.skip(f"{exc} (tools/scripts/docker_engine.sh installs and starts one, as root)")
    home = tmp_path_factory.mktemp("compose")
    env_path = home / "compose.env"
    values = _env_file(env_path)
    project = "dfptest" + uuid.uuid4().hex[:8]
    args = [str(BOOTSTRAP), "--built-images", "--env-file", str(env_path), "--project-name", project]
    compose = ["docker", "compose", "--env-file", str(env_path), "-p", project,
               "-f", "docker-compose.yml", "-f", "docker-compose.built-images.yml"]
    try:
        done = subprocess.run(args, cwd=home, capture_output=True, text=True, timeout=3000, env=build_env())
        skip_without_disk(done)
        assert done.returncode == 0, done.stderr[-4000:]
        exports = dict(re.findall(r"^export ([A-Z_]+)=(.*)$", done.stdout, re.M))
        yield {"args": args, "values": values, "exports": exports, "first": done, "home": home, "compose": compose}
    finally:
        subprocess.run(compose + ["down", "-v"], cwd=REPO_ROOT, capture_output=True, timeout=300)


def test_bootstrap_sets_lakefs_up_once_and_never_prints_the_secret(compose_stack):
    first = compose_stack["first"]
    assert "setting lakeFS up with admin admin" in first.stderr and "created repository kronodroid" in first.stderr
    again = subprocess.run(compose_stack["args"], cwd=compose_stack["home"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "lakeFS is set up" in again.stderr and "repository kronodroid already exists" in again.stderr
    secret = compose_stack["values"]["LAKEFS_SECRET_ACCESS_KEY"]
    for out in (first.stdout, first.stderr, again.stdout, again.stderr):
        assert secret not in out


def test_the_pipeline_runs_against_the_compose_stack(compose_stack, tmp_path):
    exports = {k: v.strip("'") for k, v in compose_stack["exports"].items()}
    exports["LAKEFS_SECRET_ACCESS_KEY"] = compose_stack["values"]["LAKEFS_SECRET_ACCESS_KEY"]
    data = tmp_path / "data"
    generate(data, 300, seed=21)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)), "DFP_HOME": str(tmp_path / "home"),
           **{k: os.environ[k] for k in ("DFP_CACHE_DIR", "JAVA_HOME", "XDG_CACHE_HOME") if k in os.environ}, **exports}
    dfp = str(Path(sys.executable).parent / "dfp")
    done = subprocess.run([dfp, "pipeline", "run-local", "--input", str(data), "--run-id", "compose", "--max-epochs", "1",
                           "--accelerator", "cpu"], env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    client = mlflow.MlflowClient(exports["MLFLOW_TRACKING_URI"])
    version = client.get_model_version(result["model_name"], result["model_version"])
    assert set(lineage.LINEAGE_TAGS) <= set(version.tags)
    assert version.tags["data.lakefs_ref"] == result["lakefs_commit"]
    assert version.tags["data.lakefs_repository"] == "kronodroid"
    # The objects are in the object store's buckets (SeaweedFS, in MinIO's place).
    compose = compose_stack["compose"]
    listing = subprocess.run(compose + ["exec", "-T", "minio", "bash", "-c", "echo s3.bucket.list | weed shell -master=minio:9333"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120).stdout
    sizes = dict(re.findall(r"^\s+(\S+)\s+size:(\d+)", listing, re.M))
    values = compose_stack["values"]
    assert int(sizes[values["LAKEFS_BUCKET"]]) > 0 and int(sizes[values["MLFLOW_BUCKET"]]) > 0, listing

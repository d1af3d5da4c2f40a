"""Issue 17: the pipeline's steps use a lakeFS user whose policy covers only its repository,
not the admin key, and the stack creates that user.

A private stack with lakeFS's ACL server (``DFP_LAKEFS_ACL=1``). KFP's local runner runs the
whole pipeline as a user runs it, with what ``stack.env`` holds: lakeFS records the pipeline
user as the committer of the run's commits. The same key pair is refused another repository
(reading it, writing it, creating one) and every auth call; the admin's pair is not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from dfp_core.stack import lakefs_acl
from dfp_core import stack as stack_mod
from dfp_core.kronodroid.generator import generate
from dfp_core.settings import StackSettings
from dfp_core.stack import free_port

# What a user's shell would not have: the session stack's home, ports and keys.
FOREIGN = ("LAKEFS_", "MLFLOW_TRACKING_", "DFP_HOME", "DFP_LAKEFS_", "DFP_MLFLOW_", "DFP_POSTGRES_PORT", "DFP_S3_",
           "DFP_STACK_PROFILE")


@pytest.fixture(scope="module")
def acl_stack(tmp_path_factory):
    settings = StackSettings(home=tmp_path_factory.mktemp("acl-home"), lakefs_port=free_port(),
                             mlflow_port=free_port(), lakefs_acl_port=free_port(), lakefs_acl=True)
    with stack_mod.running(settings, log=lambda m: None) as running:
        creds = running["credentials"]
        yield {
            "status": running["status"],
            "env": {**{k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}, **running["env"]},
            "api": creds["LAKEFS_ENDPOINT"] + "/api/v1",
            "pipeline": (creds["LAKEFS_ACCESS_KEY_ID"], creds["LAKEFS_SECRET_ACCESS_KEY"]),
            "admin": stack_mod.admin_keys(creds),
        }


def _dfp(acl_stack, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dfp_app.cli", *args], capture_output=True, text=True,
                          env={**acl_stack["env"], **extra_env}, timeout=900)


def test_the_stack_runs_the_acl_server_and_names_the_pipeline_user(acl_stack):
    services = acl_stack["status"]["services"]
    assert list(services) == ["lakefs-acl", "lakefs", "mlflow"]
    assert all(entry["healthy"] for entry in services.values())
    assert services["lakefs"]["pipeline_user"] == lakefs_acl.PIPELINE_USER
    who = requests.get(acl_stack["api"] + "/user", auth=acl_stack["pipeline"], timeout=10)
    assert who.status_code == 200 and who.json()["user"]["id"] == lakefs_acl.PIPELINE_USER
    assert acl_stack["pipeline"][0] != acl_stack["admin"][0]


def test_the_local_pipeline_runs_as_the_pipeline_user(acl_stack, tmp_path):
    generate(tmp_path / "data", 300, seed=8)
    result = _dfp(acl_stack, "pipeline", "run-local", "--input", str(tmp_path / "data"), "--run-id", "acl",
                  "--max-epochs", "1", "--batch-size", "64", "--latent-dim", "8", "--accelerator", "cpu",
                  "--no-baselines")
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    log = requests.get(acl_stack["api"] + "/repositories/kronodroid/refs/main/commits", auth=acl_stack["admin"],
                       params={"amount": 5}, timeout=10).json()["results"]
    assert log[0]["id"] == outputs["lakefs_commit"] and log[0]["metadata"]["dfp.run_id"] == "acl"
    # lakeFS records who made each commit: the run's commit and its merge, by the pipeline's user.
    assert {c["committer"] for c in log if c["metadata"].get("dfp.run_id") == "acl"} == {lakefs_acl.PIPELINE_USER}


def test_the_pipeline_key_is_refused_other_repositories_and_auth(acl_stack, tmp_path):
    api, pipeline, admin = acl_stack["api"], acl_stack["pipeline"], acl_stack["admin"]
    body = {"name": "other", "storage_namespace": "local://other", "default_branch": "main"}
    refused = requests.post(api + "/repositories", json=body, auth=pipeline, timeout=10)
    assert refused.status_code == 401 and "fs:CreateRepository" in refused.json()["message"]
    assert requests.post(api + "/repositories", json=body, auth=admin, timeout=10).status_code == 201
    head = requests.get(api + "/repositories/other/refs/main/commits", auth=admin, timeout=10).json()["results"][0]["id"]
    for method, path in (("GET", "/repositories/other/branches"), ("GET", "/repositories/other/refs/main/commits"),
                         ("POST", "/repositories/other/branches"), ("GET", "/auth/users"),
                         ("POST", "/auth/users")):
        answer = requests.request(method, api + path, auth=pipeline, timeout=10,
                                  json={"name": "b", "source": "main", "id": "someone"})
        assert answer.status_code == 401, (method, path, answer.status_code, answer.text[:200])
    assert requests.get(api + "/auth/users", auth=admin, timeout=10).status_code == 200
    # A whole transform into the other repository, with the key a step gets: one clear error line.
    generate(tmp_path / "data", 60, seed=3)
    result = _dfp(acl_stack, "transform", "--input", str(tmp_path / "data"), "--repo", "other", "--run-id", "denied")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last.startswith("error: ") and "permission" in last.lower(), result.stderr[-2000:]
    after = requests.get(api + "/repositories/other/refs/main/commits", auth=admin, timeout=10).json()["results"][0]["id"]
    assert after == head
    branches = requests.get(api + "/repositories/other/branches", auth=admin, timeout=10).json()["results"]
    assert [b["id"] for b in branches] == ["main"]

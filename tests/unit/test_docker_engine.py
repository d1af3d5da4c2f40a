"""Without a usable Docker engine, the container path stops with one line naming the
cause and what fixes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dfp_kfp import docker_engine
from dfp_kfp.docker_engine import DockerError, docker_client

DEAD_SOCKET = "unix:///nonexistent/dfp-test/docker.sock"


def test_an_engine_that_does_not_answer(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", DEAD_SOCKET)
    with pytest.raises(DockerError, match=r"the Docker engine is not running or not reachable .*docker_engine\.sh"):
        docker_client()


def test_no_engine_at_all(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", DEAD_SOCKET)
    monkeypatch.setattr(docker_engine.shutil, "which", lambda name: None)
    with pytest.raises(DockerError, match=r"no Docker engine on this machine: install one .*apt-get install docker\.io"):
        docker_client()


def test_run_local_with_the_docker_runner_says_what_is_missing_in_one_line(tmp_path):
    dfp = Path(sys.executable).with_name("dfp")
    env = {**os.environ, "DOCKER_HOST": DEAD_SOCKET, "DFP_HOME": str(tmp_path)}
    done = subprocess.run([str(dfp), "pipeline", "run-local", "--runner", "docker"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: the Docker engine is not running or not reachable"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr

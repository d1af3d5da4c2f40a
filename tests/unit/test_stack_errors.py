"""The stack's one-line explanations for common set-up problems."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dfp_core import stack as stack_mod
from dfp_core.errors import ConfigError, StackError
from dfp_core.settings import SparkSettings, StackSettings

REPO_ROOT = Path(__file__).resolve().parents[2]


def _dfp(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "dfp_app.cli", *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})},
    )


def test_corrupt_state_file_gives_one_line_advice(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "state.json").write_text("{not json")
    result = _dfp("stack", "status", env={"DFP_HOME": str(home)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "is corrupt" in lines[0] and "dfp stack reset --yes" in lines[0]


def test_home_that_is_a_file_is_explained(tmp_path):
    home = tmp_path / "home"
    home.write_text("oops")
    with pytest.raises(StackError, match="is a file, not a directory"):
        stack_mod.status(StackSettings(home=home))


def test_taken_port_is_named(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = _dfp("stack", "up", "--lakefs-port", str(port), env={"DFP_HOME": str(tmp_path / "h")})
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert f"port {port}" in last and "taken" in last and "DFP_LAKEFS_PORT" in last
    assert f"pid {os.getpid()} (" in last  # the program holding it, by pid and command line


def test_status_names_a_foreign_process_on_a_service_port(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        status = stack_mod.status(StackSettings(home=tmp_path / "h", lakefs_port=18002, mlflow_port=port))
        shown = _dfp("stack", "status", env={"DFP_HOME": str(tmp_path / "h"), "DFP_MLFLOW_PORT": str(port)})
    mlflow = status["services"]["mlflow"]
    assert mlflow["running"] is False and mlflow["port_taken_by"]["pid"] == os.getpid()
    assert "pytest" in mlflow["port_taken_by"]["cmdline"] or "python" in mlflow["port_taken_by"]["cmdline"]
    assert "port_taken_by" not in status["services"]["lakefs"]
    assert f"held by another program: pid {os.getpid()}" in shown.stderr, shown.stdout + shown.stderr
    assert json.loads(shown.stdout.strip().splitlines()[-1])["services"]["mlflow"]["port_taken_by"]["pid"] == os.getpid()


def test_missing_java_is_explained(monkeypatch):
    from dfp_core.spark import require_java

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="Java .* is required"):
        require_java(SparkSettings(java_home=None))


def test_missing_go_is_explained(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DFP_CACHE_DIR": str(tmp_path / "cache")}
    if any(Path(d, "go").exists() for d in ("/usr/bin", "/bin")):
        pytest.skip("go is installed in /usr/bin; cannot hide it")
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "tools/scripts/build_lakefs.sh")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 1
    assert "Go is not installed" in result.stderr and "LAKEFS_BIN" in result.stderr


def test_missing_lakefs_binary_is_explained(tmp_path, monkeypatch):
    settings = StackSettings.from_env({"DFP_CACHE_DIR": str(tmp_path / "empty-cache"), "DFP_HOME": str(tmp_path)})
    with pytest.raises(StackError, match="not built yet.*make setup"):
        stack_mod.lakefs_binary(settings)


def test_credentials_file_is_private_and_stable(tmp_path):
    settings = StackSettings(home=tmp_path / "h", lakefs_port=18001, mlflow_port=15001)
    first = stack_mod.ensure_credentials(settings)
    second = stack_mod.ensure_credentials(settings)
    assert first["LAKEFS_SECRET_ACCESS_KEY"] == second["LAKEFS_SECRET_ACCESS_KEY"]
    assert len(first["LAKEFS_ACCESS_KEY_ID"]) <= 20
    assert ((settings.home / "stack.env").stat().st_mode & 0o777) == 0o600
    assert (settings.home.stat().st_mode & 0o777) == 0o700
    assert first["LAKEFS_ENDPOINT"] == "http://127.0.0.1:18001"


def test_an_existing_dfp_home_is_made_private(tmp_path):
    home = tmp_path / "shared-home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    stack_mod.ensure_credentials(StackSettings(home=home, lakefs_port=18003, mlflow_port=15003))
    assert (home.stat().st_mode & 0o777) == 0o700

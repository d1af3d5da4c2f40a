"""The s3 profile's set-up, without starting servers: which profile a home has, the
generated secrets and where they go (the environment of the servers, never a command
line or a config file), and the listeners SeaweedFS is not allowed to open."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dfp_core.stack import postgres as postgres_server, seaweedfs as seaweedfs_server
from dfp_core import stack as stack_mod
from dfp_core.stack import servers
from dfp_core.errors import ConfigError, StackError
from dfp_core.settings import StackSettings


def _settings(tmp_path: Path, **values) -> StackSettings:
    return StackSettings(home=tmp_path / "home", lakefs_port=18010, mlflow_port=18011, postgres_port=18012,
                         s3_port=18013, **values)


def test_a_home_keeps_the_profile_it_was_set_up_with(tmp_path):
    settings = _settings(tmp_path, profile="s3")
    assert stack_mod.profile_of(settings) == "s3"
    stack_mod.record_profile(settings, "s3")
    assert stack_mod.profile_of(_settings(tmp_path)) == "s3"  # a later plain `up` / `status` follows it
    with pytest.raises(StackError, match="holds a s3-profile stack, not local.*another DFP_HOME"):
        stack_mod.profile_of(_settings(tmp_path, profile="local"))


def test_a_home_from_before_profiles_is_local(tmp_path):
    settings = _settings(tmp_path)
    (settings.home / "lakefs" / "metadata").mkdir(parents=True)
    with pytest.raises(StackError, match="holds a local-profile stack, not s3"):
        stack_mod.profile_of(_settings(tmp_path, profile="s3"))


def test_an_unknown_profile_is_refused_by_name():
    with pytest.raises(ConfigError, match="DFP_STACK_PROFILE must be one of local, s3, got 'minio'"):
        StackSettings.from_env({"DFP_STACK_PROFILE": "minio"})
    result = subprocess.run([sys.executable, "-m", "dfp_app.cli", "stack", "up", "--profile", "minio"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--profile must be one of local, s3" in result.stderr.strip().splitlines()[-1]


def test_s3_secrets_are_generated_once_and_kept_private(tmp_path):
    settings = _settings(tmp_path, profile="s3")
    first = stack_mod.ensure_credentials(settings, "s3")
    second = stack_mod.ensure_credentials(settings, "s3")
    for key in ("DFP_S3_ACCESS_KEY_ID", "DFP_S3_SECRET_ACCESS_KEY", "DFP_POSTGRES_PASSWORD"):
        assert first[key] and first[key] == second[key]
    assert first["LAKEFS_STORAGE_NAMESPACE"] == "s3://dfp-lakefs/{repo}"
    assert ((settings.home / "stack.env").stat().st_mode & 0o777) == 0o600
    local = stack_mod.ensure_credentials(_settings(tmp_path / "other"), "local")
    assert "DFP_S3_SECRET_ACCESS_KEY" not in local and "LAKEFS_STORAGE_NAMESPACE" not in local


def test_server_secrets_go_only_into_the_servers_environment(tmp_path, monkeypatch):
    settings = _settings(tmp_path, profile="s3")
    creds = stack_mod.ensure_credentials(settings, "s3")
    monkeypatch.setattr(servers, "lakefs_binary", lambda s: Path("/bin/true"))
    secrets = [creds[k] for k in ("DFP_S3_SECRET_ACCESS_KEY", "DFP_POSTGRES_PASSWORD", "LAKEFS_SECRET_ACCESS_KEY")]
    for cmd, env in (stack_mod.lakefs_command(settings, creds, "s3"), stack_mod.mlflow_command(settings, creds, "s3")):
        assert not any(secret in arg for secret in secrets for arg in cmd)
        assert any(creds["DFP_POSTGRES_PASSWORD"] in value for value in env.values())
    config = (settings.home / "lakefs" / "config.yaml").read_text()
    assert not any(secret in config for secret in secrets)
    assert json.loads(config)["blockstore"]["type"] == "s3" and json.loads(config)["database"]["type"] == "postgres"
    _, mlflow_env = stack_mod.mlflow_command(settings, creds, "s3")
    assert mlflow_env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://dfp-mlflow/artifacts"
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://dfp:")


def test_mlflow_runs_its_basic_auth_app_in_the_s3_profile_with_secrets_only_in_its_environment(tmp_path):
    settings = _settings(tmp_path, profile="s3")
    creds = stack_mod.ensure_credentials(settings, "s3")
    assert creds["MLFLOW_TRACKING_USERNAME"] == "admin" and len(creds["MLFLOW_TRACKING_PASSWORD"]) == 32
    assert stack_mod.ensure_credentials(settings, "s3")["MLFLOW_TRACKING_PASSWORD"] == creds["MLFLOW_TRACKING_PASSWORD"]
    cmd, env = stack_mod.mlflow_command(settings, creds, "s3")
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == "admin"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == creds["MLFLOW_TRACKING_PASSWORD"]
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == creds["DFP_MLFLOW_FLASK_SECRET"]
    ini = Path(env["MLFLOW_AUTH_CONFIG_PATH"]).read_text()
    assert "default_permission = NO_PERMISSIONS" in ini and f"sqlite:///{settings.home / 'mlflow'}" in ini
    secrets = (creds["MLFLOW_TRACKING_PASSWORD"], creds["DFP_MLFLOW_FLASK_SECRET"])
    assert not any(secret in ini or secret in " ".join(cmd) for secret in secrets)


def test_mlflow_auth_is_on_in_every_profile_unless_turned_off(tmp_path):
    default = _settings(tmp_path / "a")
    assert default.mlflow_auth_for("local") and default.mlflow_auth_for("s3")
    creds = stack_mod.ensure_credentials(default, "local")
    assert "--app-name" in stack_mod.mlflow_command(default, creds, "local")[0] and creds["MLFLOW_TRACKING_PASSWORD"]
    off = StackSettings.from_env({"DFP_HOME": str(tmp_path / "b"), "DFP_MLFLOW_AUTH": "0"})
    assert not off.mlflow_auth_for("local") and not off.mlflow_auth_for("s3")
    creds = stack_mod.ensure_credentials(off, "local")
    assert "MLFLOW_TRACKING_PASSWORD" not in creds
    assert "--app-name" not in stack_mod.mlflow_command(off, creds, "local")[0]


def test_seaweedfs_opens_only_loopback_listeners_it_needs(tmp_path):
    ports = {name: 30000 + i for i, name in enumerate(seaweedfs_server.INTERNAL_PORTS)}
    identities = seaweedfs_server.write_identities(tmp_path, "AK", "SK")
    assert (identities.stat().st_mode & 0o777) == 0o600
    cmd = seaweedfs_server.server_command(Path("/x/weed"), tmp_path, "127.0.0.1", 18333, ports, identities)
    flags = dict(arg.lstrip("-").split("=", 1) for arg in cmd[2:] if "=" in arg)
    assert flags["ip.bind"] == "127.0.0.1" and flags["s3.port"] == "18333"
    assert flags["s3.port.iceberg"] == "0" and flags["s3.port.lance"] == "0" and flags["master.telemetry"] == "false"
    assert flags["volume.minFreeSpace"] == "256MiB"  # a fixed reserve, not 1% of whatever disk it is on
    assert {flags[k] for k in ("master.port.grpc", "volume.port.grpc", "filer.port.grpc", "s3.port.grpc")} == {
        str(ports[k]) for k in ("master_grpc", "volume_grpc", "filer_grpc", "s3_grpc")}


def test_missing_servers_are_explained(tmp_path):
    with pytest.raises(StackError, match="PostgreSQL is not installed.*apt-get install postgresql"):
        postgres_server.bin_dir(tmp_path / "no-pg")
    with pytest.raises(StackError, match="SeaweedFS server is not built yet.*make setup-s3"):
        seaweedfs_server.binary(Path(__file__).resolve().parents[2], tmp_path / "empty-cache", None)


def test_postgres_data_is_outside_a_private_home_only_as_root(tmp_path, monkeypatch):
    monkeypatch.setattr(postgres_server.os, "geteuid", lambda: 1000)
    assert postgres_server.data_dir(tmp_path) == tmp_path / "postgres" / "data"
    monkeypatch.setattr(postgres_server.os, "geteuid", lambda: 0)
    root_dir = postgres_server.data_dir(tmp_path)
    assert root_dir.parent == postgres_server.ROOT_DATA_BASE and root_dir != postgres_server.data_dir(tmp_path / "b")


def test_a_failed_presigned_transfer_names_the_object_store_not_lakefs():
    import urllib3

    from dfp_core.errors import LakeFSError
    from dfp_core.lakefs_ops import LakeFS
    from dfp_core.settings import LakeFSSettings

    client = LakeFS(LakeFSSettings(endpoint="http://127.0.0.1:8000", access_key_id="AK", secret_access_key="SK"))
    signed = "/bucket/key?X-Amz-Credential=DFPS3KEYID&X-Amz-Signature=abc"
    for host, port, expected in (("127.0.0.1", 8333, "lakeFS's object store at http://127.0.0.1:8333"),
                                 ("127.0.0.1", 8000, "cannot reach lakeFS at http://127.0.0.1:8000")):
        refused = urllib3.exceptions.NewConnectionError(None, "Connection refused")
        failure = urllib3.exceptions.MaxRetryError(urllib3.HTTPConnectionPool(host, port), signed, refused)
        with pytest.raises(LakeFSError) as caught, client._errors("upload x", "repo"):
            raise failure
        assert expected in str(caught.value)
        assert "Signature" not in str(caught.value) and "DFPS3KEYID" not in str(caught.value)

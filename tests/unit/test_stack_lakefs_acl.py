"""The stack's lakeFS ACL set-up without servers: the pipeline's policy names one repository,
a home keeps the auth store it was set up with, the admin's pair is kept apart from the
pipeline's, and lakeFS is pointed at the ACL server with the admin's pair as its installation key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfp_core.stack import lakefs_acl
from dfp_core import stack as stack_mod
from dfp_core.errors import StackError
from dfp_core.settings import StackSettings


def _settings(tmp_path: Path, **values) -> StackSettings:
    fake_lakefs = tmp_path / "bin" / "lakefs"
    fake_lakefs.parent.mkdir(parents=True, exist_ok=True)
    fake_lakefs.touch(mode=0o755)
    return StackSettings(home=tmp_path / "home", lakefs_port=18020, mlflow_port=18021, lakefs_acl_port=18022,
                         lakefs_bin=fake_lakefs, **values)


def test_the_pipeline_policy_covers_one_repository_and_no_auth_action():
    statements = lakefs_acl.pipeline_statements("kronodroid", "s3://dfp-lakefs/kronodroid")
    resources = {s["resource"] for s in statements}
    assert resources == {"arn:lakefs:fs:::repository/kronodroid", "arn:lakefs:fs:::repository/kronodroid/*",
                         "arn:lakefs:fs:::namespace/s3://dfp-lakefs/kronodroid"}
    actions = {a for s in statements for a in s["action"]}
    assert not any(a.startswith("auth:") for a in actions) and "*" not in actions
    assert all(s["effect"] == "allow" for s in statements)


def test_the_flag_is_read_from_the_environment():
    assert StackSettings.from_env({"DFP_LAKEFS_ACL": "1", "DFP_LAKEFS_ACL_PORT": "18123"}).lakefs_acl is True
    assert StackSettings.from_env({"DFP_LAKEFS_ACL": "0"}).lakefs_acl is False
    assert StackSettings.from_env({}).lakefs_acl is None


def test_a_home_keeps_the_auth_store_it_was_set_up_with(tmp_path):
    assert stack_mod.lakefs_acl_of(_settings(tmp_path)) is False  # local: off unless asked
    assert stack_mod.lakefs_acl_of(_settings(tmp_path, profile="s3")) is True  # s3: on unless turned off
    assert stack_mod.lakefs_acl_of(_settings(tmp_path, profile="s3", lakefs_acl=False)) is False
    settings = _settings(tmp_path, lakefs_acl=True)
    creds = stack_mod.ensure_credentials(settings, "local", acl=True)
    stack_mod.lakefs_command(settings, creds, "local")  # lakeFS set up with the ACL server
    assert stack_mod.lakefs_acl_of(_settings(tmp_path)) is True  # a later plain `up` follows the home
    with pytest.raises(StackError, match=r"set up with the ACL server, so DFP_LAKEFS_ACL=0 cannot apply"):
        stack_mod.lakefs_acl_of(_settings(tmp_path, lakefs_acl=False))
    plain = _settings(tmp_path / "plain")
    stack_mod.lakefs_command(plain, stack_mod.ensure_credentials(plain, "local"), "local")
    with pytest.raises(StackError, match=r"set up without the ACL server, so DFP_LAKEFS_ACL=1 cannot apply"):
        stack_mod.lakefs_acl_of(_settings(tmp_path / "plain", lakefs_acl=True))
    # A home set up before the ACL server existed stays without it, in the s3 profile too.
    assert stack_mod.lakefs_acl_of(_settings(tmp_path / "plain", profile="s3")) is False


def test_the_acl_server_starts_before_lakefs_and_is_stopped_after_it():
    assert [s.name for s in stack_mod.services("local", acl=True)] == ["lakefs-acl", "lakefs", "mlflow"]
    assert [s.name for s in stack_mod.services("s3", acl=True)] == ["postgres", "seaweedfs", "lakefs-acl", "lakefs",
                                                                    "mlflow"]
    assert [s.name for s in stack_mod.services("local")] == ["lakefs", "mlflow"]


def test_with_the_acl_server_the_admin_pair_is_kept_apart_from_the_pipelines(tmp_path):
    settings = _settings(tmp_path, lakefs_acl=True)
    creds = stack_mod.ensure_credentials(settings, "local", acl=True)
    admin = stack_mod.admin_keys(creds)
    assert admin == (creds["DFP_LAKEFS_ADMIN_ACCESS_KEY_ID"], creds["DFP_LAKEFS_ADMIN_SECRET_ACCESS_KEY"])
    assert admin[0] != creds["LAKEFS_ACCESS_KEY_ID"] and admin[1] != creds["LAKEFS_SECRET_ACCESS_KEY"]
    assert len(admin[0]) <= 20 and len(creds["LAKEFS_ACCESS_KEY_ID"]) <= 20  # lakeFS's limit on key ids
    assert stack_mod.ensure_credentials(settings, "local", acl=True) == creds  # generated once
    plain = stack_mod.ensure_credentials(_settings(tmp_path / "plain"), "local")
    assert stack_mod.admin_keys(plain) == (plain["LAKEFS_ACCESS_KEY_ID"], plain["LAKEFS_SECRET_ACCESS_KEY"])
    assert "DFP_LAKEFS_ADMIN_ACCESS_KEY_ID" not in plain


def test_lakefs_asks_the_acl_server_and_installs_the_admin_pair(tmp_path):
    settings = _settings(tmp_path, lakefs_acl=True)
    creds = stack_mod.ensure_credentials(settings, "local", acl=True)
    cmd, env = stack_mod.lakefs_command(settings, creds, "local")
    config = json.loads(Path(cmd[cmd.index("--config") + 1]).read_text())
    assert config["auth"] == {"ui_config": {"rbac": "simplified"}, "api": {"endpoint": "http://127.0.0.1:18022/api/v1"}}
    assert (env["LAKEFS_INSTALLATION_ACCESS_KEY_ID"], env["LAKEFS_INSTALLATION_SECRET_ACCESS_KEY"]) == \
        stack_mod.admin_keys(creds)
    with pytest.raises(StackError, match="ACL server is not built.*beside the lakeFS binary.*make setup"):
        stack_mod.lakefs_acl_command(settings, creds, "local")
    acl_bin = settings.lakefs_bin.parent / "lakefs-acl"
    acl_bin.touch(mode=0o755)
    cmd, env = stack_mod.lakefs_acl_command(settings, creds, "local")
    assert cmd[0] == str(acl_bin)
    assert env["ACLSERVER_ENCRYPT_SECRET_KEY"] == creds["DFP_LAKEFS_ENCRYPT_SECRET"]  # lakeFS decrypts its keys
    acl_config = json.loads(Path(cmd[cmd.index("--config") + 1]).read_text())
    assert acl_config["listen_address"] == "127.0.0.1:18022"  # no auth of its own: loopback only
    assert not any(value in Path(cmd[cmd.index("--config") + 1]).read_text() for value in creds.values())


def test_without_the_acl_server_lakefs_keeps_its_basic_auth(tmp_path):
    settings = _settings(tmp_path)
    creds = stack_mod.ensure_credentials(settings, "local")
    cmd, _ = stack_mod.lakefs_command(settings, creds, "local")
    assert "auth" not in json.loads(Path(cmd[cmd.index("--config") + 1]).read_text())


def test_in_the_s3_profile_the_acl_server_keeps_its_users_in_postgresql(tmp_path):
    settings = _settings(tmp_path, profile="s3", postgres_port=18023)
    (settings.lakefs_bin.parent / "lakefs-acl").touch(mode=0o755)
    creds = stack_mod.ensure_credentials(settings, "s3", acl=True)
    cmd, env = stack_mod.lakefs_acl_command(settings, creds, "s3")
    config_text = Path(cmd[cmd.index("--config") + 1]).read_text()
    assert json.loads(config_text)["database"]["type"] == "postgres"
    url = env["ACLSERVER_DATABASE_POSTGRES_CONNECTION_STRING"]
    assert url.startswith("postgres://dfp:") and "@127.0.0.1:18023/lakefs_acl?" in url
    assert creds["DFP_POSTGRES_PASSWORD"] in url and creds["DFP_POSTGRES_PASSWORD"] not in config_text

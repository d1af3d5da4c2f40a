"""MLflow basic-auth credentials reach MLflow's client through the runtime context (MLflow's
request-header plugin), never through os.environ, and only while that runtime is open."""

from __future__ import annotations

import base64
import os

import pytest

from dfp_core.tracking import auth as tracking_auth
from dfp_core.runtime import Runtime


@pytest.fixture(autouse=True)
def no_open_runtime(monkeypatch):
    """As in a fresh process: the test session's own runtime (open while the integration tests
    run, with the stack's MLflow login) does not count here."""
    monkeypatch.setattr(tracking_auth, "_active", [])


def _authorization() -> str | None:
    from mlflow.tracking.request_header.registry import resolve_request_headers

    return resolve_request_headers().get("Authorization")


def test_a_runtime_with_mlflow_credentials_authenticates_this_process_until_it_closes(tmp_path):
    env = {"DFP_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "s3cr3t"}
    assert _authorization() is None
    environ_before = dict(os.environ)  # after MLflow loaded its plugins (Feast's sets variables on import)
    with Runtime.from_env(env) as rt:
        assert _authorization() == "Basic " + base64.b64encode(b"alice:s3cr3t").decode()
        assert "s3cr3t" not in repr(rt.settings)
        with Runtime.from_env({**env, "MLFLOW_TRACKING_PASSWORD": "other"}):  # the latest runtime's pair is sent
            assert _authorization() == "Basic " + base64.b64encode(b"alice:other").decode()
        assert _authorization() == "Basic " + base64.b64encode(b"alice:s3cr3t").decode()
    assert _authorization() is None
    assert dict(os.environ) == environ_before


def test_credentials_from_the_stack_env_file_and_for_child_processes(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "stack.env").write_text("MLFLOW_TRACKING_USERNAME=admin\nMLFLOW_TRACKING_PASSWORD=from-file\n")
    with Runtime.from_env({"DFP_HOME": str(home)}) as rt:
        assert rt.settings.mlflow.credential_env() == {"MLFLOW_TRACKING_USERNAME": "admin",
                                                       "MLFLOW_TRACKING_PASSWORD": "from-file"}
        assert _authorization() == "Basic " + base64.b64encode(b"admin:from-file").decode()
    with Runtime.from_env({"DFP_HOME": str(tmp_path / "empty")}) as rt:
        assert rt.settings.mlflow.credential_env() == {} and _authorization() is None


def test_mlflow_requests_from_a_runtime_do_not_import_feast(tmp_path):
    """Feast's request-header plugin is left out when a runtime first talks to MLflow: loading
    it imports all of Feast (seconds of typeguard instrumentation) in `dfp score` and `dfp
    serve`. Our own plugin is still loaded, and still sends the credentials."""
    import importlib.metadata

    plugins = [e.value for e in importlib.metadata.entry_points(group="mlflow.request_header_provider")]
    assert any(v.startswith("feast.") for v in plugins), plugins  # else this test would prove nothing
    code = (
        "import sys, base64\n"
        "from dfp_core.runtime import Runtime\n"
        f"rt = Runtime.from_env({{'DFP_HOME': {str(tmp_path)!r}, 'MLFLOW_TRACKING_USERNAME': 'alice', "
        "'MLFLOW_TRACKING_PASSWORD': 's3cr3t'})\n"
        "rt.mlflow\n"
        "from mlflow.tracking.request_header.registry import _request_header_provider_registry, resolve_request_headers\n"
        "names = sorted(type(p).__name__ for p in _request_header_provider_registry)\n"
        "print(names, 'feast' in sys.modules, 'typeguard' in sys.modules, resolve_request_headers()['Authorization'])\n"
    )
    out = _python(code)
    basic = "Basic " + base64.b64encode(b"alice:s3cr3t").decode()
    assert out.split() == ["['BasicAuthHeaderProvider',", "'DatabricksRequestHeaderProvider',",
                                   "'DefaultRequestHeaderProvider']", "False", "False", *basic.split()]


def test_tracking_from_an_image_without_the_stack_extra(tmp_path):
    """The train image has no `stack` extra (boto3, psycopg2): `Runtime.tracking()`, which
    first waits for a starting server of the home's stack, must import without it and leave
    an absent server to its own one-line check."""
    import socket
    import textwrap

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        uri = "http://127.0.0.1:%d" % probe.getsockname()[1]  # closed again: nothing listens there
    out = _python(textwrap.dedent(f"""
        import sys
        for name in ("boto3", "botocore", "psycopg2"):
            sys.modules[name] = None  # as if not installed
        from dfp_core.errors import TrackingError
        from dfp_core.runtime import Runtime
        rt = Runtime.from_env({{"DFP_HOME": {str(tmp_path / "home")!r}, "MLFLOW_TRACKING_URI": {uri!r}}})
        try:
            with rt.tracking():
                pass
        except TrackingError as exc:
            print(exc)
    """))
    assert out.startswith(f"MLflow tracking server at {uri} is unreachable"), out


def _python(code: str) -> str:
    """What a fresh interpreter prints running ``code`` (it must exit 0)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout

"""Serving a model over REST with MLflow's scoring contract: ``GET /ping``, ``POST
/invocations`` with ``{"dataframe_split": {"columns": [...], "data": [[...]]}}`` or
``dataframe_records``, answered with ``{"predictions": [...]}``. From this environment
(``--env-manager local``) the server is ours (``serve_app``: a client's mistake is a 4xx
with a short message); from an environment built from the model's requirements, MLflow's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from dfp_core.errors import TrackingError
from dfp_core.progress import note, warn
from dfp_core.tracking.registry import resolve_model_uri, verified_copy

if TYPE_CHECKING:  # pragma: no cover
    from dfp_core.runtime import Runtime

ENV_MANAGERS = ("local", "virtualenv", "uv")


def scoring_server_command(model_uri: str, host: str, port: int, env_manager: str = "local",
                           workers: int = 1) -> list[str]:
    """The server for ``model_uri``: with ``env_manager`` "local", our own (``serve_app``) in
    this environment, from a model folder; with "virtualenv"/"uv", ``mlflow models serve`` in
    an environment built from the model's own requirements."""
    if env_manager not in ENV_MANAGERS:
        raise TrackingError(f"env manager must be one of {', '.join(ENV_MANAGERS)}, got {env_manager!r}")
    if env_manager == "local":
        return [sys.executable, "-m", "dfp_core.ml.serve_app", "--model-dir", model_uri, "--host", host,
                "--port", str(port)]
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "-h", host, "-p", str(port),
            "-w", str(workers), "--env-manager", env_manager]


def wait_until_ready(server: subprocess.Popen, url: str, timeout_s: float, ready_path: str = "/ping") -> None:
    """Until ``url`` + ``ready_path`` answers 200 (MLflow's contract: /ping; MLServer's V2:
    /v2/models/<name>/ready); TrackingError if the server exits first or the time runs out."""
    # Deferred (requests): only waiting and downloading need it.
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise TrackingError(f"the scoring server exited with code {server.returncode} before it answered (its log is above)")
        try:
            if requests.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TrackingError(f"the scoring server did not answer {url}{ready_path} within {timeout_s:.0f}s")


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen


@contextlib.contextmanager
def scoring_server(rt: "Runtime", model_uri: str, env: Mapping[str, str], host: str = "127.0.0.1", port: int = 5001,
                   env_manager: str = "local", ready_timeout_s: float = 600.0) -> Iterator[RunningServer]:
    """A running scoring server for ``model_uri`` (resolved against the runtime's tracking
    server), stopped on exit. A registered version is served from a copy checked against its
    recorded digests. ``env``: the server's environment, to which the tracking URI is added."""
    version = resolve_model_uri(rt, model_uri)  # a clear error before a server starts for nothing
    with contextlib.ExitStack() as stack:
        if version is None:
            warn(f"{model_uri} is not a registered version: its files are not checked against recorded digests")
            source = model_uri
            if env_manager == "local" and not Path(model_uri).is_dir():  # our server loads a folder
                source = _downloaded(rt, model_uri, Path(stack.enter_context(tempfile.TemporaryDirectory())))
        else:
            source = str(stack.enter_context(verified_copy(rt, version)))
        yield stack.enter_context(_server(rt, source, env, host, port, env_manager, ready_timeout_s))


def _downloaded(rt: "Runtime", model_uri: str, dest: Path) -> str:
    # Deferred (MLflow): only waiting and downloading need it.
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with rt.tracking():
            return mlflow.artifacts.download_artifacts(model_uri, dst_path=str(dest))
    except MlflowException as exc:
        raise TrackingError(f"cannot download {model_uri} from {rt.settings.mlflow.tracking_uri}: {exc.message}") from None


@contextlib.contextmanager
def _server(rt: "Runtime", model_uri: str, env: Mapping[str, str], host: str, port: int, env_manager: str,
            ready_timeout_s: float) -> Iterator[RunningServer]:
    # MLflow runs `uvicorn` (and, with virtualenv/uv, its installers) by name: this
    # environment's bin/ first, also when dfp was started without activating it.
    path = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
    child_env = {**env, "PATH": path, "MLFLOW_TRACKING_URI": rt.settings.mlflow.tracking_uri,
                 "MLFLOW_DISABLE_TELEMETRY": "true", **rt.settings.mlflow.credential_env()}
    url = f"http://{host}:{port}"
    process = subprocess.Popen(scoring_server_command(model_uri, host, port, env_manager), env=child_env,
                               start_new_session=True)
    try:
        wait_until_ready(process, url, ready_timeout_s)
        yield RunningServer(url, process)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """The server forks workers: stop its whole process group."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def serve(rt: "Runtime", model_uri: str, env: Mapping[str, str], host: str, port: int, env_manager: str) -> int:
    """Serve until interrupted (Ctrl-C, SIGTERM: exit code 0) or the server stops (its exit code)."""
    try:
        with scoring_server(rt, model_uri, env, host, port, env_manager) as server:
            note(f"serving {model_uri} at {server.url}: GET {server.url}/ping, POST {server.url}/invocations "
                 "(Ctrl-C stops)")
            while server.process.poll() is None:
                time.sleep(1)
            return server.process.returncode
    except KeyboardInterrupt:  # the server is stopped on the way out
        return 0

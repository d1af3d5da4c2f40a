"""The MLflow Model Registry: a version registered together with its lineage tags, a model URI
resolved to its version, and a registered version loaded from a copy whose files were checked
against what its training recorded (``integrity``).

Model lookup takes the command's context (``TrackingContext``: the runtime satisfies it) for
its MLflow client, server and verification key."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Iterator, Protocol

from dfp_core.errors import TrackingError
from dfp_core.progress import warn
from dfp_core.tracking.integrity import verified_model_dir

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

    from dfp_core.settings import Settings


class TrackingContext(Protocol):
    """What model lookup needs of a command's runtime."""

    settings: "Settings"

    @property
    def mlflow(self) -> "MlflowClient": ...

    def tracking(self) -> ContextManager[Any]: ...


def register_with_lineage(client, model_uri: str, name: str, tags: dict[str, str], alias: str | None = None,
                          description: str | None = None) -> str:
    """Create a model version whose lineage tags arrive in the same request.

    ``mlflow.register_model(..., tags=...)`` sends the tags with the version's
    create call, so a version never exists without them. Call it inside
    ``use_tracking_server``; ``client`` (same server) sets the description and the
    alias. Returns the version.
    """
    # Deferred (MLflow): MLflow loads on first use.
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        version = mlflow.register_model(model_uri, name, tags=tags)
        if description:
            client.update_model_version(name, version.version, description=description)
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as exc:
        raise TrackingError(f"registering {name!r} in the MLflow Model Registry failed: {exc.message}") from None
    return str(version.version)


def resolve_model_uri(rt: "TrackingContext", model_uri: str):
    """The registry's ModelVersion of a ``models:/name/version`` or ``models:/name@alias``
    URI, or TrackingError naming what is missing. None for URIs that name no registered
    version: ``runs:/``, a path, MLflow 3's logged models (``models:/m-<id>``)."""
    # Deferred (MLflow): MLflow loads on first use.
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith("models:/"):
        return None
    spec = model_uri[len("models:/"):].strip("/")
    name, alias = spec.split("@", 1) if "@" in spec else (spec, None)
    name, _, version = name.partition("/") if alias is None else (name, "", "")
    if not (alias or version):
        return None  # a logged model id
    if not name:
        raise TrackingError(f"cannot use model URI {model_uri}: expected models:/<name>/<version> or models:/<name>@<alias>")
    try:
        if alias:
            return rt.mlflow.get_model_version_by_alias(name, alias)
        return rt.mlflow.get_model_version(name, version)
    except MlflowException as exc:
        raise TrackingError(f"cannot use model {model_uri} of {rt.settings.mlflow.tracking_uri}: {exc.message}") from None


def load_model(rt: "TrackingContext", model_uri: str):
    """``mlflow.pyfunc.load_model`` from the runtime's tracking server, with our error. A
    registered version (``models:/``) is loaded from a copy whose files were checked against
    the digests its training recorded (``integrity``); other URIs, which carry no digest,
    load as they are, with a warning."""
    # Deferred (MLflow): MLflow loads on first use.
    import mlflow
    from mlflow.exceptions import MlflowException

    version = resolve_model_uri(rt, model_uri)
    try:
        with rt.tracking():
            if version is None:
                warn(f"{model_uri} is not a registered version: its files are not checked against recorded digests")
                return mlflow.pyfunc.load_model(model_uri)
            with verified_copy(rt, version) as local:
                return mlflow.pyfunc.load_model(str(local))
    except MlflowException as exc:
        raise TrackingError(f"cannot load model {model_uri}: {exc.message}") from None
    except OSError as exc:
        raise TrackingError(f"cannot load model {model_uri}: {exc}") from None


@contextlib.contextmanager
def verified_copy(rt: "TrackingContext", version) -> Iterator[Path]:
    """A local copy of a registered version whose files match its recorded digests (removed on exit)."""
    with tempfile.TemporaryDirectory(prefix="dfp-model-") as tmp:
        with rt.tracking():  # models:/ downloads resolve through the fluent API's registry
            local = verified_model_dir(rt.mlflow, version, Path(tmp), rt.settings.mlflow.verify_key)
        yield local

"""The registered model's files are the files training logged.

A model logged from code runs the code in its artifacts when it is loaded, and MLflow's
artifact API lets anyone who can reach it overwrite those files. So training records a
SHA-256 per file of the logged model (``integrity/model_files.json`` in the run) and the
digest of that list as the tag ``dfp.model_sha256`` on the run and on the model version
(sent with the version's creation, like the lineage tags). Before a registered version is
loaded or served, its files are downloaded, hashed and compared; a mismatch is refused,
naming the files, before any of its code runs.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from dfp_core.errors import TrackingError
from dfp_core.progress import warn
from dfp_core.tracking import signing

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

MODEL_DIGEST_TAG = "dfp.model_sha256"
MANIFEST_ARTIFACT = "integrity/model_files.json"
# Written by MLflow's client into a models:/name/version download (the name and version),
# not stored with the model.
CLIENT_WRITTEN = {"registered_model_meta"}


def file_digests(root: Path) -> dict[str, str]:
    """``relative path -> SHA-256`` of every file under ``root`` (but ``CLIENT_WRITTEN``)."""
    digests = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        if path.relative_to(root).as_posix() in CLIENT_WRITTEN:
            continue
        with path.open("rb") as handle:
            digests[path.relative_to(root).as_posix()] = hashlib.file_digest(handle, "sha256").hexdigest()
    return digests


def manifest_digest(digests: dict[str, str]) -> str:
    canonical = json.dumps(dict(sorted(digests.items())), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def record_model_digest(model_uri: str, signing_key_pem: str | None = None) -> str:
    """Hash the logged model's files as stored, log the list to the active run, and with a
    key sign the files and log the signature (``signing.SIGNATURE_ARTIFACT``); the digest."""
    # Deferred (MLflow): MLflow loads on first use.
    import mlflow

    with tempfile.TemporaryDirectory(prefix="dfp-model-digest-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(Path(tmp) / "model")))
        digests = file_digests(local)
        if signing_key_pem:
            signature = Path(tmp) / Path(signing.SIGNATURE_ARTIFACT).name
            signing.sign_model_dir(local, signing_key_pem, signature)
            mlflow.log_artifact(str(signature), artifact_path=str(Path(signing.SIGNATURE_ARTIFACT).parent))
        else:
            warn("no model-signing key (DFP_MODEL_SIGNING_KEY): the model is registered unsigned, and loading "
                 "it where a public key is set will be refused")
    mlflow.log_dict(digests, MANIFEST_ARTIFACT)
    return manifest_digest(digests)


def verified_model_dir(client: "MlflowClient", version, dest: Path, verify_key: Path | None = None) -> Path:
    """The files of a registered ``version`` (a ModelVersion), downloaded into ``dest`` and
    checked against the digests its training run recorded, then, with ``verify_key``,
    against its signature; TrackingError otherwise. Call it with MLflow's fluent API pointed
    at ``client``'s server (``Runtime.tracking``)."""
    # Deferred (MLflow): MLflow loads on first use.
    import mlflow

    label = f"models:/{version.name}/{version.version}"
    expected = version.tags.get(MODEL_DIGEST_TAG)
    if not expected:
        raise TrackingError(f"{label} has no recorded digest ({MODEL_DIGEST_TAG}): it was not registered by `dfp train`; "
                            "refusing to load code that nothing vouches for")
    (dest / "manifest").mkdir(parents=True, exist_ok=True)
    try:
        manifest_path = client.download_artifacts(version.run_id, MANIFEST_ARTIFACT, str(dest / "manifest"))
        recorded = json.loads(Path(manifest_path).read_text())
    except Exception as exc:  # noqa: BLE001 - any failure to read the list is a refusal
        raise TrackingError(f"{label}: cannot read its file digests ({MANIFEST_ARTIFACT} of run {version.run_id}): {exc}") from None
    if manifest_digest(recorded) != expected:
        raise TrackingError(f"{label}: its file digests ({MANIFEST_ARTIFACT}) were changed after registration; refusing to load it")
    (dest / "model").mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(label, dst_path=str(dest / "model")))
    actual = file_digests(local)
    changed = sorted(p for p in recorded if p in actual and actual[p] != recorded[p])
    missing = sorted(set(recorded) - set(actual))
    added = sorted(set(actual) - set(recorded))
    if changed or missing or added:
        parts = [f"{what}: {', '.join(paths[:5])}" for what, paths in (("changed", changed), ("missing", missing),
                                                                        ("added", added)) if paths]
        raise TrackingError(f"{label} does not match the files its training logged ({'; '.join(parts)}); refusing to load it")
    if verify_key is None:
        warn(f"{label}: no public key (DFP_MODEL_SIGNING_PUBLIC_KEY) to check its signature with; its files match "
             "their recorded digests, which whoever can write to MLflow can rewrite")
        return local
    _verify_signature(client, version, local, dest, verify_key, label)
    return local


def _verify_signature(client: "MlflowClient", version, local: Path, dest: Path, verify_key: Path, label: str) -> None:
    if not verify_key.is_file():
        raise TrackingError(f"the public key {verify_key} (DFP_MODEL_SIGNING_PUBLIC_KEY) does not exist; "
                            f"cannot check the signature of {label}")
    (dest / "signature").mkdir(parents=True, exist_ok=True)
    try:
        signature = Path(client.download_artifacts(version.run_id, signing.SIGNATURE_ARTIFACT, str(dest / "signature")))
    except Exception:  # noqa: BLE001 - no signature to read is a refusal
        raise TrackingError(f"{label} has no signature ({signing.SIGNATURE_ARTIFACT} of run {version.run_id}): it "
                            "was registered without a signing key, or its signature was removed; refusing to load "
                            "it") from None
    signing.verify_model_dir(local, signature, verify_key, label)

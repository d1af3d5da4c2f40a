"""A registered model's files, signed with a key that MLflow does not hold.

The file digests of ``integrity`` live where anyone who can write MLflow's artifacts and
tags writes: such a writer can change a file, rewrite the list and reset the tag, and the
digests still agree. So training also signs the logged model's files with an elliptic-curve
key (OpenSSF's ``model_signing``: a Sigstore bundle over an in-toto manifest of every file's
SHA-256), logs the signature beside the digests, and every command that loads a registered
version verifies it with the public key before any of the model's code runs. The private
key stays with whoever trains (``stack.env`` names it in ``$DFP_HOME/signing``, 0600; on a
cluster the ``model-signing-key`` Secret); the public key with whoever loads.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from dfp_core.errors import TrackingError

SIGNATURE_ARTIFACT = "integrity/model.sig"
KEY_DIR = "signing"
PRIVATE_KEY = "model-signing.key"
PUBLIC_KEY = "model-signing.pub"
# Written by MLflow's client into a models:/name/version download (not part of the model).
IGNORED = ("registered_model_meta",)


def ensure_key_pair(folder: Path) -> tuple[Path, Path]:
    """An EC P-256 key pair in ``folder`` (made once; the private key 0600): (private, public)."""
    # Deferred (cryptography): only signing or verifying needs it.
    from cryptography.hazmat.primitives import serialization

    private, public = folder / PRIVATE_KEY, folder / PUBLIC_KEY
    if private.is_file() and public.is_file():
        return private, public
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def sign_model_dir(model_dir: Path, private_key_pem: str, signature: Path) -> None:
    """Sign every file under ``model_dir`` into ``signature`` (a Sigstore bundle)."""
    # Deferred (model-signing): only signing or verifying needs it.
    from model_signing import hashing, signing

    with tempfile.TemporaryDirectory(prefix="dfp-signing-") as tmp:
        key = Path(tmp) / PRIVATE_KEY
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(private_key_pem)
        try:
            config = signing.Config().use_elliptic_key_signer(private_key=key)
        except ValueError as exc:
            raise TrackingError(f"the model-signing key is not a usable EC private key: {exc}") from None
        config.set_hashing_config(hashing.Config().set_ignored_paths(paths=list(IGNORED)))
        config.sign(model_dir, signature)


def verify_model_dir(model_dir: Path, signature: Path, public_key: Path, label: str) -> None:
    """TrackingError unless ``signature`` was made by the key of ``public_key`` over exactly
    the files under ``model_dir`` (none changed, missing or added)."""
    # Deferred (model-signing): only signing or verifying needs it.
    from model_signing import verifying

    try:
        verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(model_dir, signature)
    except Exception as exc:  # noqa: BLE001 - every failure to verify is a refusal, named by its cause
        cause = " ".join(str(exc).split())[:300] or exc.__class__.__name__
        raise TrackingError(
            f"{label}: its signature does not verify with the public key {public_key} ({cause}); its files or its "
            "signature were changed by someone without the signing key; refusing to load it"
        ) from None

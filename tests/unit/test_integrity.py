"""File digests of a model folder: every byte and every name counts, the order does not."""

from __future__ import annotations

from dfp_core.tracking.integrity import file_digests, manifest_digest


def test_digests_see_every_change(tmp_path):
    (tmp_path / "code" / "pkg").mkdir(parents=True)
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    (tmp_path / "code" / "pkg" / "scorer.py").write_text("x = 1\n")
    (tmp_path / "registered_model_meta").write_text("model_name: m\n")  # written by MLflow's client
    digests = file_digests(tmp_path)
    assert set(digests) == {"MLmodel", "code/pkg/scorer.py"}
    before = manifest_digest(digests)
    assert manifest_digest(dict(reversed(list(digests.items())))) == before
    (tmp_path / "code" / "pkg" / "scorer.py").write_text("x = 2\n")
    assert manifest_digest(file_digests(tmp_path)) != before
    (tmp_path / "code" / "pkg" / "scorer.py").write_text("x = 1\n")
    assert manifest_digest(file_digests(tmp_path)) == before
    (tmp_path / "code" / "pkg" / "extra.py").write_text("")
    assert manifest_digest(file_digests(tmp_path)) != before


def _model(root):
    (root / "code" / "pkg").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "code" / "pkg" / "scorer.py").write_text("x = 1\n")
    return root


def test_a_signature_holds_for_the_signed_files_only(tmp_path):
    """The model-signing key signs every file; a changed, added or missing file, another key's
    signature and a file MLflow's client writes into a download are told apart."""
    import shutil

    import pytest

    from dfp_core.errors import TrackingError
    from dfp_core.tracking.signing import ensure_key_pair, sign_model_dir, verify_model_dir

    private, public = ensure_key_pair(tmp_path / "keys")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert ensure_key_pair(tmp_path / "keys") == (private, public)  # made once
    model = _model(tmp_path / "model")
    signature = tmp_path / "model.sig"
    sign_model_dir(model, private.read_text(), signature)
    (model / "registered_model_meta").write_text("model_name: m\n")  # what a models:/ download adds
    verify_model_dir(model, signature, public, "models:/m/1")

    def refused(match: str) -> None:
        with pytest.raises(TrackingError, match=match):
            verify_model_dir(model, signature, public, "models:/m/1")

    (model / "code" / "pkg" / "scorer.py").write_text("x = 2\n")
    refused("models:/m/1: its signature does not verify with the public key")
    (model / "code" / "pkg" / "scorer.py").write_text("x = 1\n")
    (model / "code" / "pkg" / "payload.py").write_text("import os\n")
    refused("payload.py")
    (model / "code" / "pkg" / "payload.py").unlink()
    shutil.move(model / "MLmodel", tmp_path / "MLmodel")
    refused("MLmodel")
    shutil.move(tmp_path / "MLmodel", model / "MLmodel")
    verify_model_dir(model, signature, public, "models:/m/1")
    # Re-signed by someone else's key: refused by ours.
    other_private, _ = ensure_key_pair(tmp_path / "other")
    sign_model_dir(model, other_private.read_text(), signature)
    refused("does not verify")

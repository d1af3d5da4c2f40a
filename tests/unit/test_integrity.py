"""File digests of a model folder: every byte and every name counts, the order does not."""

from __future__ import annotations

from dfp_core.ml.integrity import file_digests, manifest_digest


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

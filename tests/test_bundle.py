"""The bundle contract: verified loads that name the bad file, atomic writes that never half-replace."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeclip.bundle import create_bundle, load_bundle, sha256_file, update_bundle
from edgeclip.errors import BundleError


def test_loads_and_verifies(bundle_copy: Path) -> None:
    b = load_bundle(bundle_copy)
    assert b.verified
    names, matrix = b.labels()
    assert len(names) == 10 and matrix.dtype == np.float32
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-5)
    for name, entry in b.manifest["files"].items():
        assert sha256_file(bundle_copy / name) == entry["sha256"]


def test_corrupt_file_is_named(bundle_copy: Path) -> None:
    p = bundle_copy / "image_encoder.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"image_encoder\.onnx: sha256"):
        load_bundle(bundle_copy)


def test_truncated_and_missing_files_are_named(bundle_copy: Path) -> None:
    p = bundle_copy / "labels.npy"
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(BundleError, match=r"labels\.npy: size"):
        load_bundle(bundle_copy)
    p.unlink()
    with pytest.raises(BundleError, match=r"labels\.npy: listed in the manifest .* missing"):
        load_bundle(bundle_copy)


def test_bad_manifests(bundle_copy: Path, tmp_path: Path) -> None:
    m = bundle_copy / "manifest.json"
    good = json.loads(m.read_text())
    m.write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)
    m.write_text(json.dumps({**good, "schema_version": 99}))
    with pytest.raises(BundleError, match="schema_version 99"):
        load_bundle(bundle_copy)
    bad = dict(good)
    bad["files"] = {**good["files"], "../escape.onnx": {"sha256": "0", "role": "image_encoder"}}
    m.write_text(json.dumps(bad))
    with pytest.raises(BundleError, match="relative path inside the bundle"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="no such bundle"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        load_bundle(tmp_path / "empty")


def test_missing_int8_encoder_says_how_to_make_it(bundle_copy: Path) -> None:
    with pytest.raises(BundleError, match="edgeclip quantize"):
        load_bundle(bundle_copy).encoder("image", "int8")


def test_failed_write_never_replaces_a_good_bundle(bundle_copy: Path) -> None:
    before = {p.name: p.read_bytes() for p in bundle_copy.iterdir() if p.is_file()}
    with pytest.raises(RuntimeError):
        with create_bundle(bundle_copy, overwrite=True) as draft:
            (draft.path / "image_encoder.onnx").write_bytes(b"half written")
            raise RuntimeError("crash while exporting")
    with pytest.raises(RuntimeError):
        with update_bundle(bundle_copy) as draft:
            with open(draft.new_file("labels.npy"), "wb") as f:
                f.write(b"garbage")
            raise RuntimeError("crash while relabelling")
    after = {p.name: p.read_bytes() for p in bundle_copy.iterdir() if p.is_file()}
    assert before == after
    load_bundle(bundle_copy)
    leftovers = [p.name for p in bundle_copy.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [".bundle.lock"], "only the lock file stays beside the bundle"


def test_create_refuses_to_overwrite_without_flag(bundle_copy: Path) -> None:
    with pytest.raises(BundleError, match="overwrite=True"):
        with create_bundle(bundle_copy):
            pass


def test_update_writes_new_files_without_touching_hard_linked_originals(bundle_copy: Path, tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    shutil.copytree(bundle_copy, keep)
    original = (bundle_copy / "labels.npy").read_bytes()
    with update_bundle(bundle_copy) as draft:
        with open(draft.new_file("labels.npy"), "wb") as f:
            np.save(f, np.eye(10, 16, dtype=np.float32))
        draft.add_file("labels.npy", "label_embeddings")
    assert (keep / "labels.npy").read_bytes() == original
    assert load_bundle(bundle_copy).labels()[1][0, 0] == 1.0


def test_update_takes_a_verified_bundle_without_hashing_it_again(bundle_copy: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    b = load_bundle(bundle_copy)
    monkeypatch.setattr("edgeclip.bundle.store.verify_files", lambda *a: pytest.fail("verified a second time"))
    with update_bundle(b) as draft:
        draft.manifest["note"] = "relabelled"
    assert b.manifest["note"] == "relabelled"  # the Bundle passed in describes the updated bundle
    monkeypatch.undo()
    assert load_bundle(bundle_copy).manifest["note"] == "relabelled"

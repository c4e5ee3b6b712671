"""`edgeclip eval`: accuracy report, torch reference agreement, held-out lists, bad files skipped."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import edgeclip
from edgeclip.cli import main
from edgeclip.evaluate import score


def test_score_math() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.2, 0.7]])
    r = score(probs, np.array([0, 1, 2, 2]), ["a", "b", "c"])
    assert r.top1 == 75.0 and r.top5 == 100.0
    assert r.per_class == {"a": 100.0, "b": 100.0, "c": 50.0}
    assert r.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]


@pytest.fixture()
def small_dataset(tmp_path: Path, cifar_test: Path) -> Path:
    root = tmp_path / "ds"
    for cls in ("cat", "dog", "ship", "truck"):
        (root / cls).mkdir(parents=True)
        for p in sorted((cifar_test / cls).iterdir())[:25]:
            shutil.copy(p, root / cls / p.name)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    return root


@pytest.mark.parametrize("fixture", ["tiny_vit_bundle", "tiny_rn_bundle"])
def test_runtime_and_torch_agree(fixture: str, small_dataset: Path, tmp_path: Path,
                                 request: pytest.FixtureRequest) -> None:
    pytest.importorskip("open_clip", reason="the torch reference needs the export extra")
    bundle = str(request.getfixturevalue(fixture))
    reports = {}
    for engine in ("runtime", "torch"):
        out = tmp_path / f"{engine}.json"
        assert main(["-q", "eval", bundle, str(small_dataset), "--engine", engine, "--json", str(out),
                     "--templates", "short"]) == 0
        reports[engine] = json.loads(out.read_text())
    rt, pt = reports["runtime"], reports["torch"]
    assert rt["count"] == pt["count"] == 100
    assert [Path(f["path"]).name for f in rt["failed"]] == ["broken.jpg"]
    assert abs(rt["top1"] - pt["top1"]) <= 1.0  # one image of 100 may flip on a near tie
    assert rt["classes"] == ["cat", "dog", "ship", "truck"]


def test_report_files_class_map_and_held_out_list(tiny_vit_bundle: Path, tiny_rn_bundle: Path, small_dataset: Path,
                                                  tmp_path: Path) -> None:
    cmap = tmp_path / "classes.tsv"
    cmap.write_text("cat\tkitten\ndog\tpuppy\nship\tboat\ntruck\tlorry\n")
    held = tmp_path / "held.txt"
    held.write_text("# held-out files, relative to a folder above the dataset\n"
                    + "\n".join(f"data/ds/{c}/{n:04d}.jpg" for c in ("cat", "ship") for n in range(5)))
    out, png = tmp_path / "r.json", tmp_path / "c.png"
    assert main(["-q", "eval", str(tiny_vit_bundle), str(small_dataset), "--classes", str(cmap), "--files-from",
                 str(held), "--json", str(out), "--confusion", str(png), "--against", str(tiny_rn_bundle)]) == 0
    r = json.loads(out.read_text())
    assert r["count"] == 10 and r["classes"] == ["kitten", "puppy", "boat", "lorry"]
    # the same figures from the public API, computed independently
    files = [small_dataset / c / f"{n:04d}.jpg" for c in ("cat", "ship") for n in range(5)]
    targets = np.array([0] * 5 + [2] * 5)
    predicted = {}
    for name, bundle in (("vit", tiny_vit_bundle), ("rn", tiny_rn_bundle)):
        clf = edgeclip.load(bundle, precision="fp32")
        matrix = clf.embed_labels(r["classes"], "imagenet80")
        predicted[name] = (clf.embed(files) @ matrix.T).argmax(1)
    assert r["top1"] == pytest.approx(float((predicted["vit"] == targets).mean() * 100))
    assert r["per_class"]["kitten"] == pytest.approx(float((predicted["vit"][:5] == 0).mean() * 100))
    assert r["comparison"]["top1_agreement"] == pytest.approx(float((predicted["vit"] == predicted["rn"]).mean() * 100))
    assert r["comparison"]["against_top1"] == pytest.approx(float((predicted["rn"] == targets).mean() * 100))
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 200


def test_contradictory_eval_options(tiny_vit_bundle: Path, small_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(tiny_vit_bundle), str(small_dataset), "--engine", "torch", "--precision", "int8"]) == 2
    assert "--engine torch" in capsys.readouterr().err
    assert main(["eval", str(tiny_vit_bundle), str(small_dataset), "--against-precision", "int8"]) == 2


def test_class_map_mismatch_names_both_sides(tiny_vit_bundle: Path, small_dataset: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    cmap = tmp_path / "classes.tsv"
    cmap.write_text("cat\tkitten\ndog\tpuppy\nship\tboat\ntrucks\tlorry\n")
    assert main(["eval", str(tiny_vit_bundle), str(small_dataset), "--classes", str(cmap)]) == 2
    err = capsys.readouterr().err
    assert "no name for folder(s) truck" in err and "do not exist: trucks" in err


@pytest.mark.slow
@pytest.mark.parametrize("model,cifar_target", [("proxy-vit", 70.0), ("proxy-rn", 75.0)])
def test_builtin_proxies_meet_their_accuracy_targets(model: str, cifar_target: float, cifar_test: Path,
                                                     imagenette_train: Path, tmp_path: Path) -> None:
    """The shipped proxies: CIFAR-10 test (10,000) and held-out Imagenette zero-shot top-1, runtime = torch."""
    from edgeclip.export.models import MODELS_DIR

    repo = Path(__file__).resolve().parents[1]
    bundle = tmp_path / model
    assert main(["-q", "export", "--model", model, "--out", str(bundle)]) == 0
    out = tmp_path / "cifar.json"
    assert main(["-q", "eval", str(bundle), str(cifar_test), "--json", str(out)]) == 0
    cifar = json.loads(out.read_text())
    assert cifar["count"] == 10_000 and cifar["top1"] >= cifar_target, cifar["top1"]
    held = {}
    for engine in ("runtime", "torch"):
        out = tmp_path / f"inet-{engine}.json"
        assert main(["-q", "eval", str(bundle), str(imagenette_train), "--engine", engine,
                     "--classes", str(repo / "scripts" / "data" / "imagenette-classes.tsv"),
                     "--files-from", str(MODELS_DIR / model / "heldout_imagenette.txt"), "--json", str(out)]) == 0
        held[engine] = json.loads(out.read_text())
    assert held["runtime"]["count"] == held["torch"]["count"] == 1899
    assert held["runtime"]["top1"] >= 60.0, held["runtime"]["top1"]
    assert abs(held["runtime"]["top1"] - held["torch"]["top1"]) <= 0.1

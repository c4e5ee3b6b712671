"""Label files, templates and prompt ensembling; on-device relabelling without torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeclip.errors import LabelsError
from edgeclip.runtime.labels import (IMAGENET_TEMPLATES, Label, embed_labels, label_prompts, read_labels_file,
                                     resolve_templates)


def test_label_file_formats(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("# animals\ncat\n\n dog \n")
    assert [l.name for l in read_labels_file(tmp_path / "l.txt")] == ["cat", "dog"]
    (tmp_path / "l.csv").write_text("name,synonyms,descriptions\ntench,carp fish|doctor fish,a tench is a "
                                    "freshwater fish with olive skin\ncat,,\n")
    labels = read_labels_file(tmp_path / "l.csv")
    assert labels[0].synonyms == ["carp fish", "doctor fish"] and labels[0].descriptions[0].startswith("a tench")
    assert labels[1] == Label("cat")
    (tmp_path / "l.json").write_text(json.dumps({"cat": ["a small furry pet"], "dog": {"synonyms": ["puppy"]}}))
    labels = read_labels_file(tmp_path / "l.json")
    assert labels[0].descriptions == ["a small furry pet"] and labels[1].synonyms == ["puppy"]
    (tmp_path / "l2.json").write_text(json.dumps(["a", {"name": "b", "descriptions": "x"}]))
    assert read_labels_file(tmp_path / "l2.json")[1].descriptions == ["x"]


@pytest.mark.parametrize("content,suffix,match", [
    ("cat\ncat\n", ".txt", "twice"), ("", ".txt", "no labels"), ("{bad", ".json", "invalid JSON"),
    ("label\ncat\n", ".csv", "'name' column"), ("[1, 2]", ".json", "must be a string"),
])
def test_bad_label_files(tmp_path: Path, content: str, suffix: str, match: str) -> None:
    p = tmp_path / f"labels{suffix}"
    p.write_text(content)
    with pytest.raises(LabelsError, match=match):
        read_labels_file(p)


def test_templates() -> None:
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    import open_clip.zero_shot_metadata as meta

    assert list(IMAGENET_TEMPLATES) == [t("{}") for t in meta.OPENAI_IMAGENET_TEMPLATES]
    assert resolve_templates(None)[0] == "short"
    with pytest.raises(LabelsError, match="unknown template set"):
        resolve_templates("nope")


def test_template_file_validation(tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text("a photo of {}.\nno placeholder\n")
    with pytest.raises(LabelsError, match="exactly once"):
        resolve_templates(str(p))


def test_ensembling_is_mean_of_normalised_prompt_embeddings() -> None:
    rng = np.random.default_rng(0)
    table: dict[str, np.ndarray] = {}

    def encode(texts: list[str]) -> np.ndarray:  # a fixed random embedding per distinct string
        return np.stack([table.setdefault(t, rng.normal(size=8) * rng.uniform(0.5, 3)) for t in texts])

    labels = [Label("cat", descriptions=["a small pet"]), Label("dog", synonyms=["puppy"])]
    templates = ["a photo of a {}.", "art of the {}."]
    out = embed_labels(labels, templates, encode, batch_size=3)
    for lab, row in zip(labels, out):
        vecs = [table[p] / np.linalg.norm(table[p]) for p in label_prompts(lab, templates)]
        want = np.mean(vecs, axis=0)
        assert np.allclose(row, want / np.linalg.norm(want), atol=1e-6)
    assert len(label_prompts(labels[0], templates)) == 3 and len(label_prompts(labels[1], templates)) == 4


def test_relabel_on_device_matches_torch_without_importing_torch(bundle_copy: Path, tmp_path: Path) -> None:
    labels = tmp_path / "new.csv"
    labels.write_text("name,descriptions\nfire truck,a red truck with ladders\nsailboat,\nsparrow,\n")
    code = ("import sys\nfrom edgeclip.cli import main\n"
            f"rc = main(['-q', 'labels', {str(bundle_copy)!r}, '--labels-file', {str(labels)!r}, '--templates', 'imagenet80'])\n"
            "assert rc == 0, rc\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from edgeclip.bundle import load_bundle
    from edgeclip.export.reference import TorchReference

    b = load_bundle(bundle_copy)
    names, matrix = b.labels()
    assert names == ["fire truck", "sailboat", "sparrow"]
    assert b.manifest["labels"]["template_set"] == "imagenet80"
    ref = TorchReference(b).label_matrix(read_labels_file(labels), IMAGENET_TEMPLATES)
    assert (ref * matrix).sum(1).min() > 0.9999


def test_a_class_map_tsv_is_a_labels_file(imagenette_classes: Path) -> None:
    from edgeclip.runtime.labels import read_labels_file

    names = [lab.name for lab in read_labels_file(imagenette_classes)]
    assert len(names) == 10 and names[0] == "tench" and "parachute" in names


def test_eval_refuses_wordnet_folders_without_a_class_map(tiny_vit_bundle: Path, imagenette_train: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from edgeclip.cli import main

    assert main(["eval", str(tiny_vit_bundle), str(imagenette_train), "--limit", "10"]) == 2
    err = capsys.readouterr().err
    assert "WordNet ids (n01440764" in err and "--classes" in err

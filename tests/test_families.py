"""The export matrix: every model family's tiny random-weight model is exported (parity with torch checked
on the spot), then classified and relabelled by the runtime alone (torch, open_clip, timm, transformers and
onnx cannot be imported there); SigLIP's sigmoid scores and tokenizer against open_clip's; MobileCLIP's
reparameterized graph. ``scripts/check_runtime_install.sh`` repeats the runtime part in a venv that has
only ``edgeclip[cpu,tokenizers]`` installed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeclip.options import LoadOptions

from edgeclip.tables import FAMILIES, SCORINGS, TOKENIZERS

pytest.importorskip("open_clip", reason="the export matrix needs the export extra")
pytest.importorskip("tokenizers", reason="the SigLIP tokenizers need the tokenizers extra")

from edgeclip.bundle import load_bundle  # noqa: E402
from edgeclip.cli import main  # noqa: E402

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FAMILY_NAMES = list(FAMILIES)
#: modules a device does not have: importing one in the runtime check fails
EXPORT_SIDE = ("torch", "torchvision", "open_clip", "timm", "transformers", "onnx", "onnxscript", "huggingface_hub")
BLOCK = f"""
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {EXPORT_SIDE!r}:
            raise ImportError(f'{{name}} is not installed on the device')
sys.meta_path.insert(0, _Block())
"""


def _runtime_only(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_export_matrix(family: str, family_bundles, cifar_test: Path, tmp_path: Path) -> None:
    row = FAMILIES[family]
    bundle = load_bundle(family_bundles(family))
    manifest = bundle.manifest
    assert manifest["model"].get("family", "vit" if family == "vit" else None) == family
    # parity with torch, checked at export and recorded
    for tower in ("image_encoder", "text_encoder"):
        par = manifest["parity"][tower]
        assert min(par["max_abs_diff"], par["rel_max_abs_diff"]) <= par["tolerance"]["max_abs"]
        assert par["min_cosine"] >= 0.99999
    # tokenizer and scoring as the family's row says
    assert manifest["tokenizer"]["type"] == row.tokenizer and row.tokenizer in TOKENIZERS
    assert bundle.info.model.scoring == row.scoring and row.scoring in SCORINGS
    assert manifest["parity"]["tokenizer"]["equal"] is True
    if row.scoring == "sigmoid":
        assert bundle.info.model.logit_bias == pytest.approx(-10.0)

    # on the device: classify, embed new labels, relabel the bundle; nothing from the export side imported
    photos = sorted((cifar_test / "cat").iterdir())[:8] + sorted((cifar_test / "ship").iterdir())[:8]
    work = tmp_path / "bundle"
    code = f"""
import json, shutil, numpy as np
shutil.copytree({str(bundle.path)!r}, {str(work)!r})
from edgeclip.cli import main
import edgeclip
clf = edgeclip.load({str(work)!r}, precision='fp32')
preds = clf.classify({[str(p) for p in photos]!r}, top_k=3)
assert len(preds) == 16 and all(len(p.labels) == 3 for p in preds)
names, exported = clf.bundle.labels()
again = clf.embed_labels(names)  # same labels and templates as at export, embedded on the device
cos = (again * exported).sum(1)
clf.set_labels(['a red car', 'a small cat'])
assert clf.classify({str(photos[0])!r}).label in ('a red car', 'a small cat')
assert main(['-q', 'labels', {str(work)!r}, '--labels', 'cat', 'ship', 'delivery van']) == 0
assert edgeclip.load_bundle({str(work)!r}).labels()[0] == ['cat', 'ship', 'delivery van']
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {EXPORT_SIDE!r})
print(json.dumps({{"min_cosine": float(cos.min()), "export_side": loaded, "scores": preds[0].scores}}))
"""
    out = json.loads(_runtime_only(code).stdout.strip().splitlines()[-1])
    assert out["export_side"] == []
    assert out["min_cosine"] >= 0.9999
    if row.scoring == "softmax":
        assert sum(out["scores"]) <= 1.0 + 1e-6


def test_siglip_scores_equal_open_clips_sigmoid(local_tokenizers: dict[str, Path], cifar_test: Path,
                                                tmp_path: Path) -> None:
    """The bundle's scores are open_clip's ``sigmoid(logit_scale * cos + logit_bias)``, to 1e-5."""
    import torch

    from edgeclip.export.exporter import export_bundle
    from edgeclip.export.models import load_model
    from edgeclip.runtime.classifier import Classifier
    from edgeclip.runtime.labels import Label

    loaded = load_model("edgeclip-tiny-siglip", tokenizer=str(local_tokenizers["siglip"]))
    with torch.no_grad():  # a bias that puts the scores mid-range, so the comparison means something
        loaded.model.logit_bias.fill_(-0.5)
    loaded.logit_bias = -0.5
    out = export_bundle(loaded, tmp_path / "b", [Label(n) for n in LABELS], "none", ["{}"])
    clf = Classifier(out, LoadOptions(top_k=len(LABELS)))
    files = sorted((cifar_test / "dog").iterdir())[:6] + sorted((cifar_test / "frog").iterdir())[:6]
    pixels = np.stack([clf.load_file(f)[1] for f in files])
    got = clf.probabilities(clf.embed_pixels(pixels))

    model = loaded.model.eval()
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(torch.from_numpy(pixels)), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(torch.from_numpy(
            loaded.tokenizer.reference()(LABELS))), dim=-1)
        want = torch.sigmoid(model.logit_scale.exp() * img @ txt.T + model.logit_bias).numpy()
    assert 0.05 < want.mean() < 0.95
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_hf_tokenizer_reproduces_open_clip(local_tokenizers: dict[str, Path]) -> None:
    from open_clip.tokenizer import HFTokenizer

    from edgeclip.runtime.hf_tokenizer import HfTokenizer

    texts = ["a photo of a cat.", "", "  \t ", "Ünïcödé ß 日本 &amp;amp; don't", "golf_ball___x", "word " * 5000,
             "x" * 20000, "a photo of " * 3000 + "end", "itap of a golf ball. " * 40, "DELIVERY-VAN!!!"]
    for folder in local_tokenizers.values():
        for ctx, clean in ((16, "canonicalize"), (64, "canonicalize"), (32, "lower"), (32, "whitespace")):
            ref = HFTokenizer(str(folder), context_length=ctx, clean=clean)
            mine = HfTokenizer(folder / "tokenizer.json", ctx, ref.tokenizer.pad_token_id, clean)
            np.testing.assert_array_equal(mine(texts), ref(texts).numpy())


def test_a_tokenizer_that_is_not_offline_fails_at_export_with_the_way_to_pass_it(capsys, tmp_path: Path,
                                                                                 local_tokenizers) -> None:
    for model in ("edgeclip-tiny-siglip", "ViT-B-16-SigLIP2"):
        args = ["export", "--model", model, "--labels", "cat", "--out", str(tmp_path / "b")]
        assert main(args + (["--pretrained", "none"] if "/" not in model and "tiny" not in model else [])) == 2
        err = capsys.readouterr().err
        assert "not available offline" in err and "--tokenizer" in err and "sigLIP".lower() in err.lower()
        assert not (tmp_path / "b").exists()
    assert main(["export", "--model", "edgeclip-tiny-vit", "--labels", "cat", "--out", str(tmp_path / "c"),
                 "--tokenizer", str(local_tokenizers["siglip"])]) == 2
    assert "tokenizes with CLIP's BPE, which edgeclip ships: drop --tokenizer" in capsys.readouterr().err
    assert main(["export", "--model", "edgeclip-tiny-siglip", "--labels", "cat", "--out", str(tmp_path / "c"),
                 "--tokenizer", str(tmp_path)]) == 2
    assert "is not a Hugging Face tokenizer folder" in capsys.readouterr().err


def test_a_damaged_tokenizer_section_is_a_bundle_error(family_bundles, tmp_path: Path) -> None:
    import shutil

    from edgeclip.bundle import update_bundle
    from edgeclip.errors import BundleError
    from edgeclip.runtime.text import TextEncoder

    work = tmp_path / "b"
    shutil.copytree(family_bundles("siglip"), work)
    with update_bundle(work) as draft:
        draft.manifest["tokenizer"]["pad_id"] = "one"
    with pytest.raises(BundleError, match="tokenizer.pad_id.* must be a int, got 'one'"):
        TextEncoder.from_bundle(load_bundle(work))
    with update_bundle(work) as draft:
        draft.manifest["tokenizer"]["pad_id"] = 10 ** 6
    with pytest.raises(BundleError, match="pad id 1000000 is outside its vocabulary"):
        TextEncoder.from_bundle(load_bundle(work))


def test_mobileclip_runs_reparameterized_with_batchnorm_folded(family_bundles, tmp_path: Path) -> None:
    """The exported graph has no BatchNormalization node (the training form has 11 unfused ones) and equals
    the training form: cosine >= 0.9999 on 64 inputs, recorded in the manifest."""
    import onnx
    import torch

    from edgeclip.export.models import ImageTower, load_model
    from edgeclip.export.onnx_export import export_onnx

    bundle = load_bundle(family_bundles("mobileclip"))
    rec = bundle.manifest["export"]["reparameterized"]
    assert rec["inputs"] == 64 and rec["min_cosine"] >= 0.9999 and rec["batchnorm_before"] > 0
    ops = [n.op_type for n in onnx.load(str(bundle.encoder("image"))).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") > 0

    loaded = load_model("edgeclip-tiny-mobileclip")  # the training form, exported as it is
    path = export_onnx(ImageTower(loaded.model).eval(), torch.zeros(1, 3, 64, 64), tmp_path / "train.onnx",
                       "pixel_values", "image_embeds")[0]
    train_ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert train_ops.count("BatchNormalization") > 0 and train_ops.count("Conv") > ops.count("Conv")


def test_checkpoint_files_take_the_preprocessing_of_their_architecture() -> None:
    import open_clip

    from edgeclip.export.families import pretrained_preprocess

    siglip = pretrained_preprocess(open_clip, "ViT-B-16-SigLIP")
    assert siglip is not None and siglip[0]["mean"] == [0.5, 0.5, 0.5] and siglip[0]["resize_mode"] == "squash"
    mobile = pretrained_preprocess(open_clip, "MobileCLIP2-S0")
    assert mobile[0]["std"] == [1.0, 1.0, 1.0] and mobile[0]["interpolation"] == "bilinear"
    assert pretrained_preprocess(open_clip, "edgeclip-tiny-vit") is None  # no pretrained tags


def test_family_of_reads_open_clip_configs() -> None:
    from edgeclip.export.families import family_of
    from edgeclip.export.models import _open_clip

    open_clip = _open_clip()  # with the tiny configs registered
    want = {"ViT-B-32": "vit", "RN50": "modified-resnet", "convnext_base": "convnext", "MobileCLIP2-S0": "mobileclip",
            "MobileCLIP-B": "mobileclip", "ViT-B-16-SigLIP": "siglip", "ViT-SO400M-14-SigLIP": "siglip",
            "ViT-B-16-SigLIP2": "siglip2", "ViT-B-32-SigLIP2-256": "siglip2", "EVA02-B-16": "eva02",
            "ViT-B-16-SigLIP-i18n-256": "siglip"}
    assert {n: family_of(open_clip.get_model_config(n)) for n in want} == want
    for row in FAMILIES.values():
        assert family_of(open_clip.get_model_config(row.tiny)) == row.name


@pytest.mark.slow
def test_full_size_mobileclip2_s0_exports_reparameterized(tmp_path: Path) -> None:
    """MobileCLIP2-S0 (random weights): no BatchNormalization node left, the reparameterized image embeddings
    equal the training form's (cosine >= 0.9999 on 64 inputs)."""
    import onnx

    out = tmp_path / "s0"
    assert main(["-q", "export", "--model", "MobileCLIP2-S0", "--pretrained", "none", "--labels", *LABELS,
                 "--out", str(out)]) == 0
    bundle = load_bundle(out)
    rec = bundle.manifest["export"]["reparameterized"]
    assert rec["inputs"] == 64 and rec["min_cosine"] >= 0.9999
    ops = [n.op_type for n in onnx.load(str(bundle.encoder("image"))).graph.node]
    assert "BatchNormalization" not in ops
    assert bundle.manifest["preprocess"]["std"] == [1.0, 1.0, 1.0]  # MobileCLIP's unnormalised input


@pytest.mark.slow
def test_full_size_siglip_exports_with_a_local_tokenizer(local_tokenizers: dict[str, Path], tmp_path: Path) -> None:
    """ViT-B-16-SigLIP (random weights): its own tokenizer (here one trained locally), the sigmoid and bias,
    the preprocessing of its pretrained tag."""
    out = tmp_path / "siglip"
    assert main(["-q", "export", "--model", "ViT-B-16-SigLIP", "--pretrained", "none", "--labels", *LABELS,
                 "--out", str(out), "--tokenizer", str(local_tokenizers["siglip"])]) == 0
    bundle = load_bundle(out)
    assert bundle.manifest["tokenizer"]["type"] == "hf-tokenizer" and bundle.info.model.scoring == "sigmoid"
    assert bundle.manifest["preprocess"]["resize_mode"] == "squash"
    assert bundle.manifest["parity"]["text_encoder"]["min_cosine"] >= 0.99999

"""Export of both towers: ONNX structure, parity with torch, model loading from every kind of source."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from edgeclip.bundle import load_bundle
from edgeclip.errors import ExportError, ModelLoadError, OptionError, ParityError
from edgeclip.export.models import load_model
from edgeclip.export.onnx_export import check_parity, export_onnx
from edgeclip.export.exporter import export_bundle
from edgeclip.runtime.labels import Label


@pytest.mark.parametrize("fixture", ["tiny_vit_bundle", "tiny_rn_bundle"])
def test_export_records_parity_below_1e4(fixture: str, request: pytest.FixtureRequest) -> None:
    bundle = load_bundle(request.getfixturevalue(fixture))
    for tower in ("image_encoder", "text_encoder"):
        numbers = bundle.manifest["parity"][tower]
        assert numbers["max_abs_diff"] < 1e-4, numbers
        assert numbers["min_cosine"] > 0.99999
        assert numbers["batches"][0] != numbers["batches"][1]  # dynamic batch was exercised


@pytest.mark.parametrize("fixture,arch", [("tiny_vit_bundle", "vit"), ("tiny_rn_bundle", "modified-resnet")])
def test_onnx_files_are_self_describing(fixture: str, arch: str, request: pytest.FixtureRequest) -> None:
    bundle = load_bundle(request.getfixturevalue(fixture))
    assert bundle.model["architecture"] == arch
    for tower, inp, out in (("image", "pixel_values", "image_embeds"), ("text", "input_ids", "text_embeds")):
        model = onnx.load(str(bundle.encoder(tower)))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert [i.name for i in model.graph.input] == [inp]
        assert [o.name for o in model.graph.output] == [out]
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert model.graph.input[0].doc_string
        props = {p.key: p.value for p in model.metadata_props}
        assert props["edgeclip.tower"] == tower and props["edgeclip.model_id"] == bundle.model["id"]
        ops = {n.op_type for n in model.graph.node}
        if tower == "text" or arch == "vit":
            assert "LayerNormalization" in ops  # one op, not decomposed (TensorRT FP16 safety)


def test_parity_failure_raises_with_numbers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    path = tmp_path / "a.onnx"
    export_onnx(a, torch.randn(1, 8), path, "x", "y")
    check_parity(a, path, [torch.randn(2, 8)])  # the same module passes
    with pytest.raises(ParityError) as err:
        check_parity(b, path, [torch.randn(2, 8)])
    assert err.value.numbers["max_abs_diff"] > 1e-3
    assert "max abs diff" in str(err.value)


def test_old_opset_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset"):
        export_onnx(torch.nn.Linear(2, 2), torch.randn(1, 2), tmp_path / "x.onnx", "x", "y", opset=13)


def _tiny_open_clip_folder(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(1)
    cfg = json.loads(Path(__file__).parents[1].joinpath("edgeclip/export/configs/edgeclip-tiny-vit.json").read_text())
    model = open_clip.model.CLIP(**cfg).eval()
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3, "resize_mode": "squash"}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder, model


def test_open_clip_folder_and_checkpoint_with_config(tmp_path: Path) -> None:
    folder, model = _tiny_open_clip_folder(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.encode_image(x)
    loaded = load_model(str(folder))
    assert loaded.source == "open_clip-dir"
    assert loaded.preprocess["mean"] == [0.5] * 3 and loaded.preprocess["resize_mode"] == "squash"
    with torch.no_grad():
        assert torch.allclose(loaded.image_tower(x), ref, atol=1e-6)
    config = tmp_path / "tiny.json"
    config.write_text((folder / "open_clip_config.json").read_text())
    loaded2 = load_model(str(folder / "open_clip_model.safetensors"), config=str(config))
    with torch.no_grad():
        assert torch.allclose(loaded2.image_tower(x), ref, atol=1e-6)
    assert loaded2.details["load"]["config"] == str(config.resolve())


def test_hugging_face_folder_exports(tmp_path: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64,
                                  "num_attention_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 77},
                     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                                    "num_hidden_layers": 2, "image_size": 32, "patch_size": 8},
                     projection_dim=16)
    CLIPModel(cfg).save_pretrained(tmp_path / "hf")
    loaded = load_model(str(tmp_path / "hf"))
    assert loaded.source == "huggingface" and loaded.embed_dim == 16
    out = export_bundle(loaded, tmp_path / "bundle", [Label("cat"), Label("dog")], "photo", ["a photo of a {}."])
    b = load_bundle(out)
    assert b.manifest["parity"]["image_encoder"]["max_abs_diff"] < 1e-4
    assert b.manifest["parity"]["text_encoder"]["max_abs_diff"] < 1e-4
    assert b.labels()[1].shape == (2, 16)


def test_hub_names_fail_fast_offline() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = ("from edgeclip.export.models import load_model\n"
            "from edgeclip.errors import ModelLoadError\n"
            "import sys\n"
            "for args in (('openai/clip-vit-base-patch32', None), ('ViT-B-32', 'openai')):\n"
            "    try:\n        load_model(*args)\n    except ModelLoadError as e:\n        print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("ERR")]
    assert len(lines) == 2, out.stdout + out.stderr
    assert all("model='/path/to/folder'" in line for line in lines)  # library terms; the CLI says --model


def test_contradictory_model_options_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="`?pretrained"):
        load_model("edgeclip-tiny-vit", pretrained="openai")
    with pytest.raises(OptionError, match="`?config"):
        load_model("edgeclip-tiny-vit", config="x.json")
    with pytest.raises(OptionError, match="`?pretrained"):
        load_model("ViT-B-32")
    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(b"")
    with pytest.raises(OptionError, match="`?config"):
        load_model(str(ckpt))
    with pytest.raises(ModelLoadError, match="not a built-in model"):
        load_model("no-such-model")


def test_random_weight_export_is_deterministic(tiny_vit_bundle: Path, tmp_path: Path) -> None:
    from edgeclip.cli import main

    assert main(["-q", "export", "--model", "edgeclip-tiny-vit", "--labels", "cat", "--out", str(tmp_path / "b")]) == 0
    a = load_bundle(tiny_vit_bundle).manifest["files"]["image_encoder.onnx"]["sha256"]
    b = load_bundle(tmp_path / "b").manifest["files"]["image_encoder.onnx"]["sha256"]
    assert a == b
    # labels differ, so the label matrices differ
    assert not np.array_equal(load_bundle(tiny_vit_bundle).labels()[1][:1], load_bundle(tmp_path / "b").labels()[1])


def test_external_data_export_loads_and_matches(tmp_path: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    files = export_onnx(module, torch.randn(1, 64), tmp_path / "m.onnx", "x", "y", external_data=True)
    assert [f.name for f in files] == ["m.onnx", "m.onnx.data"]
    assert files[1].stat().st_size > 64 * 64 * 4 > files[0].stat().st_size
    numbers = check_parity(module, files[0], [torch.randn(3, 64)])
    assert numbers["max_abs_diff"] < 1e-5
    ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])

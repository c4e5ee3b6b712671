"""INT8 per model family: every recipe with the family's synthetic calibration (text-guided for every tower,
bn-stats where BatchNorm was there before folding), checked for its Q/DQ structure; and the rules some layer
types need: FastViT's token mixers (identity-folded depthwise kernels) and SigLIP's attention-pool query stay
fp32, ConvNeXt's channels-last LayerNorms make it a convolutional graph."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeclip.quant.recipes import (RECIPES as RECIPE_SETTINGS, activation_nodes, attention_nodes,
                                    constant_query_nodes, identity_folded_convs, is_convolutional, kept_fp32,
                                    outlier_weights, prepare_fp32, quantize_onnx, weighted_nodes)
from edgeclip.tables import FAMILIES
from qdq import Graph, assert_cpu_qdq, assert_openvino_qdq, assert_tensorrt_qdq

pytest.importorskip("open_clip", reason="quantizing a family's bundle needs the export extra")

RECIPES = ("cpu", "tensorrt", "openvino")


@pytest.fixture(scope="module")
def quantized_families(family_bundles, tmp_path_factory: pytest.TempPathFactory):
    """``get(family, calib) -> Path``: a copy of the family's tiny bundle with the three INT8 files, each
    calibrated on 8 synthetic images of ``calib`` (5 steps)."""
    from edgeclip.cli import main

    made: dict[tuple[str, str], Path] = {}

    def get(family: str, calib: str) -> Path:
        if (family, calib) not in made:
            dst = tmp_path_factory.mktemp(f"q-{family}") / family
            shutil.copytree(family_bundles(family), dst)
            for target in RECIPES:
                args = ["-q", "quantize", str(dst), "--target", target, "--calib", calib, "--images", "8",
                        "--steps", "5"]
                assert main(args) == 0
            made[(family, calib)] = dst
        return made[(family, calib)]

    return get


CASES = [(f, c) for f, row in FAMILIES.items() for c in row.calibrations]


@pytest.mark.parametrize("family,calib", CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_every_family_quantizes_with_each_recipe(family: str, calib: str, quantized_families,
                                                 tmp_path: Path) -> None:
    bundle = quantized_families(family, calib)
    manifest = json.loads((bundle / "manifest.json").read_text())
    fp32 = onnx.load(str(prepare_fp32(bundle / "image_encoder.onnx", tmp_path / "prepared.onnx")))
    expected = weighted_nodes(fp32)
    convolutional = is_convolutional(fp32)
    for target in RECIPES:
        record = manifest["quantization"][target]
        info = record["calibration"]
        terms = info.get("terms") or info.get("synthesis", {}).get("terms") or json.dumps(info)
        assert "text" in terms if calib == "text-guided" else "bn-stats" in terms
        assert record["agreement"]["mean_cosine"] > 0.99
        path = bundle / record["file"]
        if target == "tensorrt":
            assert_tensorrt_qdq(path, expected)
        elif target == "cpu":
            assert_cpu_qdq(path, expected, weight_bits=7, per_channel=outlier_weights(fp32, expected))
        else:
            attention = attention_nodes(fp32) if convolutional else ()
            relus = any(n.op_type == "Relu" for n in fp32.graph.node)
            assert_openvino_qdq(path, expected, activation_nodes(fp32, ("Add", "AveragePool")), attention,
                                convolutional, unsigned=relus)
        assert record.get("kept_fp32", {}) == kept_fp32(fp32)


def test_fastvit_token_mixers_stay_fp32(quantized_families, tmp_path: Path) -> None:
    """Reparameterized RepMixers and conditional position encodings are depthwise kernels with an identity
    folded in: per-channel INT8 would round their mixing taps away, so they stay fp32; the other depthwise
    convolutions (the ConvMlps') are quantized."""
    bundle = quantized_families("mobileclip", "bn-stats")
    fp32 = onnx.load(str(prepare_fp32(bundle / "image_encoder.onnx", tmp_path / "prepared.onnx")))
    kept = kept_fp32(fp32)["identity_folded"]
    assert kept and all("token_mixer" in n or "pos_emb" in n for n in kept), kept
    repmixers = [n.name for n in fp32.graph.node if n.op_type == "Conv" and "token_mixer" in n.name]
    assert len(repmixers) == 3 and set(repmixers) <= set(kept)  # one per RepMixer stage
    depthwise_mlp = [n.name for n in fp32.graph.node if n.op_type == "Conv" and "mlp/conv" in n.name]
    assert depthwise_mlp and set(depthwise_mlp) <= set(weighted_nodes(fp32))
    g = Graph(bundle / "image_encoder.int8.tensorrt.onnx")
    quantized = {n.name for n in g.quantized()}
    assert not quantized & set(kept) and set(depthwise_mlp) <= quantized


def test_siglip_attention_pool_query_stays_fp32(quantized_families, tmp_path: Path) -> None:
    """The MAP head projects its learnt latent query (a constant broadcast to the batch): not quantized; its
    key/value projection of the tokens is."""
    bundle = quantized_families("siglip", "text-guided")
    fp32 = onnx.load(str(prepare_fp32(bundle / "image_encoder.onnx", tmp_path / "prepared.onnx")))
    query = constant_query_nodes(fp32)
    assert len(query) == 1 and "attn_pool" in query[0], query
    kv = [n for n in weighted_nodes(fp32) if "attn_pool" in n and "kv" in n]
    assert kv, "the head's kv projection is quantized"
    for target in RECIPES:
        quantized = {n.name for n in Graph(bundle / f"image_encoder.int8.{target}.onnx").quantized()}
        assert query[0] not in quantized and set(kv) <= quantized


def test_convnext_channels_last_layernorm_is_a_convolutional_graph(quantized_families, family_bundles,
                                                                   tmp_path: Path) -> None:
    bundle = quantized_families("convnext", "text-guided")
    fp32 = onnx.load(str(prepare_fp32(bundle / "image_encoder.onnx", tmp_path / "convnext.onnx")))
    assert [n for n in fp32.graph.node if n.op_type == "LayerNormalization"], "ConvNeXt normalises with LayerNorm"
    assert is_convolutional(fp32)
    meta = {p.key: p.value for p in onnx.load(str(bundle / "image_encoder.int8.openvino.onnx")).metadata_props}
    assert meta["edgeclip.int8_graph"] == "convolutional"
    for family in ("vit", "siglip", "eva02"):  # transformers normalise token sequences
        vit = onnx.load(str(prepare_fp32(family_bundles(family) / "image_encoder.onnx", tmp_path / f"{family}.onnx")))
        assert not is_convolutional(vit), family


def _depthwise(weight: np.ndarray, path: Path) -> onnx.ModelProto:
    c, _, k, _ = weight.shape
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=c, pads=[k // 2] * 4)
    dense = helper.make_node("Conv", ["y", "w2"], ["z"], name="dense")
    graph = helper.make_graph([node, dense], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, c, 8, 8])],
                              [numpy_helper.from_array(weight.astype(np.float32), "w"),
                               numpy_helper.from_array(np.ones((c, c, 1, 1), np.float32), "w2")])
    return helper.make_model(graph)


def test_identity_folded_kernels_are_told_from_ordinary_depthwise_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((4, 1, 3, 3)) * 0.3
    folded = mixing * 1e-3
    folded[:, 0, 1, 1] += 1.0  # identity + layer-scaled mixing: the mixing taps are below half an INT8 step
    assert identity_folded_convs(_depthwise(folded, tmp_path)) == ["dw"]
    assert identity_folded_convs(_depthwise(mixing, tmp_path)) == []
    assert identity_folded_convs(_depthwise(folded * 0 + mixing, tmp_path)) == []


def test_constant_query_is_told_from_activations() -> None:
    latent = numpy_helper.from_array(np.ones((1, 1, 4), np.float32), "latent")
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Expand", ["latent", "s"], ["q_in"]),
             helper.make_node("MatMul", ["q_in", "w"], ["q"], name="query"),
             helper.make_node("MatMul", ["x", "w"], ["kv"], name="keys")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 4])],
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("kv", TensorProto.FLOAT, None)], [latent, w])
    model = helper.make_model(graph)
    assert constant_query_nodes(model) == ["query"]
    assert weighted_nodes(model) == ["keys"]


def test_weights_with_an_outlier_channel_get_per_channel_scales_in_the_cpu_recipe(tmp_path: Path) -> None:
    """One weight far outside the others (SigLIP's random-weight attention-pool MLP has one at 2.0 among values
    below 0.1) sets a per-tensor scale that rounds the other channels to a few levels: that MatMul gets
    per-channel scales; an ordinary one stays per tensor."""
    rng = np.random.default_rng(0)
    plain = rng.standard_normal((16, 32)).astype(np.float32) * 0.05
    outlier = plain.copy()
    outlier[3, 7] = 2.0
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["y1"], name="plain"),
             helper.make_node("MatMul", ["x", "w2"], ["y2"], name="outlier")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 16])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["n", 4, 32]) for y in ("y1", "y2")],
                              [numpy_helper.from_array(plain[:16], "w1"), numpy_helper.from_array(outlier[:16], "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert outlier_weights(model, ["plain", "outlier"]) == {"outlier": 1}
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    fp32 = prepare_fp32(src, tmp_path / "prep.onnx")
    images = rng.standard_normal((8, 4, 16)).astype(np.float32)
    out = quantize_onnx(RECIPE_SETTINGS["cpu"], fp32, tmp_path / "int8.onnx", images)
    assert_cpu_qdq(out, ["plain", "outlier"], weight_bits=7, per_channel=["outlier"])

"""The Q/DQ graphs the INT8 recipes write, checked with plain ``onnx`` (no TensorRT needed).

TensorRT 10+ explicit quantization wants: symmetric INT8 (zero points 0, int8), per-channel weight scales,
Q/DQ on the inputs of the weighted layers only, and LayerNorm, Softmax, GELU (Erf) and residual adds left
in float. "Left in float" for LayerNorm means: it never reads a DequantizeLinear output and nothing but
the input quantizer of a quantized GEMM reads its output (that quantizer belongs to the GEMM, as in
TensorRT's own Q/DQ placement); Softmax and Erf outputs are never quantized at all.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx import TensorProto, helper, numpy_helper
from qdq import WEIGHTED, Graph, assert_cpu_qdq, assert_quantized_exactly, assert_tensorrt_qdq, output_range

from edgeclip.bundle import load_bundle
from edgeclip.errors import OptionError
from edgeclip.quant.agreement import compare, run_onnx
from edgeclip.quant.recipes import RECIPES, Recipe, prepare_fp32, quantize_onnx, ranges_cache_name, weighted_nodes
from edgeclip.quant.synthesis import noise_images


def _images(bundle_path: Path, n: int = 16) -> np.ndarray:
    pre = load_bundle(bundle_path).preprocess
    return noise_images(n, tuple(pre["size"]), pre["mean"], pre["std"], seed=3)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_vit_bundle: Path, tiny_rn_bundle: Path) -> dict:
    """fp32 (prepared) and INT8 models of both tiny towers for both targets."""
    out = {}
    for arch, bundle in (("vit", tiny_vit_bundle), ("rn", tiny_rn_bundle)):
        tmp = tmp_path_factory.mktemp(f"quant-{arch}")
        fp32 = prepare_fp32(load_bundle(bundle).encoder("image", "fp32"), tmp / "fp32.onnx")
        images = _images(bundle)
        out[(arch, "fp32")] = fp32
        out[(arch, "images")] = images
        for target, recipe in RECIPES.items():
            out[(arch, target)] = quantize_onnx(recipe, fp32, tmp / f"int8.{target}.onnx", images, "minmax")
    return out


# --------------------------------------------------------------------------------------------------------
# tensorrt
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_tensorrt_every_weighted_layer_reads_dequantized_inputs(built: dict, arch: str) -> None:
    fp32 = onnx.load(str(built[(arch, "fp32")]))
    expected = set(weighted_nodes(fp32))
    g = Graph(built[(arch, "tensorrt")])
    assert_quantized_exactly(g, expected)
    for n in g.nodes:
        if n.name in expected:
            if len(n.input) > 2 and n.input[2]:
                assert not g.made_by(n.input[2], "DequantizeLinear"), f"{n.name}: bias must stay float"


@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_tensorrt_zero_points_are_int8_zeros(built: dict, arch: str) -> None:
    g = Graph(built[(arch, "tensorrt")])
    qdq = g.of("QuantizeLinear") + g.of("DequantizeLinear")
    assert qdq
    for n in qdq:
        assert len(n.input) == 3, f"{n.name}: zero point must be explicit (int8), not defaulted (uint8)"
        zp = g.array(n.input[2])
        assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: zero point {zp} ({zp.dtype})"
    for n in g.of("DequantizeLinear"):  # every quantized value is int8: no int32 bias, no uint8
        src = n.input[0]
        dtype = g.array(src).dtype if src in g.inits else np.int8  # activations come from int8 Q nodes
        assert dtype == np.int8, f"{n.name}: dequantizes {dtype}"


@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_tensorrt_weight_scales_are_per_channel(built: dict, arch: str) -> None:
    g = Graph(built[(arch, "tensorrt")])
    for node in g.quantized():
        dq = g.producer[node.input[1]]
        w = g.array(dq.input[0])
        scale = g.array(dq.input[1])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        out_axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b) else 1
        assert scale.ndim == 1 and axis == out_axis and scale.shape[0] == w.shape[out_axis], \
            f"{node.name}: scale shape {scale.shape}, axis {axis}, weight {w.shape}"
        assert np.abs(w).max() <= 127 and w.min() >= -127, "symmetric weights use -127..127"


@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_tensorrt_dequantized_tensors_feed_only_weighted_layers(built: dict, arch: str) -> None:
    g = Graph(built[(arch, "tensorrt")])
    for dq in g.of("DequantizeLinear"):
        for c in g.consumers.get(dq.output[0], []):
            assert c.op_type in WEIGHTED, f"{c.op_type} {c.name} reads the quantized copy {dq.output[0]}"
    for q in g.of("QuantizeLinear"):  # no output quantization: Q never follows a weighted layer
        assert not any(g.made_by(q.input[0], op) for op in WEIGHTED), f"{q.name} quantizes a GEMM output"


def _residual(g: Graph, n) -> bool:
    """An Add of two activations (a skip connection), not a bias or position-embedding add."""
    def const(t: str) -> bool:
        return t in g.inits or g.made_by(t, "Constant")
    return n.op_type == "Add" and not any(const(i) for i in n.input)


@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_tensorrt_norms_softmax_gelu_and_residual_adds_stay_float(built: dict, arch: str) -> None:
    g = Graph(built[(arch, "tensorrt")])
    float_ops = [n for n in g.nodes if n.op_type in ("LayerNormalization", "Softmax", "Erf", "Add", "Relu")]
    residual = [n for n in float_ops if _residual(g, n)]
    assert residual, "the tiny towers have skip connections"
    for n in float_ops:
        for i in n.input:
            assert not g.made_by(i, "DequantizeLinear"), f"{n.op_type} {n.name} reads a dequantized input"
        for o in n.output:
            readers = g.consumers.get(o, [])
            if n.op_type in ("Softmax", "Erf") or n in residual:
                assert not any(r.op_type == "QuantizeLinear" for r in readers), f"{n.op_type} {n.name} quantized"
            for r in readers:
                if r.op_type == "QuantizeLinear":  # only as the input quantizer of a weighted layer
                    dq_out = [d for d in g.consumers[r.output[0]] if d.op_type == "DequantizeLinear"]
                    assert all(c.op_type in WEIGHTED for d in dq_out for c in g.consumers.get(d.output[0], []))
    if arch == "vit":
        assert g.of("LayerNormalization") and g.of("Softmax") and g.of("Erf")
        # attention's activation x activation MatMuls stay float
        for n in g.of("MatMul"):
            if n.input[1] not in g.inits and not g.made_by(n.input[1], "DequantizeLinear"):
                assert not g.made_by(n.input[0], "DequantizeLinear")


def test_tensorrt_graph_is_valid_onnx_for_the_parser(built: dict) -> None:
    from edgeclip.devices.trt_ops import op_support

    for arch in ("vit", "rn"):
        path = built[(arch, "tensorrt")]
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert all(n.domain in ("", "ai.onnx") for n in model.graph.node), "no contrib ops for TensorRT"
        assert [op_support(n.op_type) for n in model.graph.node if op_support(n.op_type)] == []
        props = {p.key: p.value for p in model.metadata_props}
        assert props["edgeclip.precision"] == "int8" and props["edgeclip.int8_target"] == "tensorrt"


# --------------------------------------------------------------------------------------------------------
# cpu
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_cpu_recipe_is_u8s8_with_7bit_weights(built: dict, arch: str) -> None:
    assert_cpu_qdq(built[(arch, "cpu")], weighted_nodes(onnx.load(str(built[(arch, "fp32")]))), weight_bits=7)


@pytest.mark.parametrize("arch", ["vit", "rn"])
@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_int8_models_run_and_follow_fp32(built: dict, arch: str, target: str) -> None:
    images = built[(arch, "images")]
    ref = run_onnx(built[(arch, "fp32")], images)
    got = run_onnx(built[(arch, target)], images)
    assert got.shape == ref.shape
    agreement = compare(ref, got, np.eye(ref.shape[1], dtype=np.float32)[:4], 50.0)
    assert agreement["mean_cosine"] > 0.99, agreement


def test_excluded_nodes_stay_float(built: dict, tmp_path: Path) -> None:
    fp32 = built[("vit", "fp32")]
    nodes = weighted_nodes(onnx.load(str(fp32)))
    keep = nodes[:2]
    out = quantize_onnx(RECIPES["tensorrt"], fp32, tmp_path / "mixed.onnx", built[("vit", "images")], "minmax",
                        exclude=keep)
    g = Graph(out)
    assert {n.name for n in g.quantized()} == set(nodes) - set(keep)
    for n in g.nodes:
        if n.name in keep:
            assert not any(g.made_by(i, "DequantizeLinear") for i in n.input)


def test_probe_switches_layers_on_and_off(built: dict, tmp_path: Path) -> None:
    from edgeclip.quant.sensitivity import QuantProbe, layer_sensitivity, plan_exclusions

    fp32, int8 = built[("rn", "fp32")], built[("rn", "cpu")]
    images = built[("rn", "images")][:8]
    nodes = weighted_nodes(onnx.load(str(fp32)))
    probe = QuantProbe(int8, fp32, nodes, tmp_path / "probe.onnx")
    ref = run_onnx(fp32, images)
    off = probe.run(images, [])
    np.testing.assert_allclose(off, ref, rtol=1e-5, atol=1e-6)  # nothing on: exactly the fp32 model
    on = probe.run(images, nodes, others=True)
    real = run_onnx(int8, images)
    cos = (on * real).sum(-1) / np.linalg.norm(on, axis=-1) / np.linalg.norm(real, axis=-1)
    assert cos.min() > 0.999, "all on: the fake-quant probe follows the real INT8 model"
    labels = np.random.default_rng(0).standard_normal((5, ref.shape[1])).astype(np.float32)
    ranking = layer_sensitivity(probe, images, ref, labels, 100.0)
    assert sorted(s.node for s in ranking) == sorted(nodes)
    assert all(a.kl >= b.kl for a, b in zip(ranking, ranking[1:]))
    k, agreement = plan_exclusions(probe, ranking, images, ref, labels, 100.0, max_drop=0.0)
    assert agreement["top1_agreement"] == 1.0
    order = [s.node for s in ranking]

    def top1(kept: int) -> float:  # the k most sensitive layers in fp32, the rest quantized
        on = order[kept:]
        return compare(ref, probe.run(images, on, others=bool(on)), labels, 100.0)["top1_agreement"]

    assert top1(k) == 1.0 and (k == 0 or top1(k - 1) < 1.0), "k is the smallest count that keeps every label"


# --------------------------------------------------------------------------------------------------------
# activation folding (cpu: bounded Clip(0, max) only)
# --------------------------------------------------------------------------------------------------------
def _act_net(path: Path) -> Path:
    """Conv -> Clip(0, 6) -> Conv -> Relu -> Conv -> Clip(-1, 1) -> output: pre-activation ranges far
    beyond the activations' (weights ~ N(0, 2))."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 2, (8, c, 3, 3)).astype(np.float32), f"w{i}")
             for i, c in enumerate((3, 8, 8))]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
              (("zero", 0.0), ("six", 6.0), ("minus1", -1.0), ("one", 1.0))]
    pads = helper.make_attribute("pads", [1, 1, 1, 1])
    conv = [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}") for i, x in
            enumerate(("x", "relu6", "relu"))]
    for c in conv:
        c.attribute.append(pads)
    nodes = [conv[0], helper.make_node("Clip", ["c0", "zero", "six"], ["relu6"], name="relu6"),
             conv[1], helper.make_node("Relu", ["c1"], ["relu"], name="relu"),
             conv[2], helper.make_node("Clip", ["c2", "minus1", "one"], ["y"], name="clip11")]
    graph = helper.make_graph(nodes, "acts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def acts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    tmp = tmp_path_factory.mktemp("acts")
    fp32 = prepare_fp32(_act_net(tmp / "acts.onnx"), tmp / "prepared.onnx")
    return fp32, np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)


def test_cpu_recipe_folds_relu6_into_the_conv_output_quantizer(acts: tuple, tmp_path: Path) -> None:
    fp32, images = acts
    assert RECIPES["cpu"].fold_activations == ("Clip",)
    out = quantize_onnx(RECIPES["cpu"], fp32, tmp_path / "cpu.onnx", images, "minmax")
    g = assert_cpu_qdq(out, ["conv0", "conv1", "conv2"])
    assert [n.name for n in g.of("Clip")] == ["clip11"], "Clip(0, 6) folded; Clip(-1, 1) is not ReLU6-style"
    assert [n.name for n in g.of("Relu")] == ["relu"], "Relu stays (folding it would change ModifiedResNet towers)"
    conv0 = next(n for n in g.nodes if n.name == "conv0")
    lo, hi = output_range(g, conv0)
    assert -1e-6 <= lo and hi <= 6.0 + 1e-3, f"conv0 output quantized over [{lo}, {hi}], the Clip's [0, 6]"
    conv1 = next(n for n in g.nodes if n.name == "conv1")
    assert output_range(g, conv1)[1] > 6.0 + 1e-3, "the unfolded Conv keeps its pre-activation range"
    got, ref = run_onnx(out, images), run_onnx(fp32, images)
    assert got.min() >= -1.0 - 1e-6 and got.max() <= 1.0 + 1e-6
    cos = (got * ref).reshape(len(ref), -1).sum(-1) / np.linalg.norm(got.reshape(len(got), -1), axis=-1) / \
        np.linalg.norm(ref.reshape(len(ref), -1), axis=-1)
    assert cos.min() > 0.98, cos
    no_fold = quantize_onnx(Recipe(**{**RECIPES["cpu"].__dict__, "fold_activations": ()}), fp32,
                            tmp_path / "nofold.onnx", images, "minmax")
    g0 = Graph(no_fold)
    assert len(g0.of("Clip")) == 2
    assert output_range(g0, next(n for n in g0.nodes if n.name == "conv0"))[1] > 6.0 + 1e-3, \
        "without folding the range is the pre-activation one (what the fold fixes)"


def test_tensorrt_recipe_folds_nothing(acts: tuple, tmp_path: Path) -> None:
    fp32, images = acts
    assert RECIPES["tensorrt"].fold_activations == ()
    g = assert_tensorrt_qdq(quantize_onnx(RECIPES["tensorrt"], fp32, tmp_path / "trt.onnx", images, "minmax"),
                            ["conv0", "conv1", "conv2"])
    assert sorted(n.name for n in g.of("Clip") + g.of("Relu")) == ["clip11", "relu", "relu6"]


def test_fold_activations_in_the_record_and_the_ranges_cache_key() -> None:
    cpu, trt = RECIPES["cpu"], RECIPES["tensorrt"]
    assert cpu.record()["fold_activations"] == ["Clip"]
    assert "fold_activations" not in trt.record(), "records without folding are as before"
    plain = Recipe(**{**cpu.__dict__, "fold_activations": ()})
    assert ranges_cache_name("k", "sha", cpu, "minmax") != ranges_cache_name("k", "sha", plain, "minmax")
    with pytest.raises(OptionError, match="fold_activations"):
        Recipe(**{**cpu.__dict__, "fold_activations": True})
    with pytest.raises(OptionError, match="fold_activations"):
        Recipe(**{**cpu.__dict__, "fold_activations": ("Sigmoid",)})


def test_probe_restores_folded_activations_when_a_layer_is_off(acts: tuple, tmp_path: Path) -> None:
    from edgeclip.quant.sensitivity import QuantProbe

    fp32, images = acts
    int8 = quantize_onnx(RECIPES["cpu"], fp32, tmp_path / "cpu.onnx", images, "minmax")
    assert len(Graph(int8).of("Clip")) == 1, "the ReLU6 is folded"
    nodes = ["conv0", "conv1", "conv2"]
    probe = QuantProbe(int8, fp32, nodes, tmp_path / "probe.onnx", RECIPES["cpu"].output_ops)
    np.testing.assert_allclose(probe.run(images, []), run_onnx(fp32, images), rtol=1e-4, atol=1e-3,
                               err_msg="all off is the fp32 model, its ReLU6 included")
    on, real = probe.run(images, nodes, others=True), run_onnx(int8, images)
    assert np.abs(on - real).max() < 0.05, "all on follows the real INT8 model"
    # conv0 alone: its (folded) output quantizer stays on although conv1, which reads it, is off, as in the
    # real model with conv1 and conv2 kept in fp32
    only0 = quantize_onnx(RECIPES["cpu"], fp32, tmp_path / "only0.onnx", images, "minmax", exclude=["conv1", "conv2"])
    assert np.abs(probe.run(images, ["conv0"], others=True) - run_onnx(only0, images)).max() < 0.01

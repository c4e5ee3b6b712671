"""``edgeclip.quant.quantize_model`` on a plain image classifier (no bundle): a small BatchNorm/ReLU6 conv
net with a skip connection, exported to ONNX here, quantized with each recipe and calibration source."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from qdq import Graph, assert_cpu_qdq, assert_openvino_qdq, assert_tensorrt_qdq, output_range
from torch import nn

from edgeclip.errors import OptionError, QuantizationError
from edgeclip.quant import CalibrationSet, quantize_model
from edgeclip.quant.agreement import run_onnx
from edgeclip.quant.recipes import RECIPES, activation_nodes, attention_nodes, prepare_fp32, weighted_nodes
from edgeclip.quant.synthesis import SynthesisConfig

PRE = {"size": [32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
FAST = SynthesisConfig(batch_size=8, steps=4, threads=1)


class TinyNet(nn.Module):
    """Conv-BN-ReLU6 stem, a depthwise/pointwise residual block, pooling and a linear head (10 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                                nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.dw(x)
        return self.head(x.mean(dim=(2, 3)))


def _net(seed: int) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    for m in net.modules():  # non-trivial running statistics, as a trained net has
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyNet, Path]:
    net = _net(0)
    path = tmp_path_factory.mktemp("engine") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.randn(2, 3, 32, 32), str(path), input_names=["pixel_values"], output_names=["logits"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return net, path


def _weighted(path: Path, tmp: Path) -> list[str]:
    return weighted_nodes(onnx.load(str(prepare_fp32(path, tmp / "prepared.onnx"))))


def test_bn_stats_tensorrt_on_a_plain_classifier(tiny: tuple, tmp_path: Path) -> None:
    net, fp32 = tiny
    made = quantize_model(fp32, tmp_path / "int8.onnx", "tensorrt", "bn-stats", torch_model=net, preprocess=PRE,
                          images=8, synthesis=FAST, progress=False)
    assert made.path == tmp_path / "int8.onnx" and made.path.is_file()
    assert_tensorrt_qdq(made.path, _weighted(fp32, tmp_path))
    rec = made.record
    assert rec["recipe"] == RECIPES["tensorrt"].name and rec["weighted_nodes"] == 4
    assert rec["calibration"]["source"] == "bn-stats" and rec["calibration"]["images"] == 8
    assert rec["calibration"]["end"]["bn_loss"] < rec["calibration"]["start"]["bn_loss"], "synthesis matched BN"
    assert 0.0 <= made.agreement["top1_agreement"] <= 1.0 and made.agreement["images"] == 8
    x = made.calibration.images
    assert x.shape == (8, 3, 32, 32) and x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6, "valid pixels"
    logits = run_onnx(made.path, x)
    cos = (logits * run_onnx(fp32, x)).sum(-1) / np.linalg.norm(logits, axis=-1) / np.linalg.norm(
        run_onnx(fp32, x), axis=-1)
    assert logits.shape == (8, 10) and cos.min() > 0.95


def test_noise_cpu_and_priors_source(tiny: tuple, tmp_path: Path) -> None:
    net, fp32 = tiny
    made = quantize_model(fp32, tmp_path / "cpu.onnx", "cpu", "noise", preprocess=PRE, images=8, progress=False)
    assert_cpu_qdq(made.path, _weighted(fp32, tmp_path), weight_bits=7)
    assert made.record["calibration"]["source"] == "noise"
    priors = quantize_model(fp32, tmp_path / "p.onnx", "cpu", "bn-stats:priors", torch_model=net, preprocess=PRE,
                            images=8, synthesis=FAST, progress=False)
    assert priors.record["calibration"]["terms"] == ["bn-stats", "priors"]


def test_openvino_recipe_on_a_plain_classifier(tiny: tuple, tmp_path: Path) -> None:
    """A CNN without attention: its residual add in INT8, signed where the branch is, the rest as in the CNN
    rules; close to fp32."""
    _, fp32 = tiny
    made = quantize_model(fp32, tmp_path / "ov.onnx", "openvino", "noise", preprocess=PRE, images=8, progress=False)
    prepared = onnx.load(str(prepare_fp32(fp32, tmp_path / "prepared.onnx")))
    adds = activation_nodes(prepared, ("Add", "AveragePool"))
    assert len(adds) == 1 and not attention_nodes(prepared)
    assert_openvino_qdq(made.path, _weighted(fp32, tmp_path), adds, convolutional=True)
    assert made.record["settings"]["cnn_signed_activations"] is True
    x = made.calibration.images
    a, b = run_onnx(made.path, x), run_onnx(fp32, x)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.95


def test_array_calibration_and_max_drop_zero(tiny: tuple, tmp_path: Path) -> None:
    _, fp32 = tiny
    x = np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32)
    made = quantize_model(fp32, tmp_path / "mixed.onnx", "tensorrt", x, max_drop=0.0, progress=False)
    assert made.agreement["top1_agreement"] == 1.0, "max_drop 0 keeps every calibration label"
    assert made.record["calibration"]["source"] == "array"
    g = Graph(made.path)
    assert {n.name for n in g.quantized()} == set(_weighted(fp32, tmp_path)) - set(made.excluded_nodes)
    same = quantize_model(fp32, tmp_path / "again.onnx", "tensorrt", CalibrationSet(x, made.calibration.source, 0,
                                                                                   "k", 0.0), progress=False)
    assert same.calibration.images is x


def test_cpu_recipe_folds_relu6_into_the_conv_output_range(tiny: tuple, tmp_path: Path) -> None:
    _, fp32 = tiny
    made = quantize_model(fp32, tmp_path / "fold.onnx", "cpu", "noise", preprocess=PRE, images=8, progress=False)
    g = Graph(made.path)
    assert len(g.of("Clip")) == 0, "each ReLU6 after a quantized Conv folds into the Conv's output quantizer"
    for conv in g.of("Conv")[:2]:  # the stem and the depthwise Conv: Conv -> ReLU6
        lo, hi = output_range(g, conv)
        assert lo >= -1e-6 and hi <= 6.0 + 1e-3, f"range [{lo}, {hi}] is the activation's [0, 6] or inside it"
    assert made.record["settings"]["fold_activations"] == ["Clip"]
    unfolded = dataclasses.replace(RECIPES["cpu"], fold_activations=())
    plain = quantize_model(fp32, tmp_path / "plain.onnx", unfolded, made.calibration, progress=False)
    assert len(Graph(plain.path).of("Clip")) == 2 and "fold_activations" not in plain.record["settings"]


def test_clear_errors(tiny: tuple, tmp_path: Path) -> None:
    net, fp32 = tiny
    with pytest.raises(OptionError, match="torch_model"):
        quantize_model(fp32, tmp_path / "a.onnx", "cpu", "bn-stats", preprocess=PRE, progress=False)
    with pytest.raises(OptionError, match="CLIP bundle"):
        quantize_model(fp32, tmp_path / "a.onnx", "cpu", "text-guided", preprocess=PRE, progress=False)
    with pytest.raises(OptionError, match="preprocess"):
        quantize_model(fp32, tmp_path / "a.onnx", "cpu", "noise", progress=False)
    with pytest.raises(OptionError, match="target"):
        quantize_model(fp32, tmp_path / "a.onnx", "gpu", "noise", preprocess=PRE, progress=False)
    with pytest.raises(QuantizationError, match="does not match"):
        quantize_model(fp32, tmp_path / "a.onnx", "cpu", "bn-stats", torch_model=_net(1), preprocess=PRE,
                       images=8, synthesis=FAST, progress=False)
    assert not (tmp_path / "a.onnx").exists()

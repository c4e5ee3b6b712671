"""``edgeclip models``: families and built-in names with parameters, input size, GMAC and ms/img measured here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeclip.cli import main
from edgeclip.export.catalog import count_macs, load_cards
from edgeclip.tables import FAMILIES

pytest.importorskip("open_clip", reason="measuring a model needs the export extra")


def test_macs_are_counted_on_the_graph(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    m = numpy_helper.from_array(np.ones((16, 5), np.float32), "m")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("MatMul", ["r", "m"], ["y"]),
             helper.make_node("MatMul", ["r", "rt"], ["a"]),  # activation x activation (attention-like)
             helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 1])]
    shape = numpy_helper.from_array(np.array([1, 32, 16], np.int64), "shape")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("a", TensorProto.FLOAT, None)], [w, m, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    conv = 8 * 8 * 8 * 3 * 3 * 3  # output elements x (Cin x kh x kw)
    assert count_macs(path, (1, 3, 16, 16)) == conv + 32 * 5 * 16 + 32 * 32 * 16


def test_models_lists_families_and_measures_names_here(capsys) -> None:
    assert main(["-q", "models", "--measure", "edgeclip-tiny-vit", "edgeclip-tiny-rn", "--seconds", "0.2"]) == 0
    out = capsys.readouterr().out
    for family in FAMILIES.values():
        assert f"| `{family.name}` |" in out
    cards = load_cards()
    vit = cards["edgeclip-tiny-vit"]
    assert vit.family == "vit" and vit.input_size == 32 and vit.ms_per_image > 0 and vit.gmac > 0
    from edgeclip.export.models import _open_clip

    model = _open_clip().create_model("edgeclip-tiny-vit")
    assert vit.image_params == sum(p.numel() for p in model.visual.parameters())
    assert vit.text_params == sum(p.numel() for p in model.parameters()) - vit.image_params
    assert vit.row() in out and cards["edgeclip-tiny-rn"].row() in out
    assert main(["models", "ViT-B-32", "edgeclip-tiny-vit"]) == 0  # no measuring: what is kept, and the hint
    out = capsys.readouterr().out
    assert "| `ViT-B-32` | vit | - |" in out and "run `edgeclip models --measure NAME...`" in out
    assert vit.row() in out and "edgeclip-tiny-rn" not in out.split("measured on")[1]

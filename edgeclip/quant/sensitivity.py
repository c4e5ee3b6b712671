"""Per-layer INT8 sensitivity (ZeroQ style) and the mixed-precision choice behind ``max_drop``.

Sensitivity of a weighted layer = how far the zero-shot output moves from fp32 when *only that layer* is
quantized, on the calibration images: the KL divergence of the label probabilities (as ZeroQ uses the KL
of the outputs) and ``1 - cosine`` of the embeddings.

Building one quantized model per layer would take minutes for a ViT-B/32, so one *probe* model answers
every question: the fully quantized QDQ model in which each DequantizeLinear output is replaced by
``Where(mask[owner], DQ(x), x)``, ``x`` being the float tensor of the fp32 model and ``owner`` the
weighted layer that quantization belongs to (its own inputs and weight, and its output where a float
node reads it). One boolean input switches any set of layers on, so every layer's sensitivity, and any
candidate exclusion set, costs one forward pass (fake-quant arithmetic in float: the integer kernels are
exact, so it differs from the real INT8 model only by rounding). The choice made with the probe is then
confirmed on the real INT8 model by the caller.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import QuantizationError
from .agreement import Scoring, compare, drop_points
from .recipes import FOLDABLE_ACTIVATIONS

log = logging.getLogger("edgeclip.quant")

MASK_INPUT = "edgeclip_quant_mask"
_OTHERS = "<others>"


@dataclass
class LayerSensitivity:
    """One weighted layer's sensitivity: output divergence with only this layer quantized."""

    node: str
    op_type: str
    kl: float
    cosine_drop: float
    top1_drop: float

    def record(self) -> dict[str, Any]:
        return {k: (round(v, 8) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class QuantProbe:
    """Fake-quant model where the quantization of each weighted layer is switched per run."""

    def __init__(self, qdq_path: Path, fp32_path: Path, nodes: Sequence[str], out_path: Path,
                 output_ops: Sequence[str] = ()) -> None:
        """``output_ops``: op types whose outputs the recipe quantizes (``Recipe.output_ops``): a quantizer
        between such a layer and a weighted layer reading it is on when either of the two is."""
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        self.nodes = list(nodes)
        self.index = {n: i for i, n in enumerate(self.nodes + [_OTHERS])}
        q = onnx.load(str(qdq_path))
        f = onnx.load(str(fp32_path))
        fnodes = {n.name: n for n in f.graph.node if n.name}
        finits = {i.name: i for i in f.graph.initializer}
        fproducer = {o: n.name for n in f.graph.node for o in n.output}
        qinits = {i.name for i in q.graph.initializer}
        producer = {o: n for n in q.graph.node for o in n.output}
        self.op_types = {n.name: n.op_type for n in f.graph.node if n.name in self.index}

        conds: dict[str, str] = {}
        head: list[Any] = []

        def cond_for(owner: str) -> str:
            if owner not in conds:
                idx = f"edgeclip_probe_idx_{len(conds)}"
                q.graph.initializer.append(helper.make_tensor(idx, TensorProto.INT64, [], [self.index[owner]]))
                conds[owner] = f"edgeclip_probe_on_{len(conds)}"
                head.append(helper.make_node("Gather", [MASK_INPUT, idx], [conds[owner]], axis=0,
                                             name=f"edgeclip_probe_gather_{len(conds)}"))
            return conds[owner]

        def either(a: str, b: str) -> str:
            key = f"{a}\n{b}"
            if key not in conds:
                ca, cb = cond_for(a), cond_for(b)
                conds[key] = f"edgeclip_probe_on_{len(conds)}"
                head.append(helper.make_node("Or", [ca, cb], [conds[key]], name=f"edgeclip_probe_or_{len(conds)}"))
            return conds[key]

        body: list[Any] = []
        switched = 0
        qnames = {n.name for n in q.graph.node}
        unfolded: dict[str, str] = {}

        def unfold(act: Any, name: str) -> str:
            """The fp32 activation ``act`` that the quantizer folded away, re-applied to ``name`` (in the INT8
            graph the pre-activation tensor carries the activation's output name)."""
            if name not in unfolded:
                for extra in act.input[1:]:
                    if extra and extra in finits and extra not in qinits:
                        q.graph.initializer.append(finits[extra])
                        qinits.add(extra)
                unfolded[name] = f"{name}__unfolded"
                copy = helper.make_node(act.op_type, [name, *act.input[1:]], [unfolded[name]],
                                        name=f"edgeclip_probe_unfold_{len(unfolded)}")
                copy.attribute.extend(act.attribute)
                body.append(copy)
            return unfolded[name]
        for node in q.graph.node:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                ref = fnodes.get(node.name)
                for i, name in enumerate(node.input):
                    dq = producer.get(name)
                    if dq is None or dq.op_type != "DequantizeLinear":
                        continue
                    if ref is None or i >= len(ref.input):
                        raise QuantizationError(f"cannot build the sensitivity probe: node {node.name!r} of the "
                                                f"INT8 model has no fp32 counterpart")
                    float_name = ref.input[i]
                    if float_name in finits and float_name not in qinits:
                        if float_name in producer:  # the quantizer named its DQ output after the weight
                            copy = onnx.TensorProto()
                            copy.CopyFrom(finits[float_name])
                            copy.name = float_name = f"{float_name}__fp32"
                        else:
                            copy = finits[float_name]
                        if copy.name not in qinits:
                            q.graph.initializer.append(copy)
                            qinits.add(copy.name)
                    act = fnodes.get(fproducer.get(float_name, ""))
                    if act is not None and act.name not in qnames and act.op_type in FOLDABLE_ACTIVATIONS:
                        source = fproducer.get(act.input[0])  # folded: the quantized output is its producer's
                        float_name = unfold(act, float_name)
                    else:
                        source = fproducer.get(float_name)
                    if node.name in self.index:
                        cond = cond_for(node.name)
                        if source in self.index and self.op_types.get(source) in output_ops:
                            cond = either(source, node.name)  # also the source's output quantizer
                    elif source in self.index:
                        cond = cond_for(source)
                    else:
                        cond = cond_for(_OTHERS)
                    out = f"{name}__probe_{switched}"
                    body.append(helper.make_node("Where", [cond, name, float_name], [out],
                                                 name=f"edgeclip_probe_where_{switched}"))
                    node.input[i] = out
                    switched += 1
            body.append(node)
        del q.graph.node[:]
        q.graph.node.extend(head + body)
        q.graph.input.append(helper.make_tensor_value_info(MASK_INPUT, TensorProto.BOOL, [len(self.index)]))
        onnx.save_model(q, str(out_path))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(out_path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = next(i.name for i in self.session.get_inputs() if i.name != MASK_INPUT)

    def run(self, images: np.ndarray, on: Iterable[str], others: bool = False, batch_size: int = 16) -> np.ndarray:
        """Embeddings with the layers in ``on`` quantized (``others``: unowned Q/DQ pairs too)."""
        mask = np.zeros(len(self.index), dtype=bool)
        for n in on:
            mask[self.index[n]] = True
        mask[self.index[_OTHERS]] = others
        outs = [self.session.run(None, {self.input_name: np.ascontiguousarray(images[i:i + batch_size]),
                                        MASK_INPUT: mask})[0] for i in range(0, len(images), batch_size)]
        return np.concatenate(outs, axis=0)


def layer_sensitivity(probe: QuantProbe, images: np.ndarray, reference: np.ndarray, labels: np.ndarray,
                      logit_scale: Scoring, progress: Callable[[int], None] | None = None) -> list[LayerSensitivity]:
    """Every weighted layer's sensitivity on ``images``, most sensitive first.

    ``reference``: the fp32 model's embeddings of ``images`` (what the probe gives with every layer off).
    """
    out = []
    for node in probe.nodes:
        c = compare(reference, probe.run(images, [node]), labels, logit_scale)
        out.append(LayerSensitivity(node, probe.op_types.get(node, "?"), c["mean_kl"], 1.0 - c["mean_cosine"],
                                    drop_points(c)))
        if progress:
            progress(1)
    out.sort(key=lambda s: (s.kl, s.cosine_drop), reverse=True)
    return out


def plan_exclusions(probe: QuantProbe, ranking: Sequence[LayerSensitivity], images: np.ndarray,
                    reference: np.ndarray, labels: np.ndarray, logit_scale: Scoring, max_drop: float,
                    progress: Callable[[int], None] | None = None) -> tuple[int, dict[str, Any]]:
    """Smallest ``k`` such that keeping the ``k`` most sensitive layers in fp32 meets ``max_drop`` (points).

    ``reference``: the fp32 model's embeddings of ``images``. Exponential then binary search over ``k`` on
    the probe; returns ``(k, agreement at k)``. ``k`` equals ``len(ranking)`` when even that does not meet
    the target.
    """
    order = [s.node for s in ranking]
    memo: dict[int, dict[str, Any]] = {}

    def agreement(k: int) -> dict[str, Any]:
        if k not in memo:
            on = order[k:]
            memo[k] = compare(reference, probe.run(images, on, others=bool(on)), labels, logit_scale)
            if progress:
                progress(1)
        return memo[k]

    def ok(k: int) -> bool:
        return drop_points(agreement(k)) <= max_drop + 1e-9

    n = len(order)
    if ok(0):
        return 0, agreement(0)
    hi = 1
    while hi < n and not ok(hi):
        hi *= 2
    hi = min(hi, n)
    if not ok(hi):
        return n, agreement(n)
    lo = hi // 2  # known to fail (or 0, which failed)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi, agreement(hi)

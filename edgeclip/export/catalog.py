"""``edgeclip models``: the model families and built-in names, with what a user picks by: image and text
parameters, input size, GMAC per image and the measured ms/img on this machine.

Sizes and speed do not depend on the weights, so each model is measured with random weights: its image tower
is exported to ONNX as ``edgeclip export`` exports it (reparameterized where the family needs it), its
multiply-accumulates are counted on that graph (Conv, MatMul and Gemm, attention included, at batch 1), and
ONNX Runtime's CPU provider times it (batch 1: the lowest of five per-round medians). Measurements are kept per machine in
``$EDGECLIP_CACHE_DIR/models.json`` (else ``~/.cache/edgeclip``), keyed by the CPU model and the versions
that matter, so listing them needs neither torch nor time. Accuracy needs real weights: not measured here.
"""
from __future__ import annotations

import gc
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .._version import __version__
from ..tables import FAMILIES
from .defaults import PROXY_MODELS

#: one name per family and size class measured by default (``edgeclip models --measure``)
DEFAULT_MEASURE = ("ViT-B-32", "ViT-B-16", "RN50", "convnext_base", "MobileCLIP2-S0", "MobileCLIP2-S2",
                   "MobileCLIP-S1", "ViT-B-16-SigLIP", "ViT-B-16-SigLIP2", "ViT-B-32-SigLIP2-256", "EVA02-B-16",
                   "proxy-vit", "proxy-rn")


@dataclass
class ModelCard:
    """What ``edgeclip models`` shows for one model."""

    name: str
    family: str
    image_params: int
    text_params: int
    input_size: int
    gmac: float
    ms_per_image: float
    threads: int
    cpu: str
    measured: str
    edgeclip: str = __version__

    def row(self) -> str:
        """One Markdown table row."""
        return (f"| `{self.name}` | {self.family} | {self.image_params / 1e6:.1f} | {self.text_params / 1e6:.1f} | "
                f"{self.input_size} | {self.gmac:.2f} | {self.ms_per_image:.1f} |")


def cache_file() -> Path:
    """``models.json`` in edgeclip's user cache (:func:`edgeclip.runtime.cache.cache_root`)."""
    from ..runtime.cache import cache_root

    return cache_root() / "models.json"


def this_cpu() -> str:
    """This machine's CPU model name (what the measurements are kept under)."""
    from ..runtime.cpu import read_cpuinfo

    return str(read_cpuinfo()[1] or "unknown CPU")


def load_cards(path: Path | None = None) -> dict[str, ModelCard]:
    """The measurements kept for this CPU (name -> card); empty when none or unreadable."""
    path = path or cache_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data.get(this_cpu(), {})
        return {name: ModelCard(**row) for name, row in rows.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def save_cards(cards: Iterable[ModelCard], path: Path | None = None) -> Path:
    """Add ``cards`` to the kept measurements of this CPU (written atomically)."""
    path = path or cache_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    rows = data.setdefault(this_cpu(), {})
    for card in cards:
        rows[card.name] = asdict(card)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


def builtin_names() -> list[tuple[str, str]]:
    """(family, name) of every name ``edgeclip models`` lists: the families' open_clip names, their tiny test
    models and the proxies."""
    out = [(f.name, n) for f in FAMILIES.values() for n in f.names if "/" not in n]
    out += [(f.name, f.tiny) for f in FAMILIES.values() if f.tiny]
    out += [("vit" if n.endswith("vit") else "modified-resnet", n) for n in PROXY_MODELS]
    return out


# ---------------------------------------------------------------------------------------------------------
# measuring (torch side)
# ---------------------------------------------------------------------------------------------------------
def count_macs(path: Path, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one run of the ONNX model at ``path`` on an input of ``input_shape``: every Conv,
    MatMul and Gemm, with the shapes ONNX Runtime computes (all intermediate tensors exposed once)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i).shape for i in g.initializer}
    floats = {v.name for v in g.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    exposed = [o for n in g.node for o in n.output if o in floats]
    for name in exposed:
        g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(prefix="edgeclip-macs-") as tmp:
        onnx.save(model, str(Path(tmp) / "all.onnx"))
        opts = ort.SessionOptions()  # one thread, never spinning: it must not slow what is timed after it
        opts.intra_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(Path(tmp) / "all.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])
        x = np.zeros(input_shape, np.float32)
        outs = sess.run(None, {sess.get_inputs()[0].name: x})
        names = [o.name for o in sess.get_outputs()]
        del sess
        gc.collect()
    shapes = {n: v.shape for n, v in zip(names, outs)}
    shapes.update(inits)
    shapes[g.input[0].name] = tuple(input_shape)
    total = 0
    for n in g.node:
        if n.op_type not in ("Conv", "MatMul", "Gemm") or n.output[0] not in shapes:
            continue
        out = shapes[n.output[0]]
        if n.op_type == "Conv":
            w = shapes.get(n.input[1])
            if w is not None:
                total += int(np.prod(out)) * int(np.prod(w[1:]))
        else:
            a = shapes.get(n.input[0])
            trans_a = next((at.i for at in n.attribute if at.name == "transA"), 0)
            if a is not None:
                total += int(np.prod(out)) * int(a[-2] if trans_a else a[-1])
    return total


def time_onnx(path: Path, input_shape: tuple[int, ...], seconds: float = 2.0, threads: int = 0,
              rounds: int = 5) -> float:
    """ms per run of the ONNX model at ``path`` (ONNX Runtime, CPU provider) over about ``seconds``: the lowest
    of the per-round medians of ``rounds`` rounds, so a burst of load from another process on a shared machine
    does not count as the model's cost."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(3):
        sess.run(None, feed)
    medians = []
    for _ in range(rounds):
        times: list[float] = []
        end = time.perf_counter() + seconds / rounds
        while time.perf_counter() < end or len(times) < 3:
            t = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t)
        medians.append(float(np.median(times)))
    return 1000.0 * min(medians)


def measure(name: str, seconds: float = 2.0, threads: int = 0, tokenizer: str | None = None,
            say: Callable[[str], None] | None = None) -> ModelCard:
    """Export ``name``'s image tower (random weights; the proxies' own) and measure it here."""
    import torch

    from .exporter import inference_form
    from .families import family_of
    from .models import ImageTower, _open_clip, load_model
    from .onnx_export import export_onnx

    say = say or (lambda m: None)
    say(f"{name}: loading (random weights)")
    open_clip = _open_clip()
    if name in PROXY_MODELS or name.startswith("edgeclip-tiny"):
        loaded = load_model(name, tokenizer=tokenizer)
    else:
        loaded = _random_weights(open_clip, name)
    model = inference_form(loaded)
    family = loaded.family or family_of(loaded.config)
    image = sum(p.numel() for p in model.visual.parameters())
    text = sum(p.numel() for p in model.parameters()) - image
    h, w = loaded.image_size
    with tempfile.TemporaryDirectory(prefix="edgeclip-models-") as tmp:
        say(f"{name}: exporting the image tower ({h}x{w})")
        path = export_onnx(ImageTower(model).eval(), torch.zeros(1, 3, h, w), Path(tmp) / "image.onnx",
                           "pixel_values", "image_embeds")[0]
        say(f"{name}: counting and timing")
        macs = count_macs(path, (1, 3, h, w))
        ms = time_onnx(path, (1, 3, h, w), seconds, threads)
    return ModelCard(name, family, int(image), int(text), int(h), macs / 1e9, ms, threads or (os.cpu_count() or 1),
                     this_cpu(), time.strftime("%Y-%m-%d"))


def _random_weights(open_clip: Any, name: str) -> Any:
    """An open_clip architecture with random weights, without its tokenizer (only the image tower is measured)."""
    import torch

    from ..errors import ModelLoadError
    from .families import family_of
    from .models import _from_open_clip, pretrained_preprocess

    if name not in open_clip.list_models():
        raise ModelLoadError(f"{name}: not an open_clip architecture or a built-in model (`edgeclip models` lists "
                             f"them)")
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    found = pretrained_preprocess(open_clip, name)
    if found:
        cfg.update(found[0])
    loaded = _from_open_clip(model, name, "open_clip-random", cfg, config=open_clip.get_model_config(name) or {})
    loaded.family = loaded.family or family_of(loaded.config)
    return loaded

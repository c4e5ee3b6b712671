"""The vocabularies of edgeclip, each defined once as data: precisions, INT8 recipes, backends (and ONNX
Runtime's execution providers), frame-source kinds, tokenizer kinds and scoring kinds; ``edgeclip watch``'s
schedules, events and sinks.

Also the model families ``edgeclip export`` verifies (:data:`FAMILIES`).

Everything else derives from these rows: the CLI's choices and help, option validation, the device's
backend choice, ``edgeclip bench`` variants, ``edgeclip devices`` output, the extras checks and the docs'
tables (``python -m edgeclip.tables`` prints them as Markdown). Adding a backend is its module under
``edgeclip/runtime/backends/`` plus one row of :data:`BACKENDS` (and its pip extra); adding a source kind
is its module under ``edgeclip/sources/`` plus one row of :data:`SOURCE_KINDS`.

Rows name the modules that implement them as strings, loaded on first use (:func:`load_module`), so this
module imports nothing of edgeclip but ``errors`` and every layer may read it.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Iterable, Mapping, TypeVar

from .errors import OptionError

T = TypeVar("T")


def _rows(*rows: T) -> dict[str, T]:
    out: dict[str, T] = {}
    for row in rows:
        name = getattr(row, "name")
        if name in out:
            raise ValueError(f"duplicate row {name!r}")
        out[name] = row
    return out


def closest(name: str, names: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``names`` to ``name``, or an empty string."""
    match = difflib.get_close_matches(str(name), [str(n) for n in names], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def pick(table: Mapping[str, T], name: str, param: str, allowed: Iterable[str] | None = None) -> T:
    """The row ``name`` of ``table``; OptionError naming ``param``, the closest valid name and all of them.

    ``allowed`` narrows the valid names (e.g. the precisions a backend runs).
    """
    names = list(allowed) if allowed is not None else list(table)
    if name not in names or name not in table:
        raise OptionError(f"unknown {param} {name!r}{closest(name, names)}; use one of {', '.join(names)}")
    return table[name]


def load_module(path: str) -> ModuleType:
    """Import the module a row names (``edgeclip.runtime.backends.openvino``)."""
    return importlib.import_module(path)


# ---------------------------------------------------------------------------------------------------------
# precisions
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """One numeric precision and where it is a valid value.

    ``uses``: ``load`` (what ``edgeclip.load`` may be asked for), ``profile`` (a device
    profile's default), ``file`` (a bundle file's recorded precision), ``engine`` (a TensorRT engine),
    ``synthesis`` (autocast while synthesising calibration images).
    """

    name: str
    title: str
    uses: frozenset[str]


PRECISIONS: dict[str, Precision] = _rows(
    Precision("fp32", "32-bit float", frozenset({"load", "profile", "file", "engine", "synthesis"})),
    Precision("int8", "an INT8 (Q/DQ) file made by `edgeclip quantize`, or an INT8 engine",
              frozenset({"load", "profile", "file", "engine"})),
    Precision("bf16", "bfloat16 arithmetic on the fp32 file (OpenVINO on CPUs with AVX512_BF16 or AMX)",
              frozenset({"load", "synthesis"})),
    Precision("fp16", "16-bit float (TensorRT engines; autocast on CUDA)",
              frozenset({"profile", "file", "engine", "synthesis"})),
)


def precisions(use: str) -> tuple[str, ...]:
    """The precision names valid for ``use`` (see :class:`Precision`), in table order."""
    return tuple(p.name for p in PRECISIONS.values() if use in p.uses)


# ---------------------------------------------------------------------------------------------------------
# INT8 recipes (quantize targets)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Int8Recipe:
    """One INT8 recipe (``edgeclip quantize``'s ``target``): the backend entry it is made for and its file.

    The recipe's quantization settings live in ``edgeclip.quant.recipes.RECIPES`` under the same name.
    """

    name: str
    title: str
    made_for: str  # a backend entry (see :func:`backend_entries`)

    @property
    def file(self) -> str:
        """The bundle file it writes: ``image_encoder.int8.<name>.onnx``."""
        return f"image_encoder.int8.{self.name}.onnx"


INT8_RECIPES: dict[str, Int8Recipe] = _rows(
    Int8Recipe("cpu", "ONNX Runtime's CPU kernels: U8 activations, S8 7-bit weights", "onnxruntime:cpu"),
    Int8Recipe("tensorrt", "TensorRT 10+ explicit quantization: symmetric S8S8 Q/DQ, per-channel weights",
               "tensorrt"),
    Int8Recipe("openvino", "OpenVINO's CPU plugin: U8S8 per-channel, residual adds and pools in INT8 too",
               "openvino"),
)


# ---------------------------------------------------------------------------------------------------------
# backends and ONNX Runtime's execution providers
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """One inference backend.

    - ``module``: its module under ``edgeclip/runtime/backends/``, which defines ``available(variant)``
      (whether it can run here, and why (not)) and ``open_encoder(path, options, precision, variant, bundle)``.
    - ``precisions``: what its files can run at; ``int8_recipes``: the INT8 files it runs, best first
      (ONNX Runtime's depend on the execution provider: :data:`PROVIDERS`).
    - ``options``: the load options (``edgeclip.options.LoadOptions`` fields) only this backend reads.
    - ``files``: None when it runs the bundle's ONNX files; else the module that finds the file it runs,
      built on the device (``find_file(bundle, precision)``): TensorRT engines.
    - ``extra``: the pip extra that installs it.
    """

    name: str
    title: str
    module: str
    extra: str | None
    precisions: tuple[str, ...]
    int8_recipes: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    files: str | None = None

    def load(self) -> ModuleType:
        """The backend's module."""
        return load_module(self.module)


#: the first row runs everywhere (the reference of ``edgeclip bench`` and the fallback of every profile)
BACKENDS: dict[str, Backend] = _rows(
    Backend("onnxruntime", "ONNX Runtime (CPU, CUDA or its TensorRT provider)",
            "edgeclip.runtime.backends.onnxruntime", "cpu", ("fp32", "int8"), options=("providers",)),
    Backend("tensorrt", "TensorRT engines built on the device by `edgeclip build`",
            "edgeclip.runtime.backends.tensorrt", "tensorrt", ("fp32", "fp16", "int8"),
            int8_recipes=("tensorrt",), files="edgeclip.devices.engines"),
    Backend("openvino", "OpenVINO, the bundle's ONNX files compiled and cached per machine",
            "edgeclip.runtime.backends.openvino", "openvino", ("fp32", "bf16", "int8"),
            int8_recipes=("openvino", "tensorrt", "cpu"), options=("hint", "cache_dir")),
    Backend("rknn", "Rockchip NPUs (RK3588, RK356x): an INT8 .rknn file built from the bundle by `edgeclip build`",
            "edgeclip.runtime.backends.rknn", "rknn", ("int8",), options=("core_mask",), files="edgeclip.devices.rknn"),
)


#: OpenVINO's performance hints (the ``hint`` load option): one request per batch (latency), a batch split
#: over parallel streams (throughput), or latency for single images and throughput for batches (auto)
OPENVINO_HINTS = ("auto", "latency", "throughput")


#: Rockchip NPU core masks (the ``core_mask`` load option): ``auto`` lets the runtime pick an idle core; one
#: core; one inference spread over several cores; every core
RKNN_CORE_MASKS = ("auto", "0", "1", "2", "0_1", "0_1_2", "all")


@dataclass(frozen=True)
class Provider:
    """One ONNX Runtime execution provider: its short name, ONNX Runtime's name, the INT8 files it runs best,
    and whether it runs the text encoder too (``text``; the TensorRT provider builds an engine per input
    shape, too slow for relabelling)."""

    name: str
    ort_name: str
    int8_recipes: tuple[str, ...]
    text: bool = True


PROVIDERS: dict[str, Provider] = _rows(
    Provider("tensorrt", "TensorrtExecutionProvider", ("tensorrt",), text=False),
    Provider("cuda", "CUDAExecutionProvider", ("tensorrt",)),
    Provider("openvino", "OpenVINOExecutionProvider", ("openvino", "tensorrt", "cpu")),
    Provider("coreml", "CoreMLExecutionProvider", ("cpu", "tensorrt")),
    Provider("cpu", "CPUExecutionProvider", ("cpu", "tensorrt")),
)


def backend_entries() -> tuple[str, ...]:
    """What a device profile's backend order may list: each backend, ONNX Runtime once per provider
    (``onnxruntime:cuda``)."""
    out: list[str] = []
    for b in BACKENDS.values():
        out += [f"{b.name}:{p}" for p in PROVIDERS] if "providers" in b.options else [b.name]
    return tuple(out)


def split_entry(entry: str) -> tuple[Backend, Provider | None]:
    """The backend and (for ONNX Runtime) the provider of a backend entry such as ``onnxruntime:cpu``."""
    name, _, variant = entry.partition(":")
    backend = pick(BACKENDS, name, "backend")
    return backend, (pick(PROVIDERS, variant, "execution provider") if variant else None)


def entry_int8_recipes(entry: str) -> tuple[str, ...]:
    """The INT8 recipes a backend entry runs, best first."""
    backend, provider = split_entry(entry)
    return provider.int8_recipes if provider is not None else backend.int8_recipes


# ---------------------------------------------------------------------------------------------------------
# frame sources
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceKind:
    """One kind of frame source, in the order sources are matched.

    ``module`` (under ``edgeclip/sources/``) defines ``match(text, options)`` (the target it names, or None)
    and ``open_reader(spec)`` (a frame reader). ``options``: the source options (``edgeclip.sources.SourceOptions``
    fields) this kind accepts; any other one given is refused naming the kind. ``live`` sources are
    reconnected when lost; the others end. ``extra``: what decoding it needs (None: Pillow is enough).
    """

    name: str
    title: str
    examples: tuple[str, ...]
    module: str
    live: bool
    options: tuple[str, ...]
    extra: str | None = "opencv"

    def load(self) -> ModuleType:
        """The kind's module."""
        return load_module(self.module)


_LIVE = ("reconnect_min", "reconnect_max", "give_up_after")
_CAMERA = ("width", "height", "fps", *_LIVE)
_NETWORK = ("read_timeout", "max_part_size", *_LIVE)
_PLAYED = ("fps", "realtime", "loop")
_FFMPEG = ("decode_threads",)  # read through OpenCV's FFmpeg decoder
SOURCE_KINDS: dict[str, SourceKind] = _rows(
    SourceKind("camera", "a V4L2 camera; width, height and fps are requested from it", ("0", "/dev/video0"),
               "edgeclip.sources.camera", True, _CAMERA),
    SourceKind("csi", "a Jetson CSI camera (nvarguscamerasrc through GStreamer)", ("csi://0",),
               "edgeclip.sources.gstreamer", True, _CAMERA),
    SourceKind("usb", "a USB camera through a GStreamer v4l2src pipeline", ("usb://0",),
               "edgeclip.sources.gstreamer", True, _CAMERA),
    SourceKind("gstreamer", "a GStreamer pipeline ending in appsink", ("gst:PIPELINE ! appsink",),
               "edgeclip.sources.gstreamer", True, _LIVE),
    SourceKind("mjpeg", "multipart MJPEG over HTTP with edgeclip's own reader", ("mjpeg+http://host/video",),
               "edgeclip.sources.mjpeg", True, _NETWORK, extra=None),
    SourceKind("url", "a network stream through OpenCV's FFmpeg (MJPEG over HTTP too)",
               ("rtsp://host/stream", "http://host/video"), "edgeclip.sources.network", True,
               (*_NETWORK, *_FFMPEG)),
    SourceKind("synthetic", "generated moving frames (tests, soak runs)", ("synthetic://640x480",),
               "edgeclip.sources.synthetic", False, ("width", "height", *_PLAYED), extra=None),
    SourceKind("folder", "the image files of a folder (or one image), in name order", ("frames/", "photo.jpg"),
               "edgeclip.sources.files", False, _PLAYED, extra=None),
    SourceKind("file", "a video file, frame by frame", ("video.mp4",), "edgeclip.sources.files", False,
               (*_PLAYED, *_FFMPEG)),
)


# ---------------------------------------------------------------------------------------------------------
# edgeclip watch: when a region is classified, the events, where they go
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WatchSchedule:
    """When ``edgeclip watch`` classifies a region. ``key``: the region key that selects it, ``on`` (``on:
    NAME``) or the schedule's own name with a period (``every: 5s``)."""

    name: str
    title: str
    key: str


WATCH_SCHEDULES: dict[str, WatchSchedule] = _rows(
    WatchSchedule("motion", "only when the region changes (motion gating): a still region keeps its state and "
                            "costs no encoder call", "on"),
    WatchSchedule("always", "every frame", "on"),
    WatchSchedule("every", "every N seconds (`every: 5s`), moving or not", "every"),
)


def watch_schedules(key: str) -> tuple[str, ...]:
    """The schedules a region key selects: ``watch_schedules("on")`` -> ``("motion", "always")``."""
    return tuple(s.name for s in WATCH_SCHEDULES.values() if s.key == key)


@dataclass(frozen=True)
class WatchEvent:
    """One kind of event ``edgeclip watch`` sends (the ``event`` field of each record)."""

    name: str
    title: str


WATCH_EVENTS: dict[str, WatchEvent] = _rows(
    WatchEvent("start", "the run began: bundle, backend, thread budget, cameras and their regions"),
    WatchEvent("state", "a region's state changed (camera, region, state, previous, score, scores, frame, "
                        "latency_ms, snapshot)"),
    WatchEvent("summary", "every `summary_every` seconds: crops, encoder calls, drops, motion-skipped, RSS, threads, "
                          "each sink's queue and counters"),
    WatchEvent("source_lost", "a camera stopped delivering frames; it is reopened with backoff"),
    WatchEvent("reconnect", "a lost camera is back (gap_s, attempts)"),
    WatchEvent("source_gone", "a lost camera gave up (`give_up_after`)"),
    WatchEvent("frame_error", "one frame or image file could not be decoded; the camera goes on"),
    WatchEvent("region_error", "a region does not fit its camera's frames; it is skipped"),
    WatchEvent("camera_error", "a camera of a reloaded configuration could not be opened; the running one stays"),
    WatchEvent("reload", "the configuration was re-read (cameras kept, started, restarted, stopped)"),
    WatchEvent("reload_error", "a re-read configuration is wrong (file, line, key); the running one stays"),
    WatchEvent("end", "the run ended (reason, totals)"),
)


@dataclass(frozen=True)
class WatchSink:
    """One place ``edgeclip watch`` sends events, each with its own bounded queue and thread.

    ``key``: its key under ``outputs:``; ``events``: the events it takes (None: all).
    """

    name: str
    title: str
    key: str
    events: tuple[str, ...] | None = None


WATCH_SINKS: dict[str, WatchSink] = _rows(
    WatchSink("jsonl", "every event as one JSON line, to a file or stdout", "jsonl"),
    WatchSink("mqtt", "states on an MQTT broker with Home Assistant discovery and availability", "mqtt",
              ("state", "source_lost", "reconnect", "source_gone")),
    WatchSink("webhook", "each state event as a JSON POST, retried with backoff", "webhooks", ("state",)),
)


# ---------------------------------------------------------------------------------------------------------
# tokenizers and scoring
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenizerKind:
    """One tokenizer kind (the manifest's ``tokenizer.type``): its torch-free module and pip extra."""

    name: str
    title: str
    module: str
    extra: str | None = None

    def load(self) -> ModuleType:
        """The tokenizer's module (defines ``from_manifest(bundle_path, section)``)."""
        return load_module(self.module)


TOKENIZERS: dict[str, TokenizerKind] = _rows(
    TokenizerKind("clip-bpe", "CLIP's byte-level BPE (49,408 ids), torch-free", "edgeclip.runtime.tokenizer"),
    TokenizerKind("hf-tokenizer", "the checkpoint's own Hugging Face tokenizer.json (SigLIP's SentencePiece, "
                  "SigLIP2's Gemma), with open_clip's cleaning, truncation and padding", "edgeclip.runtime.hf_tokenizer",
                  "tokenizers"),
)


@dataclass(frozen=True)
class Scoring:
    """How label probabilities come from cosine similarities (the manifest's ``model.scoring``).

    ``function`` (in ``edgeclip.runtime.scoring``) maps ``(logits [N, L])`` to probabilities, where
    ``logits = logit_scale * cosine + logit_bias``.
    """

    name: str
    title: str
    function: str
    exclusive: bool  # probabilities over the labels sum to 1


SCORINGS: dict[str, Scoring] = _rows(
    Scoring("softmax", "softmax over the labels (CLIP): one label wins", "softmax", True),
    Scoring("sigmoid", "a sigmoid per label (SigLIP): each label's own probability, labels independent",
            "sigmoid", False),
)


# ---------------------------------------------------------------------------------------------------------
# model families
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFamily:
    """One family of CLIP-style models that ``edgeclip export`` exports and verifies.

    - ``names``: open_clip architectures (and Hugging Face ids) of the family, for the docs and
      ``edgeclip models``; ``timm_prefixes``: the timm image towers (``vision_cfg.timm_model_name``) that
      mark it in an open_clip config (``edgeclip.export.families.family_of``).
    - ``tokenizer`` and ``scoring``: rows of :data:`TOKENIZERS` and :data:`SCORINGS`.
    - ``tiny``: its random-weight test config (``edgeclip/export/configs/``); ``reparameterize``: exported in
      its inference form (MobileOne/FastViT branches merged, BatchNorm folded); ``batchnorm``: the image tower
      has BatchNorm before folding, so ``bn-stats`` calibration applies (``text-guided`` applies to all).
    """

    name: str
    title: str
    names: tuple[str, ...]
    tokenizer: str
    scoring: str
    tiny: str | None = None
    timm_prefixes: tuple[str, ...] = ()
    reparameterize: bool = False
    batchnorm: bool = False
    notes: str = ""

    @property
    def calibrations(self) -> tuple[str, ...]:
        """The synthetic calibration sources that apply to the family's image tower."""
        return ("text-guided", "bn-stats") if self.batchnorm else ("text-guided",)


FAMILIES: dict[str, ModelFamily] = _rows(
    ModelFamily("vit", "CLIP ViT (OpenAI, LAION, DataComp, MetaCLIP)",
                ("ViT-B-32", "ViT-B-16", "ViT-L-14", "openai/clip-vit-base-patch32"), "clip-bpe", "softmax",
                "edgeclip-tiny-vit"),
    ModelFamily("modified-resnet", "CLIP ResNet (OpenAI's ModifiedResNet, attention pool)",
                ("RN50", "RN101", "RN50x4"), "clip-bpe", "softmax", "edgeclip-tiny-rn", batchnorm=True),
    ModelFamily("convnext", "ConvNeXt CLIP (LAION; channels-last LayerNorm)",
                ("convnext_base", "convnext_base_w", "convnext_large_d"), "clip-bpe", "softmax",
                "edgeclip-tiny-convnext", ("convnext", "edgeclip_tiny_convnext")),
    ModelFamily("mobileclip", "MobileCLIP and MobileCLIP2 (Apple; FastViT MCi / MobileOne, reparameterized)",
                ("MobileCLIP2-S0", "MobileCLIP2-S2", "MobileCLIP-S1", "MobileCLIP-S2", "MobileCLIP-B"), "clip-bpe",
                "softmax", "edgeclip-tiny-mobileclip", ("fastvit_mci", "vit_base_mci", "edgeclip_tiny_fastvit"),
                reparameterize=True,
                batchnorm=True, notes="MobileCLIP-B and MobileCLIP2-B are ViT-B towers with a MobileOne stem"),
    ModelFamily("siglip", "SigLIP (Google; SentencePiece tokenizer, sigmoid scores, attention-pool head)",
                ("ViT-B-16-SigLIP", "ViT-B-16-SigLIP-256", "ViT-SO400M-14-SigLIP"), "hf-tokenizer", "sigmoid",
                "edgeclip-tiny-siglip", ("vit_base_patch16_siglip", "vit_base_patch32_siglip",
                                         "vit_large_patch16_siglip", "vit_so400m_patch", "vit_giantopt_patch16_siglip",
                                         "edgeclip_tiny_siglip")),
    ModelFamily("siglip2", "SigLIP2 (Google; Gemma tokenizer, sigmoid scores, attention-pool head)",
                ("ViT-B-16-SigLIP2", "ViT-B-32-SigLIP2-256", "ViT-SO400M-16-SigLIP2-256"), "hf-tokenizer",
                "sigmoid", "edgeclip-tiny-siglip2"),
    ModelFamily("eva02", "EVA02-CLIP (BAAI; rotary embeddings, SwiGLU)", ("EVA02-B-16", "EVA02-L-14"),
                "clip-bpe", "softmax", "edgeclip-tiny-eva02", ("eva02", "edgeclip_tiny_eva02")),
)


# ---------------------------------------------------------------------------------------------------------
# the docs' tables
# ---------------------------------------------------------------------------------------------------------
def markdown() -> str:
    """Every table as Markdown (what docs/api.md shows)."""
    out = ["| precision | what | valid for |", "| --- | --- | --- |"]
    out += [f"| `{p.name}` | {p.title} | {', '.join(sorted(p.uses))} |" for p in PRECISIONS.values()]
    out += ["", "| INT8 recipe | made for | what |", "| --- | --- | --- |"]
    out += [f"| `{r.name}` | `{r.made_for}` | {r.title} |" for r in INT8_RECIPES.values()]
    out += ["", "| backend | extra | precisions | INT8 files, best first | its own options |",
            "| --- | --- | --- | --- | --- |"]
    for b in BACKENDS.values():
        recipes = (tuple(f"{p.name}: {'/'.join(p.int8_recipes)}" for p in PROVIDERS.values())
                   if "providers" in b.options else b.int8_recipes or ("its own, built by `edgeclip build`",))
        out.append(f"| `{b.name}` | `{b.extra}` | {', '.join(b.precisions)} | {'; '.join(recipes)} | "
                   f"{', '.join(b.options) or '-'} |")
    out += ["", "| source kind | examples | live | options | needs |", "| --- | --- | --- | --- | --- |"]
    out += [f"| `{k.name}` | {', '.join(f'`{e}`' for e in k.examples)} | {'yes' if k.live else 'no'} | "
            f"{', '.join(k.options) or '-'} | {k.extra or 'Pillow'} |" for k in SOURCE_KINDS.values()]
    out += ["", "| watch schedule | region key | what |", "| --- | --- | --- |"]
    out += [f"| `{w.name}` | `{w.key}` | {w.title} |" for w in WATCH_SCHEDULES.values()]
    out += ["", "| watch event | what |", "| --- | --- |"]
    out += [f"| `{e.name}` | {e.title} |" for e in WATCH_EVENTS.values()]
    out += ["", "| watch sink | `outputs:` key | events | what |", "| --- | --- | --- | --- |"]
    out += [f"| `{k.name}` | `{k.key}` | {', '.join(k.events) if k.events else 'all'} | {k.title} |"
            for k in WATCH_SINKS.values()]
    out += ["", "| tokenizer | what | needs |", "| --- | --- | --- |"]
    out += [f"| `{t.name}` | {t.title} | {f'the `{t.extra}` extra' if t.extra else '-'} |" for t in TOKENIZERS.values()]
    out += ["", "| scoring | what |", "| --- | --- |"]
    out += [f"| `{s.name}` | {s.title} |" for s in SCORINGS.values()]
    out += ["", "| family | what | tokenizer | scoring | synthetic calibration | tiny test model |",
            "| --- | --- | --- | --- | --- | --- |"]
    out += [f"| `{f.name}` | {f.title} | `{f.tokenizer}` | `{f.scoring}` | {', '.join(f.calibrations)} | "
            f"`{f.tiny}` |" for f in FAMILIES.values()]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")

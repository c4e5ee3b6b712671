"""Loading CLIP checkpoints into one shape the exporter understands.

Accepted ``model`` values, tried in this order:

* a built-in name: ``proxy-vit`` / ``proxy-rn`` (small CLIP models trained on CIFAR-10 + Imagenette that
  ship as the separate ``edgeclip-models`` package, packages/edgeclip-models/) or an ``edgeclip-tiny-*``
  model of each family (random weights, for tests: ``TINY_MODELS``);
* a local folder: open_clip layout (``open_clip_config.json`` + weights) or Hugging Face CLIP layout
  (``config.json`` + ``model.safetensors``/``pytorch_model.bin``);
* a local checkpoint file with ``config`` (``model.json``) (an open_clip model config);
* an open_clip architecture name (``ViT-B-32``) with ``pretrained`` (a tag, a file or ``none``);
* a Hugging Face id (``openai/clip-vit-base-patch32``), from the local cache when offline.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..bundle import Bundle
from ..errors import BundleError, ModelLoadError, OptionError
from ..tables import FAMILIES
from .defaults import DEFAULT_MODEL, PROXY_MODELS
from .families import family_of, pretrained_preprocess, register_tiny_models
from .tokenizing import TokenizerSpec, resolve_tokenizer

log = logging.getLogger("edgeclip.export")

PACKAGE = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MODELS_PACKAGE = PACKAGE.parent / "packages" / "edgeclip-models"  # in a source checkout


def _models_dir() -> Path:
    """Where the built-in proxy checkpoints are: the installed ``edgeclip_models`` package, else the copy in
    this source checkout (packages/edgeclip-models)."""
    try:
        spec = importlib.util.find_spec("edgeclip_models")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return MODELS_PACKAGE / "edgeclip_models"


MODELS_DIR = _models_dir()
#: the random-weight test model of each family (``edgeclip/export/configs/``)
TINY_MODELS = tuple(f.tiny for f in FAMILIES.values() if f.tiny)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageTower(nn.Module):
    """pixel_values [B, 3, H, W] float32 -> image_embeds [B, D] (not normalised)."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.owner = fn

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if hasattr(self.owner, "encode_image"):
            return self.owner.encode_image(pixel_values)
        out = self.owner.get_image_features(pixel_values=pixel_values)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


class TextTower(nn.Module):
    """input_ids [B, context_length] int64 -> text_embeds [B, D] (not normalised)."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.owner = fn

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if hasattr(self.owner, "encode_text"):
            return self.owner.encode_text(input_ids)
        out = self.owner.get_text_features(input_ids=input_ids)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


@dataclass
class LoadedModel:
    """A CLIP model ready for export, with what the bundle manifest records about it."""

    model: nn.Module
    model_id: str
    source: str
    architecture: str
    embed_dim: int
    image_size: tuple[int, int]
    context_length: int
    logit_scale: float
    preprocess: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    #: SigLIP's learnt bias: scores are ``sigmoid(logit_scale * cos + logit_bias)``; None: softmax (CLIP)
    logit_bias: float | None = None
    family: str = ""
    tokenizer: TokenizerSpec | None = None
    #: the open_clip model config (vision_cfg, text_cfg...), empty for Hugging Face models
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def scoring(self) -> str:
        """``sigmoid`` for models with a logit bias (SigLIP), ``softmax`` otherwise."""
        return "softmax" if self.logit_bias is None else "sigmoid"

    @property
    def image_tower(self) -> ImageTower:
        return ImageTower(self.model).eval()

    @property
    def text_tower(self) -> TextTower:
        return TextTower(self.model).eval()

    def manifest_section(self) -> dict[str, Any]:
        """The manifest's ``model`` section."""
        out = {"id": self.model_id, "source": self.source, "architecture": self.architecture,
               "embed_dim": self.embed_dim, "image_size": list(self.image_size),
               "context_length": self.context_length, "logit_scale": self.logit_scale}
        if self.logit_bias is not None:
            out.update(scoring=self.scoring, logit_bias=self.logit_bias)
        if self.family:
            out["family"] = self.family
        return {**out, **self.details}


def _size2(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def _hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_hint(what: str) -> str:
    return (f"cannot download {what}: the model hub is not reachable from this machine and the weights are "
            f"not in the local cache. Pass a local checkpoint instead: "
            f"model='/path/to/folder' (open_clip_config.json + open_clip_model.safetensors, or a Hugging "
            f"Face CLIP folder with config.json + model.safetensors), model='ARCH' "
            f"pretrained='/path/to/weights.safetensors', or model='weights.pt' config='model_config.json'")


# ---------------------------------------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------------------------------------
def _open_clip():
    try:
        import open_clip
    except ImportError as exc:
        raise ModelLoadError("open_clip is not installed; install the export extra: pip install 'edgeclip[export]'") \
            from exc
    register_tiny_models()
    if str(CONFIG_DIR) not in {str(p) for p in open_clip.factory._MODEL_CONFIG_PATHS}:
        open_clip.add_model_config(CONFIG_DIR)
    return open_clip


def _architecture(visual: nn.Module, config: dict[str, Any]) -> str:
    timm_name = (config.get("vision_cfg") or {}).get("timm_model_name")
    if timm_name:
        return f"timm-{timm_name}"
    return {"VisionTransformer": "vit", "ModifiedResNet": "modified-resnet"}.get(type(visual).__name__,
                                                                                 type(visual).__name__)


def _from_open_clip(model: nn.Module, model_id: str, source: str, preprocess_cfg: dict[str, Any],
                    context_length: int | None = None, config: dict[str, Any] | None = None) -> LoadedModel:
    model = model.float().eval()
    visual = model.visual
    config = dict(config or {})
    arch = _architecture(visual, config)
    size = _size2(preprocess_cfg.get("size", getattr(visual, "image_size", 224)))
    with torch.no_grad():
        dim = int(model.encode_image(torch.zeros(1, 3, *size)).shape[-1])
    ctx = int(context_length or getattr(model, "context_length", 77))
    pre = {
        "size": list(size),
        "resize_mode": preprocess_cfg.get("resize_mode", "shortest"),
        "interpolation": preprocess_cfg.get("interpolation", "bicubic"),
        "mean": list(preprocess_cfg.get("mean", OPENAI_MEAN)),
        "std": list(preprocess_cfg.get("std", OPENAI_STD)),
        "fill_color": int(preprocess_cfg.get("fill_color", 0)),
    }
    scale = float(model.logit_scale.exp().item()) if hasattr(model, "logit_scale") else 100.0
    bias = getattr(model, "logit_bias", None)
    loaded = LoadedModel(model, model_id, source, arch, dim, size, ctx, scale, pre,
                         logit_bias=float(bias.item()) if bias is not None else None,
                         family=family_of(config, visual), config=config)
    if loaded.logit_bias is not None and not (config.get("text_cfg") or {}).get("hf_tokenizer_name"):
        log.info("%s scores with a sigmoid (it has a logit bias)", model_id)
    return loaded


def _open_clip_create(open_clip: Any, name: str, pretrained: str | None, model_id: str, source: str,
                      tokenizer: str | None = None, folder: Path | None = None) -> LoadedModel:
    config = open_clip.get_model_config(name) or {}
    ctx = int((config.get("text_cfg") or {}).get("context_length") or 77)
    spec = resolve_tokenizer(config, model_id, ctx, family_of(config), tokenizer, folder)  # before the weights
    try:
        model = open_clip.create_model(name, pretrained=pretrained, weights_only=True)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{model_id}: {exc}") from exc
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{model_id}: open_clip could not load it ({exc})") from exc
    cfg = dict(model.visual.preprocess_cfg) if hasattr(model.visual, "preprocess_cfg") else {}
    found = pretrained_preprocess(open_clip, name) if source in ("open_clip-random", "open_clip-checkpoint") else None
    if found is not None:  # a weights file or random weights: preprocess as open_clip's tags for this architecture
        cfg.update(found[0])
    loaded = _from_open_clip(model, model_id, source, cfg, config=config)
    if found is not None:
        loaded.details["preprocess_from"] = f"open_clip pretrained config {found[1]}"
    spec.context_length = loaded.context_length
    loaded.tokenizer = spec
    return loaded


def load_open_clip_dir(path: Path, tokenizer: str | None = None) -> LoadedModel:
    """An open_clip folder: ``open_clip_config.json`` ({model_cfg, preprocess_cfg}) plus weights."""
    open_clip = _open_clip()
    try:
        json.loads((path / "open_clip_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path / 'open_clip_config.json'}: unreadable ({exc})") from exc
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")) and not any(path.glob("*.pt*")):
        raise ModelLoadError(f"{path}: no weights file (open_clip_model.safetensors or *.bin) next to "
                             f"open_clip_config.json")
    return _open_clip_create(open_clip, f"local-dir:{path}", None, str(path), "open_clip-dir", tokenizer, path)


def load_checkpoint_with_config(checkpoint: Path, config: Path, tokenizer: str | None = None) -> LoadedModel:
    """A checkpoint file plus an open_clip model config JSON (the config's file stem names the model)."""
    open_clip = _open_clip()
    if not config.is_file():
        raise ModelLoadError(f"{config}: model config file not found")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config}: invalid JSON ({exc})") from exc
    if "model_cfg" in cfg:  # an open_clip_config.json was given
        cfg = cfg["model_cfg"]
    if "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise ModelLoadError(f"{config}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    name = f"edgeclip-user-{config.stem}"
    open_clip.factory._MODEL_CONFIGS[name] = cfg
    return _open_clip_create(open_clip, name, str(checkpoint), str(checkpoint), "open_clip-checkpoint", tokenizer)


def _models_install_hint() -> str:
    import shlex
    import sys

    where = MODELS_PACKAGE if MODELS_PACKAGE.is_dir() else Path("packages/edgeclip-models")
    return f"{shlex.quote(sys.executable)} -m pip install {shlex.quote(str(where))}"


def load_builtin(name: str, seed: int = 0, tokenizer: str | None = None) -> LoadedModel:
    """A built-in model: the packaged proxy checkpoints, or a tiny random-weight config for tests."""
    if name in PROXY_MODELS:
        folder = MODELS_DIR / name
        if not (folder / "open_clip_config.json").is_file():
            raise ModelLoadError(f"built-in model {name!r} is not installed (looked in {folder}): install the "
                                 f"edgeclip-models package from edgeclip's source tree ({_models_install_hint()}), "
                                 f"or pass model='PATH'")
        loaded = load_open_clip_dir(folder, tokenizer)
        loaded.model_id, loaded.source = name, "builtin"
        return loaded
    open_clip = _open_clip()
    torch.manual_seed(seed)
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # open_clip warns that no weights were loaded: intended here
    try:
        loaded = _open_clip_create(open_clip, name, None, name, "builtin-random", tokenizer)
    finally:
        root.setLevel(level)
    loaded.details["random_weights_seed"] = seed
    return loaded


# ---------------------------------------------------------------------------------------------------------
# Hugging Face transformers
# ---------------------------------------------------------------------------------------------------------
def load_hf(model_id: str) -> LoadedModel:
    """A Hugging Face CLIP model from a local folder or the hub (the local cache when offline)."""
    try:
        from transformers import CLIPModel
    except ImportError as exc:
        raise ModelLoadError("transformers is not installed; pip install 'edgeclip[export]'") from exc
    local = Path(model_id).is_dir()
    offline = not local and not _hub_reachable()
    try:
        model = CLIPModel.from_pretrained(model_id, local_files_only=local or offline)
    except OSError as exc:
        if offline:
            raise ModelLoadError(f"{model_id}: " + _offline_hint("this Hugging Face model")) from exc
        raise ModelLoadError(f"{model_id}: transformers could not load it ({exc})") from exc
    model = model.float().eval()
    vcfg, tcfg = model.config.vision_config, model.config.text_config
    size = _size2(vcfg.image_size)
    pre = {"size": list(size), "resize_mode": "shortest", "interpolation": "bicubic",
           "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "fill_color": 0}
    proc = Path(model_id) / "preprocessor_config.json" if local else None
    if proc is not None and proc.is_file():
        p = json.loads(proc.read_text(encoding="utf-8"))
        crop = p.get("crop_size", size)
        crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else _size2(crop)
        resample = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(p.get("resample", 3), "bicubic")
        pre.update(size=list(crop), interpolation=resample, mean=list(p.get("image_mean", OPENAI_MEAN)),
                   std=list(p.get("image_std", OPENAI_STD)))
    return LoadedModel(model, model_id, "huggingface", "hf-clip-" + vcfg.model_type.replace("clip_", ""),
                       int(model.config.projection_dim), size, int(tcfg.max_position_embeddings),
                       float(model.logit_scale.exp().item()), pre)


# ---------------------------------------------------------------------------------------------------------
def load_model(model: str | None = None, pretrained: str | None = None, config: str | None = None,
               seed: int = 0, tokenizer: str | None = None) -> LoadedModel:
    """Resolve a ``model`` / ``pretrained`` / ``config`` (/ ``tokenizer``) combination to a loaded model.

    ``tokenizer``: a local Hugging Face tokenizer folder for models whose text tower is not CLIP's (SigLIP)
    when neither the model's folder nor the local cache holds it. The arguments are recorded in
    ``manifest.model.load`` (paths made absolute) so later stages that need the torch model (synthetic
    calibration) can load it again with ``load_model(**load)``.
    """
    loaded = _load_model(model, pretrained, config, seed, tokenizer)
    args = (("model", model or DEFAULT_MODEL), ("pretrained", pretrained), ("config", config), ("tokenizer", tokenizer))
    absolute = {k: str(Path(v).resolve()) if v and Path(v).exists() else v for k, v in args}
    if not tokenizer:
        absolute.pop("tokenizer")
    loaded.details["load"] = {**absolute, "seed": seed}
    return loaded


def load_source_model(bundle: Bundle) -> LoadedModel:
    """The torch model ``bundle`` was exported from, reloaded from ``manifest.model.load``.

    BundleError when the manifest does not record how to load it; the errors of ``load_model`` otherwise.
    """
    load = bundle.model.get("load")
    if not isinstance(load, dict) or not load:
        raise BundleError(f"{bundle.path}: the manifest does not record how to load the source model "
                          f"(model.load); re-export the bundle with this edgeclip")
    return load_model(**load)


def _load_model(model: str | None, pretrained: str | None, config: str | None, seed: int,
                tokenizer: str | None = None) -> LoadedModel:
    spec = model or DEFAULT_MODEL
    path = Path(spec)
    if config and not path.is_file():
        raise OptionError("`config` goes with a checkpoint file: model='weights.safetensors' config='model.json'")
    if spec in TINY_MODELS + PROXY_MODELS:
        if pretrained:
            raise OptionError(f"`pretrained` does not apply to the built-in model {spec!r}; drop it")
        return load_builtin(spec, seed, tokenizer)
    if path.is_dir():
        if pretrained:
            raise OptionError(f"`pretrained` does not apply to a model folder ({spec}); drop it")
        if (path / "open_clip_config.json").is_file():
            return load_open_clip_dir(path, tokenizer)
        if (path / "config.json").is_file():
            return _no_tokenizer(load_hf(str(path)), tokenizer)
        raise ModelLoadError(f"{path}: neither an open_clip folder (open_clip_config.json) nor a Hugging Face "
                             f"CLIP folder (config.json)")
    if path.is_file():
        if config:
            return load_checkpoint_with_config(path, Path(config), tokenizer)
        raise OptionError(f"{spec} is a checkpoint file: say which architecture it is, with "
                          f"model='ARCH' pretrained='{spec}' (e.g. ViT-B-32) or model='{spec}' config='model.json'")
    open_clip = _open_clip()
    if spec.replace("/", "-") in open_clip.list_models():
        if not pretrained:
            raise OptionError(f"{spec}: name the weights with `pretrained`: a tag (one of "
                              f"{', '.join(open_clip.list_pretrained_tags_by_model(spec)) or 'none known'}), "
                              f"a weights file, or pretrained='none' for random weights")
        if pretrained == "none":
            torch.manual_seed(seed)  # reproducible: quantize and bench reload the same weights from manifest.model.load
            loaded = _open_clip_create(open_clip, spec, None, f"{spec} (random weights)", "open_clip-random",
                                       tokenizer)
            loaded.details["random_weights_seed"] = seed
            return loaded
        if Path(pretrained).is_file():
            return _open_clip_create(open_clip, spec, pretrained, f"{spec}:{pretrained}", "open_clip-checkpoint",
                                     tokenizer)
        if open_clip.get_pretrained_cfg(spec, pretrained) == {}:
            raise OptionError(f"{spec}: unknown pretrained tag {pretrained!r}; known tags: "
                              f"{', '.join(open_clip.list_pretrained_tags_by_model(spec))}")
        if not _hub_reachable():
            import huggingface_hub.constants as hub_constants

            hub_constants.HF_HUB_OFFLINE = True  # use the local cache only, fail at once
            os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            return _open_clip_create(open_clip, spec, pretrained, f"{spec}:{pretrained}", "open_clip", tokenizer)
        except ModelLoadError as exc:
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                raise ModelLoadError(f"{spec} with pretrained='{pretrained}': " +
                                     _offline_hint("these pretrained weights")) from exc
            raise
    if "/" in spec or spec.startswith("hf-hub:"):
        return _no_tokenizer(load_hf(spec.removeprefix("hf-hub:")), tokenizer)
    raise ModelLoadError(f"{spec}: not a built-in model ({', '.join(PROXY_MODELS + TINY_MODELS)}), not a file "
                         f"or folder, not an open_clip architecture (see `python -c 'import open_clip; "
                         f"print(open_clip.list_models())'`) and not a Hugging Face id (org/name)")


def _no_tokenizer(loaded: LoadedModel, tokenizer: str | None) -> LoadedModel:
    """A Hugging Face CLIP model tokenizes with CLIP's BPE: a ``tokenizer`` given for it is a mistake."""
    if tokenizer:
        raise OptionError(f"{loaded.model_id} is a Hugging Face CLIP model, tokenized with CLIP's BPE: drop `tokenizer`")
    loaded.family = "vit"
    return loaded

"""The model families edgeclip exports, as the export side sees them: which family a loaded open_clip model
belongs to, the tiny random-weight configs of each (for tests), and what each needs before export.

The families themselves are rows of ``edgeclip.tables.FAMILIES`` (names, tokenizer, scoring, the INT8
recipes and calibrations that apply). Here:

* :func:`register_tiny_models` registers, in timm, the tiny image towers the ``edgeclip-tiny-*`` configs
  (``edgeclip/export/configs/``) name: a ConvNeXt, a FastViT MCi (MobileCLIP), a SigLIP ViT with its
  attention-pool (MAP) head and an EVA02 ViT, each a few ten thousand parameters at 32-64 px, so the export
  matrix runs in seconds;
* :func:`family_of` tells the family from an open_clip model config (and the built tower);
* :func:`reparameterize` turns a MobileOne/FastViT model into its inference form (timm's
  ``reparameterize_model``: each multi-branch block becomes one convolution) and folds every BatchNorm
  left into the convolution before it or the linear layer after it, checking that outputs are unchanged;
* :func:`pretrained_preprocess` gives a checkpoint file the preprocessing of open_clip's own tags for its
  architecture (SigLIP's mean 0.5 and squash resize, MobileCLIP's unnormalised bilinear input).
"""
from __future__ import annotations

import copy
import logging
from functools import partial
from typing import Any

import torch
from torch import nn

from ..errors import ExportError
from ..tables import FAMILIES

log = logging.getLogger("edgeclip.export")

#: tiny random-weight model (an ``edgeclip/export/configs/`` name) of each family that has one
TINY_BY_FAMILY = {family.tiny: family.name for family in FAMILIES.values() if family.tiny}
#: cosine between the reparameterized and the training-form model that the export requires
REPARAM_MIN_COSINE = 0.9999
REPARAM_CHECK_INPUTS = 64

_REGISTERED = False


def register_tiny_models() -> None:
    """Register the tiny timm image towers of the ``edgeclip-tiny-*`` configs (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from timm.models import register_model
    from timm.models.convnext import _create_convnext
    from timm.models.eva import _create_eva
    from timm.models.fastvit import RepConditionalPosEnc, _create_fastvit
    from timm.models.vision_transformer import _create_vision_transformer

    def edgeclip_tiny_convnext(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        """ConvNeXt as open_clip's convnext_* configs use it (channels-last LayerNorm, Linear MLP)."""
        args = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), conv_mlp=False)
        return _create_convnext("edgeclip_tiny_convnext", pretrained=False, **dict(args, **kwargs))

    def edgeclip_tiny_fastvit(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        """FastViT MCi as MobileCLIP/MobileCLIP2 use it: RepMixer stages, an attention stage, MobileOne blocks."""
        args = dict(layers=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64), mlp_ratios=(3, 3, 3, 3),
                    se_downsamples=(False, False, True, True),
                    pos_embs=(None, None, None, partial(RepConditionalPosEnc, spatial_shape=(7, 7))),
                    token_mixers=("repmixer", "repmixer", "repmixer", "attention"), lkc_use_act=True)
        return _create_fastvit("edgeclip_tiny_fastvit", pretrained=False, **dict(args, **kwargs))

    def edgeclip_tiny_siglip(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        """SigLIP's ViT: no class token, the attention-pool (MAP) head."""
        args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, class_token=False,
                    global_pool="map")
        return _create_vision_transformer("edgeclip_tiny_siglip", pretrained=False, **dict(args, **kwargs))

    def edgeclip_tiny_eva02(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        """EVA02-CLIP's ViT: rotary position embeddings, SwiGLU MLP, sub-LayerNorms."""
        args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, qkv_fused=False,
                    mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True,
                    use_rot_pos_emb=True, ref_feat_shape=(4, 4), global_pool="token")
        return _create_eva("edgeclip_tiny_eva02", pretrained=False, **dict(args, **kwargs))

    for fn in (edgeclip_tiny_convnext, edgeclip_tiny_fastvit, edgeclip_tiny_siglip, edgeclip_tiny_eva02):
        fn.__module__ = __name__
        register_model(fn)
    _REGISTERED = True


# ---------------------------------------------------------------------------------------------------------
# which family
# ---------------------------------------------------------------------------------------------------------
def family_of(config: dict[str, Any] | None, visual: Any = None) -> str:
    """The family (a row of ``edgeclip.tables.FAMILIES``) of an open_clip model config, "" when none fits.

    Read from the config: the timm tower's name (``fastvit_mci*``/``vit_*_mci_*``: MobileCLIP; ``*siglip*``:
    SigLIP, SigLIP2 when its text side is Gemma's; ``convnext*``; ``eva02*``), else the tower open_clip
    builds (``layers`` as a list: the ModifiedResNet; otherwise its ViT).
    """
    config = config or {}
    vision, text = config.get("vision_cfg") or {}, config.get("text_cfg") or {}
    timm_name = str(vision.get("timm_model_name") or "")
    for family in FAMILIES.values():
        if timm_name and any(timm_name.startswith(p) for p in family.timm_prefixes):
            if family.name == "siglip" and _gemma_text(text):
                return "siglip2"
            return family.name
    if timm_name:
        return ""
    if isinstance(vision.get("layers"), (list, tuple)) or type(visual).__name__ == "ModifiedResNet":
        return "modified-resnet"
    if config and not text.get("hf_model_name"):
        return "vit"
    return ""


def _gemma_text(text: dict[str, Any]) -> bool:
    """SigLIP2's text side: Gemma's 256k vocabulary and tanh-approximated GELU."""
    return int(text.get("vocab_size") or 0) >= 256_000 or (text.get("act_kwargs") or {}).get("approximate") == "tanh"


# ---------------------------------------------------------------------------------------------------------
# reparameterization (MobileOne / FastViT) and BatchNorm folding
# ---------------------------------------------------------------------------------------------------------
def needs_reparameterization(model: nn.Module) -> bool:
    """Whether a module of ``model`` has an inference form (``reparameterize``, ``switch_to_deploy`` or
    ``fuse``, as timm's MobileOne/FastViT/RepVGG blocks do)."""
    return any(any(hasattr(m, k) for k in ("reparameterize", "switch_to_deploy", "fuse"))
               for m in model.modules() if m is not model)


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    return scale, shift


def fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one convolution."""
    scale, shift = _bn_scale_shift(bn)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    with torch.no_grad():
        out.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        out.bias.copy_(bias * scale + shift)
    return out


def fold_into_linear(bn: nn.BatchNorm2d, linear: nn.Linear) -> nn.Linear:
    """``linear(bn(x))`` (BatchNorm over the linear layer's input features) as one linear layer."""
    scale, shift = _bn_scale_shift(bn)
    out = nn.Linear(linear.in_features, linear.out_features, bias=True)
    with torch.no_grad():
        out.weight.copy_(linear.weight * scale[None, :])
        bias = linear.weight @ shift
        out.bias.copy_(bias + linear.bias if linear.bias is not None else bias)
    return out


def fold_batchnorms(model: nn.Module) -> int:
    """Fold the BatchNorms of a reparameterized model away; returns how many.

    Two places hold them after timm's reparameterization: a ``conv`` + ``bn`` pair (timm's ConvNormAct, in
    FastViT's ConvMlp) and the BatchNorm a FastViT attention block applies before its attention's ``qkv``
    linear layer (``norm`` + ``token_mixer.qkv``).
    """
    folded = 0
    for m in model.modules():
        conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            m.conv, m.bn = fold_into_conv(conv, bn), nn.Identity()
            folded += 1
        norm, mixer = getattr(m, "norm", None), getattr(m, "token_mixer", None)
        if isinstance(norm, nn.BatchNorm2d) and isinstance(getattr(mixer, "qkv", None), nn.Linear):
            mixer.qkv, m.norm = fold_into_linear(norm, mixer.qkv), nn.Identity()
            folded += 1
    return folded


def batchnorm_count(model: nn.Module) -> int:
    """BatchNorm2d layers of ``model``."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def reparameterize(model: nn.Module, image_size: tuple[int, int], family: str = "",
                   seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The inference form of ``model`` (a deep copy; ``model`` keeps its training form, whose BatchNorm
    statistics bn-stats calibration matches) and a record of the check: the image embeddings of both on
    ``REPARAM_CHECK_INPUTS`` random inputs, minimum cosine at least ``REPARAM_MIN_COSINE``.

    ExportError naming the family when the outputs differ or a BatchNorm is left that cannot be folded.
    """
    from timm.utils.model import reparameterize_model

    before = batchnorm_count(model.visual) if hasattr(model, "visual") else batchnorm_count(model)
    out = copy.deepcopy(model).eval()
    reparameterize_model(out, inplace=True)
    folded = fold_batchnorms(out)
    left = batchnorm_count(out)
    what = f"the {family or type(model).__name__} model"
    if left:
        raise ExportError(f"{what}: {left} BatchNorm layer(s) are left after reparameterization that edgeclip "
                          f"cannot fold (not after a convolution or before a linear layer); report the model")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(REPARAM_CHECK_INPUTS, 3, *image_size, generator=g)
    with torch.no_grad():
        ref = torch.cat([model.encode_image(x[i:i + 16]) for i in range(0, len(x), 16)]).double()
        got = torch.cat([out.encode_image(x[i:i + 16]) for i in range(0, len(x), 16)]).double()
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=-1)
    record = {"min_cosine": float(cos.min()), "inputs": REPARAM_CHECK_INPUTS, "batchnorm_before": before,
              "batchnorm_folded": folded, "max_abs_diff": float((ref - got).abs().max())}
    if record["min_cosine"] < REPARAM_MIN_COSINE:
        raise ExportError(f"{what}: its reparameterized (inference) form disagrees with the training form: "
                          f"min cosine {record['min_cosine']:.6f} over {REPARAM_CHECK_INPUTS} inputs (limit "
                          f"{REPARAM_MIN_COSINE}); report the model")
    log.info("reparameterized %s: %d BatchNorm layers folded, min cosine %.7f", what, before, record["min_cosine"])
    return out, record


# ---------------------------------------------------------------------------------------------------------
# preprocessing of checkpoint files
# ---------------------------------------------------------------------------------------------------------
def pretrained_preprocess(open_clip: Any, name: str) -> tuple[dict[str, Any], str] | None:
    """The preprocessing open_clip's pretrained tags give architecture ``name`` (mean, std, interpolation,
    resize mode), and which tag, when its tags agree on it; None when it has no tags or they disagree."""
    keys = ("mean", "std", "interpolation", "resize_mode")
    found: dict[tuple, str] = {}
    for tag in open_clip.list_pretrained_tags_by_model(name):
        cfg = open_clip.get_pretrained_cfg(name, tag) or {}
        value = tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in (cfg.get(k) for k in keys))
        if all(v is not None for v in value):
            found.setdefault(value, tag)
    if len(found) != 1:
        return None
    value, tag = next(iter(found.items()))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in zip(keys, value)}, f"{name}/{tag}"

"""Losses and augmentations that make synthetic calibration images look like what a CLIP tower expects.

All of it is torch code run on the image tower of the bundle's own checkpoint:

* ``BatchNormStats`` (ZeroQ, Genie): forward hooks on every ``BatchNorm2d`` compare the batch mean/std of
  its input with the layer's running statistics; the sum of the distances is the loss.
* ``PatchDiversity`` (PSAQ-ViT): forward hooks on every transformer block take the patch tokens, compute
  their pairwise cosine similarities and estimate the entropy of that distribution with a differentiable
  (Gaussian kernel) histogram; real images give diverse similarities, noise gives a narrow peak. The loss
  is the negative mean entropy (normalised to [0, 1] by the log of the bin count).
* ``total_variation`` and ``l2_prior``: natural-image priors (smoothness, no extreme pixel values).
* ``random_view``: random jitter (roll), horizontal flip and scale applied between optimisation steps so
  the images stay recognisable under small shifts instead of over-fitting pixel patterns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def batchnorm_layers(module: nn.Module) -> list[nn.BatchNorm2d]:
    """Every BatchNorm2d with running statistics inside ``module``, in forward order."""
    return [m for m in module.modules()
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None]


class BatchNormStats:
    """ZeroQ's BatchNorm statistics loss: mean over layers of ``||mu - mu_run|| + ||sigma - sigma_run||``.

    Use as a context manager around forward passes; ``loss()`` returns the loss of the last forward.
    """

    def __init__(self, module: nn.Module) -> None:
        self.layers = batchnorm_layers(module)
        self._terms: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "BatchNormStats":
        for layer in self.layers:
            self._handles.append(layer.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, layer: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0].float()  # a no-op in fp32; under bf16/fp16 autocast the statistics stay fp32
        mean = x.mean(dim=(0, 2, 3))
        std = torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False) + layer.eps)
        run_std = torch.sqrt(layer.running_var + layer.eps)
        self._terms.append(torch.linalg.vector_norm(mean - layer.running_mean)
                           + torch.linalg.vector_norm(std - run_std))

    def reset(self) -> None:
        """Forget the terms of earlier forward passes."""
        self._terms.clear()

    def loss(self) -> torch.Tensor:
        """Mean over layers of the statistics distance, for the forward passes since ``reset``."""
        if not self._terms:
            raise RuntimeError("no BatchNorm layer ran: is the hook attached to the right module?")
        return torch.stack(self._terms).mean()


@dataclass
class _Block:
    module: nn.Module
    batch_first: bool
    patches: int


def vit_blocks(visual: nn.Module) -> list[_Block]:
    """The transformer blocks of a ViT image tower (open_clip's, a timm ViT in open_clip, or Hugging Face's),
    with token layout.

    Returns an empty list for towers without transformer blocks (ModifiedResNet).
    """
    blocks: list[_Block] = []
    transformer = getattr(visual, "transformer", None)
    grid = getattr(visual, "grid_size", None)
    if transformer is not None and hasattr(transformer, "resblocks") and grid is not None:  # open_clip
        patches = int(grid[0]) * int(grid[1])
        batch_first = bool(getattr(transformer, "batch_first", True))
        blocks = [_Block(b, batch_first, patches) for b in transformer.resblocks]
    trunk = getattr(visual, "trunk", None)
    embed = getattr(trunk, "patch_embed", None)
    if not blocks and hasattr(trunk, "blocks") and getattr(embed, "num_patches", None):  # timm ViT (SigLIP, EVA02)
        blocks = [_Block(b, True, int(embed.num_patches)) for b in trunk.blocks]
    vision_model = getattr(visual, "vision_model", None)
    if not blocks and vision_model is not None:  # Hugging Face CLIPModel / CLIPVisionModel
        emb = vision_model.embeddings
        patches = int(emb.num_patches)
        blocks = [_Block(b, True, patches) for b in vision_model.encoder.layers]
    return blocks


class PatchDiversity:
    """PSAQ-ViT's patch-similarity entropy over the hooked transformer blocks (higher = more diverse).

    ``loss()`` is ``-mean(entropy) / log(bins)`` so it lies in [-1, 0]; minimise it.
    """

    def __init__(self, blocks: list[_Block], bins: int = 32, max_pairs: int = 4096) -> None:
        self.blocks = blocks
        self.bins = bins
        self.max_pairs = max_pairs
        self.centers = torch.linspace(-1.0, 1.0, bins)
        self.sigma = 2.0 / bins
        self._entropies: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "PatchDiversity":
        for block in self.blocks:
            self._handles.append(block.module.register_forward_hook(self._make_hook(block)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _make_hook(self, block: _Block) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            x = output[0] if isinstance(output, (tuple, list)) else output
            if not block.batch_first:
                x = x.transpose(0, 1)
            self._entropies.append(self.entropy(x[:, -block.patches:, :]))
        return hook

    def entropy(self, tokens: torch.Tensor) -> torch.Tensor:
        """Entropy (nats) of the pairwise cosine similarities of ``tokens`` [B, P, D], averaged over B."""
        t = F.normalize(tokens.float(), dim=-1)
        sim = t @ t.transpose(1, 2)  # [B, P, P]
        p = sim.shape[1]
        iu = torch.triu_indices(p, p, offset=1, device=sim.device)
        values = sim[:, iu[0], iu[1]]  # [B, pairs]
        if values.shape[1] > self.max_pairs:  # a fixed, evenly spaced subset keeps big ViTs cheap
            idx = torch.linspace(0, values.shape[1] - 1, self.max_pairs, device=sim.device).long()
            values = values[:, idx]
        centers = self.centers.to(values.device, values.dtype)
        weights = torch.exp(-0.5 * ((values[..., None] - centers) / self.sigma) ** 2)  # [B, pairs, bins]
        hist = weights.sum(dim=1)
        prob = hist / hist.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return -(prob * torch.log(prob.clamp_min(1e-12))).sum(dim=-1).mean()

    def reset(self) -> None:
        """Forget the entropies of earlier forward passes."""
        self._entropies.clear()

    def loss(self) -> torch.Tensor:
        """``-mean entropy / log(bins)`` over the blocks of the forward passes since ``reset``."""
        if not self._entropies:
            raise RuntimeError("no transformer block ran: is the hook attached to the right module?")
        return -torch.stack(self._entropies).mean() / math.log(self.bins)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels (smoothness prior), per image averaged."""
    dh = x[:, :, 1:, :] - x[:, :, :-1, :]
    dw = x[:, :, :, 1:] - x[:, :, :, :-1]
    return dh.pow(2).mean() + dw.pow(2).mean()


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """Mean squared value (in normalised input space): keeps pixels away from the extremes."""
    return x.pow(2).mean()


@dataclass
class ViewSampler:
    """Random jitter / flip / scale between optimisation steps, drawn from its own seeded generator."""

    seed: int
    max_shift: float = 0.125  # fraction of the image size
    scale: tuple[float, float] = (0.9, 1.1)
    flip: bool = True
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """One random view of the batch ``x`` [B, C, H, W] (same view for the whole batch), same shape."""
        _, _, h, w = x.shape
        s = self._uniform(*self.scale)
        if abs(s - 1.0) > 1e-3:
            nh, nw = max(2, round(h * s)), max(2, round(w * s))
            y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
            if s > 1.0:  # crop the centre back to (h, w)
                top, left = (nh - h) // 2, (nw - w) // 2
                x = y[:, :, top:top + h, left:left + w]
            else:  # pad by reflection back to (h, w)
                ph, pw = h - nh, w - nw
                x = F.pad(y, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
        shift = max(0, int(round(self.max_shift * min(h, w))))
        if shift:
            dy = int(torch.randint(-shift, shift + 1, (), generator=self.generator))
            dx = int(torch.randint(-shift, shift + 1, (), generator=self.generator))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        if self.flip and float(torch.rand((), generator=self.generator)) < 0.5:
            x = x.flip(3)
        return x

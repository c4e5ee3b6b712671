"""Running an image tower at a reduced input resolution, for coarse-to-fine synthesis.

A forward/backward pass of a ViT costs about its token count, of a ResNet its pixel count: at 96 px
instead of 224 px ViT-B/32 sees 10 tokens instead of 50 and RN50 a fifth of the pixels, so most
optimisation steps of synthetic calibration images can run there and only the last ones at full size.

Both open_clip towers fix their input size only through a positional embedding (the ViT's
``positional_embedding``, the ResNet's ``attnpool.positional_embedding``); ``at_resolution`` swaps in a
bicubic resize of it for the duration of a ``with`` block and restores the original afterwards. Towers of
any other kind (Hugging Face CLIP, plain classifiers) report no reduced sizes and always run at full size.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

#: Step fractions of the coarse-to-fine schedule: most steps at the coarse size, a few at the middle one,
#: the last ones at full size (measured on the proxies: docs/quantization.md, "Faster synthesis").
#: Each entry: (share of the full token grid per side, share of the steps). ViT-B/32 and RN50 at 224 px
#: (7x7 grid): 160 steps at 96 px, 30 at 128 px, 10 at 224 px.
COARSE_TO_FINE = ((0.4, 0.8), (0.55, 0.15), (1.0, 0.05))
#: The coarser schedule (``coarser`` mode; ``auto`` falls back to it when coarse-to-fine does not fit the
#: time left): a first phase at the smallest grid the tower supports (scale 0: ``MIN_GRID`` tokens per side)
#: before the coarse-to-fine phases, the last 5% of the steps at full size as there. Shares chosen from
#: measured RN50 step times (docs/quantization.md, "Faster synthesis"). ViT-B/32 and RN50 at 224 px: 160 steps
#: at 64 px (2x2 grid), 20 at 96 px, 10 at 128 px, 10 at 224 px.
COARSER = ((0.0, 0.8), (0.4, 0.1), (0.55, 0.05), (1.0, 0.05))
#: Smallest token grid (per side) a reduced size may give.
MIN_GRID = 2


def _kind(visual: Any) -> str | None:
    if getattr(visual, "positional_embedding", None) is not None and getattr(visual, "conv1", None) is not None \
            and getattr(visual, "grid_size", None) is not None:
        return "vit"
    pool = getattr(visual, "attnpool", None)
    if pool is not None and getattr(pool, "positional_embedding", None) is not None:
        return "resnet"
    return None


def stride(visual: Any) -> int | None:
    """Pixels per token of the tower's last grid (ViT patch size, 32 for a ModifiedResNet); None when the
    tower cannot run at another size."""
    kind = _kind(visual)
    if kind == "vit":
        k = visual.conv1.kernel_size
        return int(k[0] if isinstance(k, (tuple, list)) else k)
    if kind == "resnet":
        return 32
    return None


def ladder(visual: Any, size: tuple[int, int],
           fractions: tuple[tuple[float, float], ...] = COARSE_TO_FINE) -> list[tuple[tuple[int, int], float]]:
    """(size, share of the steps) per phase of the coarse-to-fine schedule for this tower, coarse first.

    Sizes are multiples of the tower's stride with at least ``MIN_GRID`` tokens per side; phases that round
    to the same size are merged. Towers that cannot run at another size get ``[(size, 1.0)]``.
    """
    s = stride(visual)
    full = (int(size[0]), int(size[1]))
    if s is None or full[0] % s or full[1] % s:
        return [(full, 1.0)]
    phases: list[tuple[tuple[int, int], float]] = []
    for scale, share in fractions:
        grid = tuple(min(g, max(MIN_GRID, int(round(g * scale)))) for g in (full[0] // s, full[1] // s))
        px = (grid[0] * s, grid[1] * s) if scale < 1.0 else full
        if phases and phases[-1][0] == px:
            phases[-1] = (px, phases[-1][1] + share)
        else:
            phases.append((px, share))
    return phases


def _resized_grid(pe: Any, old: tuple[int, int], new: tuple[int, int]) -> Any:
    """[1 + old_h*old_w, D] positional embedding resized (bicubic) to [1 + new_h*new_w, D]."""
    import torch
    import torch.nn.functional as F

    cls, grid = pe[:1], pe[1:].reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1)])


@contextlib.contextmanager
def at_resolution(visual: Any, full: tuple[int, int], size: tuple[int, int],
                  blocks: list[Any] | None = None) -> Iterator[None]:
    """Within the block the tower takes ``size`` inputs instead of ``full`` ones (nothing to do at full size).

    ``blocks``: the ``priors.vit_blocks`` entries a ``PatchDiversity`` hook uses; their patch count follows.
    """
    import torch

    if tuple(size) == tuple(full):
        yield
        return
    kind, s = _kind(visual), stride(visual)
    if kind is None or s is None:
        raise ValueError(f"this tower cannot run at {size[0]}x{size[1]}")
    old, new = (full[0] // s, full[1] // s), (size[0] // s, size[1] // s)
    owner = visual if kind == "vit" else visual.attnpool
    saved = owner.positional_embedding
    saved_patches = [b.patches for b in blocks or ()]
    with torch.no_grad():
        resized = _resized_grid(saved.detach(), old, new)
    owner.positional_embedding = torch.nn.Parameter(resized, requires_grad=False)
    for b in blocks or ():
        b.patches = new[0] * new[1]
    try:
        yield
    finally:
        owner.positional_embedding = saved
        for b, p in zip(blocks or (), saved_patches):
            b.patches = p


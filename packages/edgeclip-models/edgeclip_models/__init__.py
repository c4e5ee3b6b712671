"""edgeclip's built-in proxy CLIP checkpoints: one folder per model (open_clip layout) beside this file."""
from __future__ import annotations

from pathlib import Path

#: The folder holding ``proxy-vit/`` and ``proxy-rn/``.
MODELS_DIR = Path(__file__).resolve().parent


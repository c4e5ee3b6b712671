"""The built-in models' names and the labels they were trained on (no torch needed to read them)."""
from __future__ import annotations

#: Small CLIP-architecture models trained in this project (see their model cards).
PROXY_MODELS = ("proxy-vit", "proxy-rn")
#: ``edgeclip export`` without a model.
DEFAULT_MODEL = "proxy-vit"
#: Labels used when none are given with a built-in proxy model: the CIFAR-10 classes it was trained on.
PROXY_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

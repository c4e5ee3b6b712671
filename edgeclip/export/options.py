"""``ExportOptions``: what ``edgeclip export`` is asked for, each default once (imports without torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..options import Options, option
from .defaults import DEFAULT_MODEL, PROXY_MODELS

#: the lowest ONNX opset exported (LayerNormalization as one op: TensorRT's normalization layer in FP16)
MIN_OPSET = 17


@dataclass(frozen=True)
class ExportOptions(Options):
    """Which checkpoint ``edgeclip export`` reads and how it checks the ONNX files against it."""

    WHAT: ClassVar[str] = "export option"

    model: str | None = option(None, f"built-in name ({', '.join(PROXY_MODELS)} [default {DEFAULT_MODEL}], or an "
                                     f"edgeclip-tiny-* test model: `edgeclip models`), open_clip architecture "
                                     f"(ViT-B-32, MobileCLIP2-S0, ViT-B-16-SigLIP), Hugging Face id or folder, or "
                                     f"checkpoint file")
    pretrained: str | None = option(None, "open_clip pretrained tag (openai, laion2b_s34b_b79k), weights file, or "
                                          "'none' for random")
    config: str | None = option(None, "open_clip model config JSON for a checkpoint file")
    overwrite: bool = option(False, "replace an existing bundle (atomically)")
    opset: int = option(MIN_OPSET, f"ONNX opset (>= {MIN_OPSET})")
    parity_atol: float = option(1e-4, "max abs (or relative, for large models) difference allowed between ONNX "
                                      "and torch")
    seed: int = option(0, "seed for random-weight models")
    tokenizer: str | None = option(None, "local Hugging Face tokenizer folder (tokenizer.json + "
                                         "tokenizer_config.json) for models whose text tower is not CLIP's (SigLIP, "
                                         "SigLIP2), when the model's folder and the local cache do not hold it",
                                   metavar="DIR")

    def problems(self) -> list[str]:
        """Values out of range, each naming the option."""
        out = []
        if self.opset < MIN_OPSET:
            out.append(f"`opset` must be >= {MIN_OPSET} (LayerNormalization as one op), got {self.opset}")
        if not self.parity_atol > 0:
            out.append(f"`parity_atol` must be > 0, got {self.parity_atol}")
        return out

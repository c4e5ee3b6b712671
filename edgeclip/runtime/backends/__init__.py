"""Inference backends behind one small interface: ``run(inputs) -> outputs`` on numpy arrays.

One module per backend (a row of ``edgeclip.tables.BACKENDS``): ``onnxruntime``, ``openvino``,
``tensorrt``. Each defines

- ``available(variant=None, **probe) -> (bool, why)``: whether it can run on this machine (``variant``: an
  ONNX Runtime execution provider); ``probe`` lets tests state what the machine has;
- ``open_encoder(path, options, precision, variant=None, bundle=None) -> Backend``: one model file opened
  with the load options (``edgeclip.options.LoadOptions``) at ``precision``; ``bundle``, when the file is
  one of a bundle's, gives its manifest entry (hash, how it was built) and preprocessing.

None of them is a dependency of the base install: each comes with its pip extra (the ``extra`` column),
and its module imports it only when used.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from ...bundle import Bundle
from ...options import LoadOptions
from ...tables import BACKENDS, pick

log = logging.getLogger("edgeclip.runtime")


class Backend(Protocol):
    """What the classifier needs from an inference engine."""

    name: str
    input_name: str
    output_name: str

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output."""
        ...


def backend_for_file(path: Path, options: LoadOptions) -> str:
    """The first backend the options allow (``LoadOptions.backends``) that runs a file of this kind: one that
    builds its own files with this suffix, else one that reads the bundle's ONNX files."""
    allowed = [BACKENDS[name] for name in options.backends()]
    for b in allowed:
        if b.files is not None and path.suffix == b.load().FILE_SUFFIX:
            return b.name
    return next((b.name for b in allowed if b.files is None), allowed[0].name)


def create_backend(path: str | Path, options: LoadOptions | None = None, precision: str = "fp32",
                   bundle: Bundle | None = None) -> Backend:
    """Open one model file at ``precision`` with the backend ``options.backend`` names (``auto``: see
    :func:`backend_for_file`); ``bundle``: the bundle it belongs to, if any."""
    path = Path(path)
    options = options or LoadOptions()
    name = options.backend if options.backend != "auto" else backend_for_file(path, options)
    return pick(BACKENDS, name, "backend").load().open_encoder(path, options, precision, bundle=bundle)

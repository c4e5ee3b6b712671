"""The bundle: one directory of plain files described by ``manifest.json``.

This package is the contract between stages. It only needs the standard library and numpy, so the
runtime, third-party apps and the export stage all read bundles the same way.

Layout::

    manifest.json                      schema_version, model, preprocess, tokenizer, files (sha256, role)...
    image_encoder.onnx                 fp32 image tower, input ``pixel_values`` -> output ``image_embeds``
    image_encoder.int8.<target>.onnx   INT8 image tower per target (``cpu`` or ``tensorrt``)
    text_encoder.onnx                  fp32 text tower, input ``input_ids`` -> output ``text_embeds``
    tokenizer/                         CLIP BPE vocabulary for the torch-free tokenizer
    labels.json  labels.npy            label names and prompts; L2-normalised [N, D] float32 matrix
    engines/<key>.engine               TensorRT engines (see ``edgeclip.devices``)

Modules: ``manifest`` (the manifest as typed dataclasses, parsed and validated), ``store`` (load, verify,
validate contents), ``write`` (drafts, atomic swap), ``lock`` (one writer at a time, recovery from killed
writers), ``onnxinfo`` (ONNX inputs/outputs and external data without ``onnx``), ``jsonfile`` (strict JSON).

Writes are atomic and serialised: a writer holds the bundle's lock (``.NAME.lock`` beside it), builds the
new version in a temporary sibling and swaps it in so the path always holds a complete bundle; an
interrupted write is finished or rolled back by the next load or write. Loads verify every file's size
and sha256 and validate every content the runtime uses, naming the file and field that are wrong.
"""
from __future__ import annotations

from .jsonfile import dumps_strict, loads_strict, read_json
from .lock import bundle_lock, lock_path, lock_timeout, recover
from .manifest import (LABELS_JSON, LABELS_NPY, MANIFEST, ROLES, SCHEMA_VERSION, FileEntry, LabelsInfo, Manifest,
                       ModelInfo, PreprocessInfo, QuantizationInfo, TokenizerInfo, validate_manifest)
from .onnxinfo import OnnxInfo, TensorSpec, read_onnx_info
from .store import (Bundle, check_confined, check_encoder_io, check_external_data, file_problem, load_bundle,
                    now_iso, read_manifest, sha256_file, validate_contents, verify_files)
from .write import BundleDraft, create_bundle, update_bundle

__all__ = [
    "LABELS_JSON", "LABELS_NPY", "MANIFEST", "ROLES", "SCHEMA_VERSION", "Bundle", "BundleDraft",
    "FileEntry", "LabelsInfo", "Manifest", "ModelInfo", "OnnxInfo", "PreprocessInfo", "QuantizationInfo",
    "TensorSpec", "TokenizerInfo", "bundle_lock", "check_confined", "check_encoder_io", "check_external_data",
    "create_bundle", "dumps_strict", "file_problem", "load_bundle", "loads_strict", "lock_path", "lock_timeout",
    "now_iso", "read_json", "read_manifest", "read_onnx_info", "recover", "sha256_file", "update_bundle",
    "validate_contents", "validate_manifest", "verify_files",
]

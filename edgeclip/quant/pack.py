"""``edgeclip pack``: a bundle cut down to what one device runs, verified like any bundle.

A full bundle holds every file any device may want: the fp32 image encoder, an INT8 file per recipe, the
fp32 text encoder, reports. A device runs one image file and the labels, and needs the tokenizer and a text
encoder only to relabel. ``pack_bundle`` writes a new bundle with the image file(s) the profile's backends
run (chosen above this layer: ``edgeclip.devices.packing``), the labels, and for relabelling on the device
the tokenizer with the text encoder as INT8 (``text="int8"``, checked against the fp32 label embeddings),
fp32 or none. The manifest keeps every section of the source, records only the files kept, and says in
``pack`` what was left out and why; ``edgeclip inspect`` shows it.
"""
from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from ..bundle import LABELS_JSON, LABELS_NPY, Bundle, create_bundle, load_bundle, now_iso
from ..errors import OptionError, QuantizationError
from ..options import Options, option

log = logging.getLogger("edgeclip.export")

TEXT_CHOICES = ("int8", "fp32", "none")
#: file entry keys recomputed by ``BundleDraft.add_file`` (the others are copied from the source entry)
_RECOMPUTED = ("role", "sha256", "bytes")


@dataclass(frozen=True)
class PackOptions(Options):
    """What ``edgeclip pack`` was asked for."""

    WHAT: ClassVar[str] = "pack option"

    device: str = option("auto", "device profile to pack for (default auto: this machine; `edgeclip devices` lists "
                                 "them)", metavar="PROFILE", alias="for")
    text: str = option("int8", "text encoder for relabelling on the device: int8 (checked against fp32), fp32, or "
                               "none (no relabelling: no text encoder, no tokenizer)", choices=TEXT_CHOICES)
    image: str = option("auto", "image encoder precision: auto (the profile's), int8 or fp32",
                        choices=("auto", "int8", "fp32"))
    overwrite: bool = option(False, "replace an existing output bundle (atomically)")
    text_min_cosine: float = option(0.99, "the INT8 text encoder must give every label an embedding at least this "
                                          "close to fp32's")

    def problems(self) -> list[str]:
        """Values out of range, each naming the option."""
        out = []
        if not 0.0 < self.text_min_cosine <= 1.0:
            out.append(f"`text_min_cosine` must be in (0, 1], got {self.text_min_cosine}")
        return out


def _entries(bundle: Bundle) -> dict[str, dict[str, Any]]:
    return {n: e.to_dict() for n, e in bundle.info.files.items()}


def _with_data(entries: dict[str, dict[str, Any]], names: Sequence[str]) -> list[str]:
    """``names`` and the external-data files that belong to them."""
    out = list(names)
    out += [n for n, e in entries.items() if e["role"] == "external_data" and e.get("of") in names and n not in out]
    return out


def _copy(bundle: Bundle, draft: Any, name: str, entry: dict[str, Any]) -> None:
    shutil.copyfile(bundle.path / name, draft.new_file(name))
    draft.add_file(name, entry["role"], **{k: v for k, v in entry.items() if k not in _RECOMPUTED})


def pack_bundle(bundle: Bundle, out: str | Path, image_files: Sequence[str], choice: dict[str, Any],
                options: PackOptions, step: Callable[[str], None] | None = None) -> Bundle:
    """Write the packed bundle ``out`` from ``bundle`` with the image encoder files ``image_files`` (how they
    were chosen: ``choice``, recorded in ``manifest.pack``); returns it, loaded and verified."""
    say = step or (lambda m: log.info(m))
    options.check()
    entries = _entries(bundle)
    unknown = [n for n in image_files if entries.get(n, {}).get("role") != "image_encoder"]
    if unknown:
        raise OptionError(f"{bundle.path}: {', '.join(unknown)} is not an image encoder of the bundle")
    keep = _with_data(entries, image_files) + [LABELS_JSON, LABELS_NPY]
    relabel = options.text != "none"
    if relabel:
        keep += [n for n, e in entries.items() if e["role"] == "tokenizer"]
    if options.text == "fp32":
        keep += _with_data(entries, [bundle.encoder("text", "fp32").name])
    manifest = copy.deepcopy(bundle.manifest)
    with create_bundle(out, overwrite=options.overwrite) as draft:
        for key in ("schema_version", "created", "model", "preprocess", "labels", "parity", "versions", "export"):
            if key in manifest:
                draft.manifest[key] = manifest[key]
        if relabel and "tokenizer" in manifest:
            draft.manifest["tokenizer"] = manifest["tokenizer"]
        kept_targets = {entries[n].get("target") for n in image_files if entries[n].get("precision") == "int8"}
        quant = {t: q for t, q in (manifest.get("quantization") or {}).items() if t in kept_targets}
        if quant:
            draft.manifest["quantization"] = quant
        for name in keep:
            _copy(bundle, draft, name, entries[name])
        record: dict[str, Any] = {**choice, "text": options.text, "created": now_iso(),
                                  "source": {"path": str(bundle.path.resolve()), "model": bundle.info.model.id}}
        if options.text == "int8":
            say("quantizing the text encoder to INT8 and checking the label embeddings against fp32")
            record["text_int8"] = _int8_text(bundle, draft, options)
        left = {n: {k: e[k] for k in ("role", "bytes", "precision", "target") if k in e}
                for n, e in entries.items() if n not in keep}
        record["left_out"] = left
        record["bytes"] = sum(int(draft.manifest["files"][n]["bytes"]) for n in draft.manifest["files"])
        record["source"]["bytes"] = sum(int(e.get("bytes") or 0) for e in entries.values())
        draft.manifest["pack"] = record
    packed = load_bundle(out)  # verified: hashes, sizes, ONNX inputs and outputs, labels
    say(f"packed {len(packed.info.files)} files, {record['bytes'] / 1e6:.1f} MB (from {record['source']['bytes'] / 1e6:.1f} MB)")
    return packed


def _int8_text(bundle: Bundle, draft: Any, options: PackOptions) -> dict[str, Any]:
    """Write ``text_encoder.int8.onnx`` into the draft and measure it on the bundle's labels."""
    from .text import label_agreement, quantize_text_encoder
    from ..runtime.text import TextEncoder, bundle_templates

    name = "text_encoder.int8.onnx"
    src = bundle.encoder("text", "fp32")
    made = quantize_text_encoder(src, draft.new_file(name))
    draft.add_file(name, "text_encoder", precision="int8", target="cpu", format="onnx", recipe=made["recipe"])
    names, fp32 = bundle.labels()
    labels = bundle.manifest.get("labels") or {}
    doc_labels = _labels_of(bundle)
    _, templates = bundle_templates(bundle)
    kind = TextEncoder.from_bundle(bundle).tokenizer
    int8 = _embed(TextEncoder(kind, draft.path / name), doc_labels, templates)
    agreement = label_agreement(fp32, int8)
    record = {**made, "file": name, "templates": len(templates), "template_set": labels.get("template_set"),
              "labels": agreement}
    if agreement["min_cosine"] < options.text_min_cosine:
        raise QuantizationError(f"the INT8 text encoder embeds a label of {bundle.path} at cosine "
                                f"{agreement['min_cosine']:.4f} to fp32 (limit {options.text_min_cosine}); pack with "
                                f"text='fp32', or lower `text_min_cosine`")
    return record


def _labels_of(bundle: Bundle) -> list[Any]:
    """The labels of ``labels.json`` with their synonyms and descriptions (what export embedded)."""
    from ..runtime.labels import read_labels_file

    return read_labels_file(bundle.path / LABELS_JSON)


def _embed(encoder: Any, labels: Sequence[Any], templates: Sequence[str]) -> Any:
    from ..runtime.labels import embed_labels

    return embed_labels(labels, templates, encoder)


"""``manifest.json`` as typed dataclasses, defined once: parsed and validated on every load and write.

The JSON format is schema_version 1 (bundles written by every earlier edgeclip load). ``Manifest.parse``
checks every field it knows (types, ranges, paths, cross-references) and collects *all* problems before
raising one ``BundleError`` that names the file and each field. Keys it does not know are kept in
``extra`` and written back unchanged, so ``Manifest.parse(d).to_dict()`` loses nothing.
"""
from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import BundleError
from ..tables import SCORINGS, TOKENIZERS, precisions

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LABELS_JSON = "labels.json"
LABELS_NPY = "labels.npy"

#: Roles a file in ``manifest["files"]`` may have.
ROLES = ("image_encoder", "text_encoder", "external_data", "tokenizer", "labels", "label_embeddings", "engine",
         "report", "calibration")
#: Precisions of encoder files and engines.
PRECISIONS = precisions("file")
#: How an image is resized to the model input, and with which kernel.
RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")

#: Upper bounds that no real model reaches: a value above one is a corrupt manifest.
MAX_EMBED_DIM = 1 << 16
MAX_IMAGE_SIDE = 1 << 14
MAX_CONTEXT_LENGTH = 1 << 16
MAX_LOGIT_SCALE = 1000.0

_SHA256 = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------------------------------------------------
# Problem collection
# ---------------------------------------------------------------------------------------------------------
class Problems:
    """Problems found while parsing, each as ``field: what is wrong``."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where} {message}")

    def raise_if_any(self, path: Path | str, fix: str = "re-export the bundle") -> None:
        if not self.items:
            return
        if len(self.items) == 1:
            raise BundleError(f"{path}: {self.items[0]}; {fix}")
        listed = "; ".join(self.items[:20]) + (f"; ... ({len(self.items) - 20} more)" if len(self.items) > 20 else "")
        raise BundleError(f"{path}: {len(self.items)} problems: {listed}; {fix}")


def is_int(v: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(p: Problems, where: str, v: Any, lo: int, hi: int) -> int | None:
    if not is_int(v) or not lo <= v <= hi:
        p.add(where, f"must be an integer in {lo}..{hi}, got {_show(v)}")
        return None
    return v


def _str(p: Problems, where: str, v: Any, choices: tuple[str, ...] | None = None) -> str | None:
    if not isinstance(v, str) or not v or (choices is not None and v not in choices):
        want = f"one of {', '.join(choices)}" if choices else "a non-empty string"
        p.add(where, f"must be {want}, got {_show(v)}")
        return None
    return v


def _opt_str(p: Problems, where: str, d: dict[str, Any], key: str) -> str | None:
    if key not in d or d[key] is None:
        return None
    return _str(p, f"{where}.{key}", d[key])


def _section(p: Problems, where: str, v: Any, required: bool = True) -> dict[str, Any]:
    if v is None and not required:
        return {}
    if not isinstance(v, dict):
        p.add(where, "is missing" if v is None else f"must be a JSON object, got {type(v).__name__}")
        return {}
    return v


def _extra(d: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in known}


def _pair(p: Problems, where: str, v: Any, hi: int) -> tuple[int, int] | None:
    """An int or [height, width] of ints in 1..hi."""
    if is_int(v):
        v = [v, v]
    if not isinstance(v, list) or len(v) != 2 or not all(is_int(x) and 1 <= x <= hi for x in v):
        p.add(where, f"must be a positive integer or [height, width] of integers in 1..{hi}, got {_show(v)}")
        return None
    return int(v[0]), int(v[1])


def bundle_relpath(name: Any) -> str | None:
    """Why ``name`` is not a safe relative path inside a bundle, or None if it is."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty relative path"
    if "\\" in name or "\x00" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "must be a relative path inside the bundle (forward slashes, no drive or leading /)"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts) or posixpath.normpath(name) != name:
        return "must be a normalised relative path inside the bundle (no '..', '.' or empty parts)"
    return None


# ---------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """``model``: what the encoders compute."""

    embed_dim: int
    logit_scale: float
    id: str | None = None
    source: str | None = None
    architecture: str | None = None
    image_size: tuple[int, int] | None = None
    context_length: int | None = None
    scoring: str = "softmax"
    logit_bias: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    KNOWN = ("id", "source", "architecture", "embed_dim", "logit_scale", "image_size", "context_length", "scoring",
             "logit_bias")

    @classmethod
    def parse(cls, d: Any, p: Problems) -> ModelInfo:
        d = _section(p, "model", d)
        embed_dim = _int(p, "model.embed_dim", d.get("embed_dim"), 1, MAX_EMBED_DIM)
        scale = d.get("logit_scale")
        if not is_number(scale) or not 0 < scale <= MAX_LOGIT_SCALE:
            p.add("model.logit_scale", f"must be a finite number in (0, {MAX_LOGIT_SCALE:g}], got {_show(scale)}")
            scale = None
        size = _pair(p, "model.image_size", d["image_size"], MAX_IMAGE_SIDE) if "image_size" in d else None
        ctx = (_int(p, "model.context_length", d["context_length"], 1, MAX_CONTEXT_LENGTH)
               if "context_length" in d else None)
        scoring = _str(p, "model.scoring", d.get("scoring", "softmax"), tuple(SCORINGS))
        bias = d.get("logit_bias", 0.0)
        if not is_number(bias) or abs(bias) > MAX_LOGIT_SCALE:
            p.add("model.logit_bias", f"must be a finite number in [-{MAX_LOGIT_SCALE:g}, {MAX_LOGIT_SCALE:g}], "
                                      f"got {_show(bias)}")
            bias = 0.0
        return cls(embed_dim or 1, float(scale or 1.0), _opt_str(p, "model", d, "id"),
                   _opt_str(p, "model", d, "source"), _opt_str(p, "model", d, "architecture"), size, ctx,
                   scoring or "softmax", float(bias), _extra(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in ("id", "source", "architecture") if getattr(self, k)}
        out.update(embed_dim=self.embed_dim, logit_scale=self.logit_scale)
        if self.image_size is not None:
            out["image_size"] = list(self.image_size)
        if self.context_length is not None:
            out["context_length"] = self.context_length
        if self.scoring != "softmax" or self.logit_bias:  # CLIP's bundles stay as they were
            out.update(scoring=self.scoring, logit_bias=self.logit_bias)
        return {**out, **self.extra}


@dataclass(frozen=True)
class PreprocessInfo:
    """``preprocess``: how an image becomes the encoder's input (RGB, NCHW)."""

    size: tuple[int, int]
    resize_mode: str
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fill_color: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    KNOWN = ("size", "resize_mode", "interpolation", "mean", "std", "fill_color", "color", "layout")

    @classmethod
    def parse(cls, d: Any, p: Problems) -> PreprocessInfo:
        d = _section(p, "preprocess", d)
        size = _pair(p, "preprocess.size", d.get("size"), MAX_IMAGE_SIDE)
        mode = _str(p, "preprocess.resize_mode", d.get("resize_mode"), RESIZE_MODES)
        interp = _str(p, "preprocess.interpolation", d.get("interpolation"), INTERPOLATIONS)
        stats = {}
        for key in ("mean", "std"):
            v = d.get(key)
            if not isinstance(v, list) or len(v) != 3 or not all(is_number(x) for x in v) \
                    or (key == "std" and not all(x > 0 for x in v)):
                want = "3 positive finite numbers" if key == "std" else "3 finite numbers"
                p.add(f"preprocess.{key}", f"must be a list of {want} (R, G, B), got {_show(v)}")
                v = [1.0, 1.0, 1.0]
            stats[key] = tuple(float(x) for x in v)
        fill = _int(p, "preprocess.fill_color", d.get("fill_color", 0), 0, 255)
        for key, want in (("color", "RGB"), ("layout", "NCHW")):
            if d.get(key, want) != want:
                p.add(f"preprocess.{key}", f"must be {want!r}, got {_show(d[key])}")
        return cls(size or (1, 1), mode or RESIZE_MODES[0], interp or INTERPOLATIONS[0], stats["mean"],
                   stats["std"], fill or 0, _extra(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "resize_mode": self.resize_mode, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std), "fill_color": self.fill_color, "color": "RGB",
                "layout": "NCHW", **self.extra}


@dataclass(frozen=True)
class TokenizerInfo:
    """``tokenizer``: the text tokenizer's type, its vocabulary file in the bundle, the context length."""

    type: str
    vocab: str
    context_length: int = 77
    extra: dict[str, Any] = field(default_factory=dict)

    KNOWN = ("type", "vocab", "context_length")

    @classmethod
    def parse(cls, d: Any, p: Problems) -> TokenizerInfo:
        d = _section(p, "tokenizer", d)
        kind = _str(p, "tokenizer.type", d.get("type"), tuple(TOKENIZERS))
        vocab = d.get("vocab")
        why = bundle_relpath(vocab)
        if why:
            p.add("tokenizer.vocab", f"{why}, got {_show(vocab)}")
        ctx = _int(p, "tokenizer.context_length", d.get("context_length", 77), 1, MAX_CONTEXT_LENGTH)
        return cls(kind or "", vocab if not why else "", ctx or 77, _extra(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "vocab": self.vocab, "context_length": self.context_length, **self.extra}


@dataclass(frozen=True)
class FileEntry:
    """One entry of ``files``: a file of the bundle, its role, sha256 and size (and role-specific fields)."""

    name: str
    role: str
    sha256: str
    bytes: int | None = None
    precision: str | None = None
    target: str | None = None
    format: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    KNOWN = ("role", "sha256", "bytes", "precision", "target", "format")

    @classmethod
    def parse(cls, name: str, d: Any, p: Problems) -> FileEntry:
        where = f"files[{name!r}]"
        why = bundle_relpath(name)
        if why:
            p.add(where, why)
        elif name == MANIFEST:
            p.add(where, "must not list the manifest itself")
        if not isinstance(d, dict):
            p.add(where, f"must be a JSON object with 'role' and 'sha256', got {type(d).__name__}")
            return cls(name, "report", "0" * 64)
        role = _str(p, f"{where}.role", d.get("role"), ROLES)
        sha = d.get("sha256")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            p.add(f"{where}.sha256", f"must be 64 lowercase hex digits, got {_show(sha)}")
            sha = "0" * 64
        size = _int(p, f"{where}.bytes", d["bytes"], 0, 1 << 50) if "bytes" in d else None
        precision = _str(p, f"{where}.precision", d["precision"], PRECISIONS) if "precision" in d else None
        target = _opt_str(p, where, d, "target")
        fmt = _opt_str(p, where, d, "format")
        if role == "engine" and d.get("format", "tensorrt-engine") == "tensorrt-engine":
            _check_engine(p, where, d)
        elif role == "engine":  # a file built for another backend (format rknn): its chip and fixed batch
            _str(p, f"{where}.target_platform", d.get("target_platform"))
            _int(p, f"{where}.batch", d.get("batch"), 1, 1 << 16)
        if role == "external_data" and "of" in d and not isinstance(d["of"], str):
            p.add(f"{where}.of", f"must be the name of the ONNX file it belongs to, got {_show(d['of'])}")
        return cls(name, role or "report", sha, size, precision, target, fmt, _extra(d, cls.KNOWN))

    def get(self, key: str, default: Any = None) -> Any:
        """A field by its manifest key (known or extra)."""
        if key in self.KNOWN:
            value = getattr(self, key)
            return default if value is None else value
        return self.extra.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "sha256": self.sha256}
        for key in ("bytes", "format", "precision", "target"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return {**out, **self.extra}


def _check_engine(p: Problems, where: str, d: dict[str, Any]) -> None:
    """The fields of a file entry of role ``engine``: a TensorRT engine and what it was built from and for."""
    for key in ("key", "source", "tensorrt", "sm"):
        _str(p, f"{where}.{key}", d.get(key))
    sha = d.get("source_sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        p.add(f"{where}.source_sha256", f"must be 64 lowercase hex digits, got {_show(sha)}")
    if "precision" not in d:  # a present one is checked with every file entry's fields
        _str(p, f"{where}.precision", None, PRECISIONS)
    batch = d.get("batch")
    if not isinstance(batch, list) or len(batch) != 3 or not all(is_int(b) and b >= 1 for b in batch) \
            or not batch[0] <= batch[1] <= batch[2]:
        p.add(f"{where}.batch", f"must be [min, opt, max] with 1 <= min <= opt <= max, got {_show(batch)}")
    if d.get("dla_core") is not None and not (is_int(d["dla_core"]) and d["dla_core"] >= 0):
        p.add(f"{where}.dla_core", f"must be null or a non-negative integer, got {_show(d['dla_core'])}")


@dataclass(frozen=True)
class LabelsInfo:
    """``labels``: how many labels ``labels.json`` holds and which templates embedded them."""

    count: int
    template_set: str | None = None
    templates: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    KNOWN = ("count", "template_set", "templates")

    @classmethod
    def parse(cls, d: Any, p: Problems) -> LabelsInfo:
        d = _section(p, "labels", d)
        count = _int(p, "labels.count", d.get("count"), 1, 1 << 31)
        tset = _opt_str(p, "labels", d, "template_set")
        templates = _int(p, "labels.templates", d["templates"], 1, 1 << 31) if "templates" in d else None
        return cls(count or 1, tset, templates, _extra(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count}
        if self.template_set is not None:
            out["template_set"] = self.template_set
        if self.templates is not None:
            out["templates"] = self.templates
        return {**out, **self.extra}


@dataclass(frozen=True)
class QuantizationInfo:
    """One record of ``quantization``: the INT8 file made for a target and how it compares with fp32."""

    target: str
    recipe: str
    file: str
    extra: dict[str, Any] = field(default_factory=dict)

    KNOWN = ("recipe", "file")

    @classmethod
    def parse(cls, target: str, d: Any, p: Problems) -> QuantizationInfo:
        where = f"quantization[{target!r}]"
        d = _section(p, where, d)
        recipe = _str(p, f"{where}.recipe", d.get("recipe"))
        name = d.get("file")
        why = bundle_relpath(name)
        if why:
            p.add(f"{where}.file", f"{why}, got {_show(name)}")
        for key in ("calibration", "agreement", "settings"):
            if key in d and not isinstance(d[key], dict):
                p.add(f"{where}.{key}", f"must be a JSON object, got {type(d[key]).__name__}")
        return cls(target, recipe or "", name if not why else "", _extra(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "file": self.file, **self.extra}


# ---------------------------------------------------------------------------------------------------------
# The manifest
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    """The whole ``manifest.json``, typed. ``extra`` holds the sections kept as plain JSON (parity, versions...)."""

    model: ModelInfo
    preprocess: PreprocessInfo
    files: dict[str, FileEntry]
    tokenizer: TokenizerInfo | None = None
    labels: LabelsInfo | None = None
    quantization: dict[str, QuantizationInfo] = field(default_factory=dict)
    created: str | None = None
    updated: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    KNOWN = ("schema_version", "created", "updated", "files", "model", "preprocess", "tokenizer", "labels",
             "quantization")

    @classmethod
    def parse(cls, data: Any, where: Path | str = MANIFEST) -> Manifest:
        """Parse and validate; raises one BundleError naming ``where`` and every problem found."""
        if not isinstance(data, dict):
            raise BundleError(f"{where}: the manifest must be a JSON object, got {type(data).__name__}; "
                              f"re-export the bundle")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION or not is_int(version):
            raise BundleError(f"{where}: schema_version {version!r} is not supported by this edgeclip "
                              f"(expects {SCHEMA_VERSION}); upgrade edgeclip or re-export the bundle")
        p = Problems()
        model = ModelInfo.parse(data.get("model"), p)
        pre = PreprocessInfo.parse(data.get("preprocess"), p)
        raw_files = _section(p, "files", data.get("files"))
        files = {name: FileEntry.parse(name, entry, p) for name, entry in raw_files.items()}
        tok = TokenizerInfo.parse(data["tokenizer"], p) if "tokenizer" in data else None
        labels = LabelsInfo.parse(data["labels"], p) if "labels" in data else None
        quant = {t: QuantizationInfo.parse(t, q, p)
                 for t, q in _section(p, "quantization", data.get("quantization"), required=False).items()}
        for key in ("created", "updated"):
            if key in data and not isinstance(data[key], str):
                p.add(key, f"must be an ISO-8601 time string, got {_show(data[key])}")
        for key in ("parity", "versions", "export", "pack"):
            if key in data and not isinstance(data[key], dict):
                p.add(key, f"must be a JSON object, got {type(data[key]).__name__}")
        manifest = cls(model, pre, files, tok, labels, quant, data.get("created"), data.get("updated"),
                       _extra(data, cls.KNOWN))
        manifest._cross_check(p)
        p.raise_if_any(where)
        return manifest

    def _cross_check(self, p: Problems) -> None:
        """References between sections: recorded files, roles, sizes that must agree."""
        def recorded(where: str, name: str, roles: tuple[str, ...]) -> None:
            entry = self.files.get(name)
            if entry is None:
                p.add(where, f"names {name!r}, which the files section does not record")
            elif entry.role not in roles:
                p.add(where, f"names {name!r}, recorded with role {entry.role!r} instead of {' or '.join(roles)}")

        if self.tokenizer is not None and self.tokenizer.vocab:
            recorded("tokenizer.vocab", self.tokenizer.vocab, ("tokenizer",))
        if self.labels is not None:
            recorded("labels", LABELS_JSON, ("labels",))
            recorded("labels", LABELS_NPY, ("label_embeddings",))
        for target, q in self.quantization.items():
            if q.file:
                recorded(f"quantization[{target!r}].file", q.file, ("image_encoder",))
        if self.model.context_length is not None and self.tokenizer is not None \
                and self.model.context_length != self.tokenizer.context_length:
            p.add("tokenizer.context_length", f"{self.tokenizer.context_length} disagrees with "
                  f"model.context_length {self.model.context_length}")
        if self.model.image_size is not None and self.model.image_size != self.preprocess.size:
            p.add("preprocess.size", f"{list(self.preprocess.size)} disagrees with model.image_size "
                  f"{list(self.model.image_size)}")
        seen: dict[tuple[str, str, str | None], str] = {}
        for name, entry in self.files.items():
            if entry.role in ("image_encoder", "text_encoder"):
                precision = entry.precision or "fp32"
                kind = (entry.role, precision, entry.target if precision != "fp32" else None)  # as encoder() finds
                if kind in seen:
                    p.add(f"files[{name!r}]", f"is a second {kind[1]} {entry.role}"
                          + (f" for target {kind[2]}" if kind[2] else "") + f" beside {seen[kind]!r}")
                seen[kind] = name
        packed = isinstance(self.extra.get("pack"), dict)  # `edgeclip pack` keeps only what one device runs
        if not any(r == "image_encoder" and (prec == "fp32" or packed) for r, prec, _ in seen):
            p.add("files", "record no fp32 image encoder (role image_encoder, precision fp32); every bundle has one"
                  + ("" if not packed else " (a packed bundle: at least one image encoder)"))
        for name, entry in self.files.items():
            if entry.role in ("image_encoder", "text_encoder") and entry.precision == "int8" and not entry.target:
                p.add(f"files[{name!r}].target", "is missing: an INT8 encoder names its recipe target (cpu or tensorrt)")
            if entry.role == "external_data" and isinstance(entry.extra.get("of"), str):
                recorded(f"files[{name!r}].of", entry.extra["of"], ("image_encoder", "text_encoder"))

    # -- views ---------------------------------------------------------------------------------------------
    def with_role(self, role: str) -> dict[str, FileEntry]:
        """Entries whose role is ``role``."""
        return {n: e for n, e in self.files.items() if e.role == role}

    def encoders(self) -> Iterator[FileEntry]:
        """Entries of the image and text encoders (every precision and target)."""
        return (e for e in self.files.values() if e.role in ("image_encoder", "text_encoder"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as ``manifest.json`` (schema_version first)."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        if self.created is not None:
            out["created"] = self.created
        out["files"] = {n: e.to_dict() for n, e in self.files.items()}
        out["model"] = self.model.to_dict()
        out["preprocess"] = self.preprocess.to_dict()
        if self.tokenizer is not None:
            out["tokenizer"] = self.tokenizer.to_dict()
        if self.labels is not None:
            out["labels"] = self.labels.to_dict()
        if self.quantization:
            out["quantization"] = {t: q.to_dict() for t, q in self.quantization.items()}
        out.update(self.extra)
        if self.updated is not None:
            out["updated"] = self.updated
        return out


def validate_manifest(manifest: Any, where: Path | str = MANIFEST) -> Manifest:
    """Check a manifest (a parsed JSON object); raises BundleError naming every problem. Returns it typed."""
    return Manifest.parse(manifest, where)

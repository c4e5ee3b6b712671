"""Reading a bundle: load, verify every file it records, and validate every content it will use.

``load_bundle`` (with ``verify=True``, the default) checks, before anything is used: the manifest (types,
ranges, cross-references, see ``manifest.py``), each recorded file (inside the bundle, also through
symlinks; a regular file; size and sha256), the label files (``labels.json`` schema and count,
``labels.npy`` a finite float32 [N, embed_dim] matrix, read without pickle), and each ONNX encoder (inputs
and outputs against the manifest's preprocess size, context length and embed_dim; external-data
locations inside the bundle and recorded). Every problem is a ``BundleError`` naming the file and field.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BundleError
from .jsonfile import dumps_strict, loads_strict, read_json
from .lock import recover_for_read, temporaries
from .manifest import LABELS_JSON, LABELS_NPY, MANIFEST, FileEntry, Manifest, Problems, bundle_relpath, is_int
from .onnxinfo import TensorSpec, read_onnx_info

_READ_ATTEMPTS = 3
_FIX = "restore the file or re-export the bundle"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def now_iso() -> str:
    """Current UTC time as an ISO-8601 string (seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Bundle:
    """A loaded bundle: its directory, its manifest as JSON (``manifest``) and typed (``info``)."""

    path: Path
    manifest: dict[str, Any]
    verified: bool = True
    info: Manifest = field(default=None, repr=False)  # type: ignore[assignment]
    _labels: Any = field(default=None, repr=False, compare=False)  # (hashes, names, matrix) once read

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.info is None:
            self.info = Manifest.parse(self.manifest, self.path / MANIFEST)

    # -- file lookup ---------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """Path of a file recorded in the manifest; raises BundleError if it is not recorded."""
        if name not in self.info.files:
            raise BundleError(f"{self.path}: the manifest records no file {name!r}; "
                              f"recorded: {', '.join(sorted(self.info.files)) or 'none'}")
        return self.path / name

    def files_with_role(self, role: str) -> dict[str, dict[str, Any]]:
        """Manifest entries (as JSON objects) whose role is ``role``."""
        return {n: e.to_dict() for n, e in self.info.with_role(role).items()}

    def encoder(self, tower: str = "image", precision: str = "fp32", target: str | None = None) -> Path:
        """Path of the ``tower`` encoder ONNX at ``precision`` (``fp32`` or ``int8``).

        For INT8, ``target`` picks the recipe (``cpu`` or ``tensorrt``); if omitted and only one INT8
        encoder exists it is used.
        """
        role = f"{tower}_encoder"
        entries = self.info.with_role(role)
        found = {n: e for n, e in entries.items()
                 if (e.precision or "fp32") == precision and (target is None or e.target == target)}
        if not found:
            have = [(e.precision or "fp32") + (f"/{e.target}" if e.target else "") for e in entries.values()]
            hint = ("quantize it first (`edgeclip quantize`" + (f", target='{target}'" if target else "") + ")"
                    if precision == "int8" else "re-export the bundle")
            pack = self.manifest.get("pack")
            if isinstance(pack, dict):  # `edgeclip pack` left it out on purpose
                hint = (f"the bundle was packed for device profile {pack.get('profile')} without it "
                        f"(`edgeclip inspect` lists what was left out)"
                        + (f": run it at the precision it was packed for (`precision` auto or {pack.get('precision')})"
                           if tower == "image" and pack.get("precision") != precision else "")
                        + f"; or use the full bundle {(pack.get('source') or {}).get('path', '')}")
            raise BundleError(f"{self.path}: no {tower} encoder at precision {precision}"
                              + (f" for target {target}" if target else "")
                              + f" (have: {', '.join(have) or 'none'}); {hint}")
        if len(found) > 1:
            raise BundleError(f"{self.path}: several {precision} {tower} encoders ({', '.join(sorted(found))}); "
                              f"choose one by its target")
        return self.path / next(iter(found))

    # -- convenient views ----------------------------------------------------------------------------
    @property
    def preprocess(self) -> dict[str, Any]:
        return self.manifest["preprocess"]

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def logit_scale(self) -> float:
        return self.info.model.logit_scale

    @property
    def embed_dim(self) -> int:
        return self.info.model.embed_dim

    def to_json(self) -> str:
        """The manifest as strict, indented JSON (what ``edgeclip inspect`` prints as JSON)."""
        return dumps_strict(self.manifest)

    def label_names(self) -> list[str]:
        """Label names from ``labels.json``, validated (and checked against the manifest's hash)."""
        return _label_names(self, _read_recorded(self, LABELS_JSON))

    def labels(self) -> tuple[list[str], np.ndarray]:
        """Label names and the L2-normalised [N, D] float32 embedding matrix, both validated.

        Kept from the first read (a load with verification reads them), so a later call returns the labels
        of this manifest even if another process has updated the bundle since.
        """
        key = tuple(self.info.files[n].sha256 if n in self.info.files else None for n in (LABELS_JSON, LABELS_NPY))
        if self._labels is None or self._labels[0] != key:
            names = self.label_names()
            self._labels = (key, names, _label_matrix(self, _read_recorded(self, LABELS_NPY), len(names)))
        return list(self._labels[1]), self._labels[2].copy()

    def verify(self) -> None:
        """Check every file (confinement, size, sha256) and every content; raises BundleError."""
        verify_files(self)
        validate_contents(self)
        self.verified = True


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------
def real_path(path: Path) -> Path:
    """The bundle's real location (symlinks and ``.`` resolved): where its lock and temporaries live."""
    try:
        return Path(os.path.realpath(path))
    except OSError as exc:  # the current folder was removed (e.g. replaced by an update of the bundle)
        raise BundleError(f"{path}: cannot resolve the path ({exc.strerror or exc}); if it is the current "
                          f"folder, an update replaced it: change into the bundle folder again") from None


def _stamp(root: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(root / MANIFEST)
        return st.st_ino, st.st_mtime_ns, os.stat(root).st_ino
    except OSError:
        return None


def read_manifest(root: Path) -> Manifest:
    """The typed manifest of bundle directory ``root`` (no file checks)."""
    return Manifest.parse(_manifest_json(root), root / MANIFEST)


def _manifest_json(root: Path) -> Any:
    mpath = root / MANIFEST
    if mpath.is_symlink():  # like every file of a bundle: a link is followed only inside the bundle
        real, top = os.path.realpath(mpath), os.path.realpath(root)
        if os.path.commonpath([top, real]) != top:
            raise BundleError(f"{mpath}: resolves to {real}, outside the bundle (a symlink leads out of it); a "
                              f"bundle's files must be inside its folder: replace the link by the file")
    if not mpath.is_file():
        if mpath.exists() or mpath.is_symlink():
            raise BundleError(f"{mpath}: not a regular file; {root} is not a valid edgeclip bundle (re-export it)")
        raise BundleError(f"{mpath}: missing; {root} is not an edgeclip bundle (re-export it)")
    return read_json(mpath, "manifest")


def load_bundle(path: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Load and (by default) verify a bundle directory; every problem names the file and the fix.

    An interrupted write found beside the bundle is finished or rolled back first. A load that overlaps a
    concurrent update (the files changed under it) is retried, so the result is the old bundle or the new
    one, never a mix.
    """
    root = Path(path)
    real = real_path(root)
    recover_for_read(real)
    for attempt in range(_READ_ATTEMPTS):
        stamp = _stamp(root)
        try:
            return _load_once(root, verify)
        except BundleError:
            if attempt == _READ_ATTEMPTS - 1:
                raise
            if _in_swap(real):
                # between the two renames of a swap (EDGECLIP_BUNDLE_SWAP=rename): wait for the writer, or
                # put the old version back if it was killed there, then read again
                recover_for_read(real)
                continue
            if _stamp(root) == stamp:  # nothing changed under the read (a missing path stayed missing)
                raise
    raise AssertionError("unreachable")


def _in_swap(real: Path) -> bool:
    """Whether ``real`` is missing with an old version beside it: a two-rename swap in progress or killed."""
    if os.path.lexists(real / MANIFEST):
        return False
    _, olds = temporaries(real)
    return bool(olds)


def _load_once(root: Path, verify: bool) -> Bundle:
    if not root.exists():
        raise BundleError(f"{root}: no such bundle directory; make one with `edgeclip export` (out='{root}')")
    if not root.is_dir():
        raise BundleError(f"{root}: a bundle is a directory, not a file")
    data = _manifest_json(root)
    bundle = Bundle(root, data, verified=False, info=Manifest.parse(data, root / MANIFEST))
    check_confined(bundle)
    if verify:
        bundle.verify()
    return bundle


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------
def check_confined(bundle: Bundle) -> None:
    """Every recorded file resolves inside the bundle (symlinks included); raises BundleError if not."""
    root = os.path.realpath(bundle.path)
    for name in bundle.info.files:
        real = os.path.realpath(bundle.path / name)
        if os.path.commonpath([root, real]) != root:
            raise BundleError(f"{bundle.path / name}: resolves to {real}, outside the bundle (a symlink leads out "
                              f"of it); a bundle's files must be inside its folder: replace the link by the file")


def file_problem(root: Path, name: str, entry: FileEntry | dict[str, Any]) -> str | None:
    """Why the recorded file ``name`` does not match its manifest entry (missing, size, sha256), or None."""
    if isinstance(entry, dict):
        entry = FileEntry.parse(name, entry, Problems())
    p = root / name
    if not p.is_file():
        if os.path.lexists(p):
            return f"listed in the manifest (role {entry.role}) but not a regular file (a dangling link, a " \
                   f"folder or a device)"
        return f"listed in the manifest (role {entry.role}) but missing"
    size = p.stat().st_size
    if entry.bytes is not None and size != entry.bytes:
        return f"size {size} bytes, manifest says {entry.bytes}"
    try:
        digest = sha256_file(p)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if digest != entry.sha256:
        return f"sha256 {digest[:12]}... does not match the manifest ({entry.sha256[:12]}...)"
    return None


def verify_files(bundle: Bundle, damaged_engines: list[str] | None = None) -> None:
    """Check size and sha256 of every recorded file; raises BundleError naming the bad file.

    Engines are a cache (``edgeclip build`` drops a damaged one and rebuilds it): given a list as
    ``damaged_engines``, the names of missing or damaged engines are appended to it instead of raising.
    """
    check_confined(bundle)
    for name, entry in bundle.info.files.items():
        problem = file_problem(bundle.path, name, entry)
        if problem is None:
            continue
        engine = entry.role == "engine"
        if engine and damaged_engines is not None:
            damaged_engines.append(name)
            continue
        fix = (f"run `edgeclip build {bundle.path}` to drop and rebuild the engine" if engine else _FIX)
        raise BundleError(f"{bundle.path / name}: {problem}; {fix}")


def _read_recorded(bundle: Bundle, name: str) -> bytes:
    """A small recorded file's bytes, checked against the manifest (so a concurrent update is never mixed in)."""
    path = bundle.file(name)
    entry = bundle.info.files[name]
    problem = None
    try:
        if not path.is_file():
            problem = "missing or not a regular file"
        else:
            with open(path, "rb") as fh:
                data = fh.read((entry.bytes if entry.bytes is not None else path.stat().st_size) + 1)
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                problem = f"sha256 does not match the manifest ({len(data)} bytes read)"
    except OSError as exc:
        problem = f"unreadable ({exc.strerror or exc})"
    if problem:
        raise BundleError(f"{path}: {problem}; {_FIX} (or load the bundle again if another process just "
                          f"updated it)")
    return data


# ---------------------------------------------------------------------------------------------------------
# Contents
# ---------------------------------------------------------------------------------------------------------
def validate_contents(bundle: Bundle) -> None:
    """Validate what the runtime reads: label files and ONNX encoders (no hashing)."""
    if LABELS_JSON in bundle.info.files or LABELS_NPY in bundle.info.files or bundle.info.labels is not None:
        bundle.labels()
    for entry in bundle.info.encoders():
        if entry.format not in (None, "onnx") or not entry.name.endswith(".onnx"):
            continue
        path = bundle.path / entry.name
        info = read_onnx_info(path)
        tower = entry.role.split("_")[0]
        check_encoder_io(bundle, tower, info.inputs, info.outputs, where=path)
        check_external_data(bundle, entry.name, info.external_locations)


def _label_names(bundle: Bundle, raw: bytes) -> list[str]:
    path = bundle.path / LABELS_JSON
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not UTF-8 text ({exc}); {_FIX}") from None
    data = loads_strict(text, path)
    p = Problems()
    items = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        p.add("labels", "must be a non-empty list of {'name': ...} objects")
        items = []
    names: list[str] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"labels[{i}]"
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name.strip():
            p.add(f"{where}.name", "must be a non-empty string")
            continue
        if not _is_text(name):
            p.add(f"{where}.name", "is not valid text (a lone surrogate escape)")
            continue
        if name in seen:
            p.add(f"{where}.name", f"{name!r} appears twice")
        seen.add(name)
        names.append(name)
        for key in ("synonyms", "descriptions"):
            v = item.get(key, [])
            if not isinstance(v, list) or not all(isinstance(s, str) and _is_text(s) for s in v):
                p.add(f"{where}.{key}", "must be a list of strings of valid text")
    if isinstance(data, dict):
        if "template_set" in data and not isinstance(data["template_set"], str):
            p.add("template_set", "must be a string")
        t = data.get("templates", [])
        if not isinstance(t, list) or not all(isinstance(s, str) for s in t):
            p.add("templates", "must be a list of strings")
    info = bundle.info.labels
    if info is not None and names and not p.items and info.count != len(names):
        p.add("labels", f"holds {len(names)} labels but the manifest's labels.count is {info.count}")
    p.raise_if_any(path, "re-run `edgeclip labels` or re-export the bundle")
    return names


def _is_text(value: str) -> bool:
    """False for strings holding lone surrogates (JSON's ``"\\ud800"``), which cannot be written as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _label_matrix(bundle: Bundle, raw: bytes, count: int) -> np.ndarray:
    path = bundle.path / LABELS_NPY
    fix = "re-run `edgeclip labels` or re-export the bundle"
    fh = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # numpy raises ValueError, OSError or SyntaxError on damaged headers
        raise BundleError(f"{path}: not a valid .npy file ({exc}); {fix}") from None
    if dtype.hasobject or dtype.kind != "f" or dtype.itemsize != 4:
        raise BundleError(f"{path}: dtype {dtype} where float32 is expected (never objects); {fix}")
    dim = bundle.info.model.embed_dim
    if len(shape) != 2 or shape != (count, dim):
        raise BundleError(f"{path}: shape {tuple(shape)} does not match {count} labels in {LABELS_JSON} x "
                          f"model.embed_dim {dim}; {fix}")
    offset = fh.tell()
    need = count * dim * 4
    if len(raw) - offset != need:
        raise BundleError(f"{path}: {len(raw) - offset} data bytes where {need} are expected (truncated or "
                          f"padded); {fix}")
    matrix = np.frombuffer(raw, dtype=dtype, count=count * dim, offset=offset)
    matrix = matrix.reshape(shape, order="F" if fortran else "C").astype(np.float32)
    if not np.isfinite(matrix).all():
        raise BundleError(f"{path}: holds NaN or infinite values; {fix}")
    if (np.linalg.norm(matrix, axis=1) < 1e-6).any():
        raise BundleError(f"{path}: a row is all zeros (rows must be L2-normalised label embeddings); {fix}")
    return np.ascontiguousarray(matrix)


# ---------------------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------------------
_TYPE_NAMES = {"tensor(float)": "float", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(double)": "double", "tensor(uint8)": "uint8"}


def _spec(x: Any) -> TensorSpec:
    """A TensorSpec from itself or from an onnxruntime NodeArg (``name``, ``type``, ``shape``)."""
    if isinstance(x, TensorSpec):
        return x
    shape = getattr(x, "shape", None)
    dims = None if shape is None else tuple(d if is_int(d) else str(d) for d in shape)
    kind = str(getattr(x, "type", "unknown"))
    return TensorSpec(str(getattr(x, "name", "")), _TYPE_NAMES.get(kind, kind), dims)


def check_encoder_io(bundle: Bundle, tower: str, inputs: Sequence[Any], outputs: Sequence[Any],
                     where: Path | str | None = None) -> None:
    """Check an encoder's inputs and outputs against the manifest; raises BundleError naming the mismatch.

    ``inputs``/``outputs``: ``TensorSpec`` s (from ``read_onnx_info``) or onnxruntime ``NodeArg`` s (from
    ``session.get_inputs()`` / ``get_outputs()``). The image encoder takes one float [batch, 3, H, W] with
    (H, W) the manifest's ``preprocess.size``; the text encoder one integer [batch, context_length]; both
    give [batch, model.embed_dim] first.
    """
    ins, outs = [_spec(i) for i in inputs], [_spec(o) for o in outputs]
    where = where or bundle.path / f"{tower}_encoder"
    info = bundle.info
    p = Problems()
    if tower == "image":
        want = ("float", "float16")
        dims: list[Any] = ["batch", 3, *info.preprocess.size]
        expect = f"one float input [batch, 3, {info.preprocess.size[0]}, {info.preprocess.size[1]}]"
    elif tower == "text":
        want = ("int64", "int32")
        ctx = info.tokenizer.context_length if info.tokenizer else (info.model.context_length or None)
        dims = ["batch", ctx]
        expect = f"one integer input [batch, {ctx or 'context_length'}]"
    else:
        raise BundleError(f"unknown encoder tower {tower!r}; expected image or text")
    if len(ins) != 1:
        p.add("inputs", f"are {[i.name for i in ins]}; expected {expect}")
    else:
        x = ins[0]
        if x.elem_type not in want:
            p.add(f"input {x.name!r}", f"has type {x.elem_type}; expected {expect}")
        if x.shape is not None:
            if len(x.shape) != len(dims):
                p.add(f"input {x.name!r}", f"has shape {list(x.shape)}; expected {expect}")
            else:
                for axis, (have, need) in enumerate(zip(x.shape, dims)):
                    if axis and is_int(have) and is_int(need) and have != need:
                        p.add(f"input {x.name!r}", f"has {have} at axis {axis} where the manifest says {need} "
                                                  f"({expect})")
    if not outs:
        p.add("outputs", "are missing; expected [batch, embed_dim] first")
    elif outs[0].shape is not None:
        y = outs[0]
        dim = info.model.embed_dim
        if len(y.shape) != 2 or not is_int(y.shape[1]) or y.shape[1] != dim:  # a named width could be anything
            p.add(f"output {y.name!r}", f"has shape {list(y.shape)}; expected [batch, {dim}] (model.embed_dim)")
    p.raise_if_any(where, "the manifest and the encoder disagree: re-export the bundle")


def check_external_data(bundle: Bundle, onnx_name: str, locations: Sequence[str]) -> None:
    """Each external-data location of ``onnx_name`` is a recorded file inside the bundle."""
    base = os.path.dirname(onnx_name)
    for loc in locations:
        name = os.path.normpath(os.path.join(base, loc)).replace(os.sep, "/") if isinstance(loc, str) else loc
        why = bundle_relpath(loc) or bundle_relpath(name)
        if why:
            raise BundleError(f"{bundle.path / onnx_name}: external data location {loc!r} {why}; re-export the "
                              f"bundle")
        entry = bundle.info.files.get(name)
        if entry is None or entry.role != "external_data":
            raise BundleError(f"{bundle.path / onnx_name}: external data {loc!r} is not recorded in the manifest "
                              f"as an external_data file (so it is not verified); re-export the bundle")

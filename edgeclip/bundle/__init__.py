"""The bundle: one directory of plain files described by ``manifest.json``.

This module is the contract between stages. It only needs the standard library and numpy, so the
runtime, third-party apps and the export stage all read bundles the same way.

Layout::

    manifest.json                      schema_version, model, preprocess, tokenizer, files (sha256, role)...
    image_encoder.onnx                 fp32 image tower, input ``pixel_values`` -> output ``image_embeds``
    image_encoder.int8.<target>.onnx   INT8 image tower per target (``cpu`` or ``tensorrt``)
    text_encoder.onnx                  fp32 text tower, input ``input_ids`` -> output ``text_embeds``
    tokenizer/                         CLIP BPE vocabulary for the torch-free tokenizer
    labels.json  labels.npy            label names and prompts; L2-normalised [N, D] float32 matrix
    engines/<key>.engine               TensorRT engines (see ``edgeclip.devices``)

Writes are atomic: a new or updated bundle is built in a temporary sibling directory and swapped in with
``os.rename``, so a crash never leaves a half-written bundle in place of a good one. Loads verify every
file's size and sha256 and name the file that is wrong.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import BundleError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LABELS_JSON = "labels.json"
LABELS_NPY = "labels.npy"

#: Roles a file in ``manifest["files"]`` may have.
ROLES = ("image_encoder", "text_encoder", "external_data", "tokenizer", "labels", "label_embeddings", "engine",
         "report", "calibration")


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
    """A loaded, verified bundle: its directory and its manifest."""

    path: Path
    manifest: dict[str, Any]
    verified: bool = True

    # -- file lookup ---------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """Path of a file recorded in the manifest; raises BundleError if it is not recorded."""
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.path}: the manifest records no file {name!r}; "
                              f"recorded: {', '.join(sorted(self.manifest['files']))}")
        return self.path / name

    def files_with_role(self, role: str) -> dict[str, dict[str, Any]]:
        """Manifest entries whose role is ``role``."""
        return {n: e for n, e in self.manifest["files"].items() if e.get("role") == role}

    def encoder(self, tower: str = "image", precision: str = "fp32", target: str | None = None) -> Path:
        """Path of the ``tower`` encoder ONNX at ``precision`` (``fp32`` or ``int8``).

        For INT8, ``target`` picks the recipe (``cpu`` or ``tensorrt``); if omitted and only one INT8
        encoder exists it is used.
        """
        role = f"{tower}_encoder"
        found = {n: e for n, e in self.files_with_role(role).items()
                 if e.get("precision", "fp32") == precision and (target is None or e.get("target") == target)}
        if not found:
            have = [f"{e.get('precision', 'fp32')}" + (f"/{e['target']}" if e.get("target") else "")
                    for e in self.files_with_role(role).values()]
            hint = (f"run `edgeclip quantize {self.path}" + (f" --target {target}" if target else "") + "` first"
                    if precision == "int8" else "re-export the bundle")
            raise BundleError(f"{self.path}: no {tower} encoder at precision {precision}"
                              + (f" for target {target}" if target else "")
                              + f" (have: {', '.join(have) or 'none'}); {hint}")
        if len(found) > 1:
            raise BundleError(f"{self.path}: several {precision} {tower} encoders ({', '.join(sorted(found))}); "
                              f"choose one with --target")
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
        return float(self.manifest["model"]["logit_scale"])

    def labels(self) -> tuple[list[str], "Any"]:
        """Label names and the L2-normalised [N, D] float32 embedding matrix."""
        import numpy as np

        meta = json.loads(self.file(LABELS_JSON).read_text(encoding="utf-8"))
        emb = np.load(self.file(LABELS_NPY), allow_pickle=False)
        names = [entry["name"] for entry in meta["labels"]]
        if emb.ndim != 2 or emb.shape[0] != len(names):
            raise BundleError(f"{self.file(LABELS_NPY)}: shape {emb.shape} does not match "
                              f"{len(names)} labels in {LABELS_JSON}; re-run `edgeclip labels`")
        return names, emb.astype("float32", copy=False)


def load_bundle(path: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Load and (by default) verify a bundle directory; every problem names the file and the fix."""
    root = Path(path)
    if not root.exists():
        raise BundleError(f"{root}: no such bundle directory; create one with `edgeclip export --out {root}`")
    if not root.is_dir():
        raise BundleError(f"{root}: a bundle is a directory, not a file")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{mpath}: missing; {root} is not an edgeclip bundle (re-export it)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath}: not valid JSON ({exc}); the bundle is corrupt, re-export it") from exc
    validate_manifest(manifest, mpath)
    bundle = Bundle(root, manifest, verified=False)
    if verify:
        verify_files(bundle)
        bundle.verified = True
    return bundle


def validate_manifest(manifest: Any, where: Path | str = MANIFEST) -> None:
    """Check the manifest's structure; raises BundleError naming the first problem."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: the manifest must be a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{where}: schema_version {version!r} is not supported by this edgeclip "
                          f"(expects {SCHEMA_VERSION}); upgrade edgeclip or re-export the bundle")
    for key in ("model", "preprocess", "files"):
        if not isinstance(manifest.get(key), dict):
            raise BundleError(f"{where}: missing or malformed section {key!r}; re-export the bundle")
    for key in ("embed_dim", "logit_scale"):
        if key not in manifest["model"]:
            raise BundleError(f"{where}: model.{key} is missing; re-export the bundle")
    for key in ("size", "resize_mode", "interpolation", "mean", "std"):
        if key not in manifest["preprocess"]:
            raise BundleError(f"{where}: preprocess.{key} is missing; re-export the bundle")
    for name, entry in manifest["files"].items():
        if not isinstance(entry, dict) or "sha256" not in entry or "role" not in entry:
            raise BundleError(f"{where}: files[{name!r}] needs 'sha256' and 'role'")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{where}: files[{name!r}] must be a relative path inside the bundle")


def file_problem(root: Path, name: str, entry: dict[str, Any]) -> str | None:
    """Why the recorded file ``name`` does not match its manifest entry (missing, size, sha256), or None."""
    p = root / name
    if not p.is_file():
        return f"listed in the manifest (role {entry['role']}) but missing"
    if "bytes" in entry and p.stat().st_size != entry["bytes"]:
        return f"size {p.stat().st_size} bytes, manifest says {entry['bytes']}"
    digest = sha256_file(p)
    if digest != entry["sha256"]:
        return f"sha256 {digest[:12]}... does not match the manifest ({entry['sha256'][:12]}...)"
    return None


def verify_files(bundle: Bundle, damaged_engines: list[str] | None = None) -> None:
    """Check size and sha256 of every recorded file; raises BundleError naming the bad file.

    Engines are a cache (``edgeclip build`` drops a damaged one and rebuilds it): given a list as
    ``damaged_engines``, the names of missing or damaged engines are appended to it instead of raising.
    """
    for name, entry in bundle.manifest["files"].items():
        problem = file_problem(bundle.path, name, entry)
        if problem is None:
            continue
        engine = entry["role"] == "engine"
        if engine and damaged_engines is not None:
            damaged_engines.append(name)
            continue
        fix = (f"run `edgeclip build {bundle.path}` to drop and rebuild the engine" if engine
               else "re-export the bundle or restore the file")
        raise BundleError(f"{bundle.path / name}: {problem}; {fix}")


# --------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------
@dataclass
class BundleDraft:
    """A bundle being written in a temporary directory; ``commit`` records files in the manifest."""

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    def add_file(self, name: str, role: str, **info: Any) -> Path:
        """Record an existing file of the draft (hash and size are computed now)."""
        p = self.path / name
        if not p.is_file():
            raise BundleError(f"{p}: cannot record a file that was not written")
        if role not in ROLES:
            raise BundleError(f"unknown file role {role!r}; expected one of {', '.join(ROLES)}")
        self.manifest.setdefault("files", {})[name] = {
            "role": role, "sha256": sha256_file(p), "bytes": p.stat().st_size, **info}
        return p

    def new_file(self, name: str) -> Path:
        """A path to write a new file at; an existing (possibly hard-linked) file there is unlinked first."""
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists() or p.is_symlink():
            p.unlink()
        return p

    def remove_file(self, name: str) -> None:
        """Drop a file from the draft and from the manifest."""
        self.manifest.get("files", {}).pop(name, None)
        p = self.path / name
        if p.exists():
            p.unlink()

    def write_json(self, name: str, data: Any, role: str, **info: Any) -> Path:
        """Write a JSON file (UTF-8, indented) and record it."""
        p = self.new_file(name)
        p.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return self.add_file(name, role, **info)


def _swap_in(tmp: Path, target: Path) -> None:
    """Replace ``target`` by the finished directory ``tmp`` with renames (the old one is removed last)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _finish(draft: BundleDraft) -> None:
    draft.manifest["schema_version"] = SCHEMA_VERSION
    draft.manifest["updated"] = now_iso()
    ordered = {"schema_version": SCHEMA_VERSION, **{k: v for k, v in draft.manifest.items() if k != "schema_version"}}
    validate_manifest(ordered, draft.path / MANIFEST)
    (draft.path / MANIFEST).write_text(json.dumps(ordered, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@contextlib.contextmanager
def create_bundle(target: str | os.PathLike[str], overwrite: bool = False) -> Iterator[BundleDraft]:
    """Write a new bundle atomically: yields a draft in a temporary sibling, swapped in on success."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise BundleError(f"{target}: already exists; pass --overwrite to replace it, or choose another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        draft = BundleDraft(tmp, {"schema_version": SCHEMA_VERSION, "created": now_iso(), "files": {}})
        yield draft
        _finish(draft)
        _swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def update_bundle(target: str | os.PathLike[str] | Bundle, verify: bool = True) -> Iterator[BundleDraft]:
    """Change an existing bundle atomically.

    ``target`` is a bundle directory, loaded and verified here (``verify=False`` only for repairs that drop
    damaged files), or a ``Bundle`` already loaded: its files are not hashed again if it was verified, and
    its manifest is the one the draft starts from. The files are hard-linked (or copied) into a temporary
    sibling, changed there and swapped in; a ``Bundle`` passed in then carries the new manifest. Write files
    through ``draft.new_file`` so hard links to the original are never written through.
    """
    if isinstance(target, Bundle):
        bundle = target
        if verify and not bundle.verified:
            verify_files(bundle)
            bundle.verified = True
    else:
        bundle = load_bundle(target, verify=verify)
    tmp = Path(tempfile.mkdtemp(prefix=f".{bundle.path.name}.tmp-", dir=bundle.path.parent))
    try:
        for src in bundle.path.rglob("*"):
            dst = tmp / src.relative_to(bundle.path)
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.name == MANIFEST:
                continue
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        draft = BundleDraft(tmp, json.loads(json.dumps(bundle.manifest)))
        yield draft
        _finish(draft)
        _swap_in(tmp, bundle.path)
        bundle.manifest = draft.manifest  # a Bundle passed in now describes the updated bundle
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

"""Damaged bundles, killed writers and concurrent writers: the bundle half of the hardening fuzz suite.

Used by tests/test_bundle_hardening.py (a sample in the fast suite, everything under ``-m slow``) and by
scripts/fuzz_bundles.py (the campaign with its figures). Three generators:

* ``damages(bundle)``: every file deleted, truncated, bit-flipped, replaced by a symlink (out of the
  bundle, dangling, a loop), a FIFO or a folder; every manifest field removed or given a wrong type or an
  out-of-range value; crafted contents with the manifest's hashes fixed up to match (object-dtype, NaN,
  truncated or mis-shaped ``labels.npy``, invalid ``labels.json``, swapped or broken ONNX encoders,
  external data pointing out of the bundle, a gzip bomb as the vocabulary, deep or NaN-holding JSON).
  ``check_damaged`` runs ``inspect``, ``classify`` (and ``labels`` where the text side is touched) through
  the CLI in-process: each must exit 0 or 2, never raise, and agree (inspect verified => classify works).
* ``run_killed``: a writing command in a subprocess, SIGKILLed at a chosen rename/removal of the bundle
  swap or after a random delay; ``outcome_after_kill`` then loads the bundle: it must be the old or the
  new version, complete and verified, with no temporaries left.
* ``run_concurrent``: two writers at once; both succeed (or one fails cleanly) and the result verifies and
  holds both updates.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import sys
import tarfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
DATA = Path(os.environ.get("EDGECLIP_DATA", REPO.parent / "shared" / "data"))

BASE_LABELS = ["cat", "dog", "bird"]
NEW_LABELS = ["airplane", "ship", "truck", "frog"]


# ---------------------------------------------------------------------------------------------------------
# Fixtures for the campaign (the tests use conftest's)
# ---------------------------------------------------------------------------------------------------------
def cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``edgeclip ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "edgeclip.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def make_base_bundle(out: Path, quantized: bool = True) -> Path:
    """The tiny ViT exported with BASE_LABELS (and an INT8 ``cpu`` encoder, so every section exists)."""
    r = cli("-q", "export", "--model", "edgeclip-tiny-vit", "--labels", *BASE_LABELS, "--out", str(out))
    assert r.returncode == 0, r.stderr
    if quantized:
        r = cli("-q", "quantize", str(out), "--calib", "noise", "--images", "8", "--target", "cpu")
        assert r.returncode == 0, r.stderr
    return out


def sample_image(dest: Path) -> Path:
    """One real photo (a CIFAR-10 test JPEG from the shared data), or a generated PNG without it."""
    tar = DATA / "cifar10-test.tar"
    if tar.is_file():
        with tarfile.open(tar) as t:
            for member in t:
                if member.isfile() and member.name.endswith(".jpg"):
                    dest = dest.with_suffix(".jpg")
                    dest.write_bytes(t.extractfile(member).read())
                    return dest
    import cv2

    dest = dest.with_suffix(".png")
    cv2.imwrite(str(dest), np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return dest


# ---------------------------------------------------------------------------------------------------------
# Damaged bundles
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Damage:
    """One way of damaging a copy of the base bundle; ``text`` marks damage that ``labels`` must also meet."""

    name: str
    kind: str
    apply: Callable[[Path], None]
    text: bool = False


def _manifest(b: Path) -> dict[str, Any]:
    return json.loads((b / "manifest.json").read_text())


def _write_manifest(b: Path, m: Any) -> None:
    (b / "manifest.json").write_text(json.dumps(m, indent=2))


def _set_path(obj: Any, path: tuple, value: Any, delete: bool = False) -> None:
    for key in path[:-1]:
        obj = obj[key]
    if delete:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


def _leaves(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            out += _leaves(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append(prefix + (i,))
            out += _leaves(v, prefix + (i,))
    return out


def _replace_content(name: str, data: bytes) -> Callable[[Path], None]:
    """Write ``data`` as file ``name`` and fix its sha256 and size in the manifest (a consistent forgery)."""
    def apply(b: Path) -> None:
        import hashlib

        p = b / name
        if p.is_symlink() or p.exists():
            p.unlink()
        p.write_bytes(data)
        m = _manifest(b)
        m["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        _write_manifest(b, m)
    return apply


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _file_damages(b: Path, names: list[str], outside: Path) -> list[Damage]:
    out: list[Damage] = []
    for name in names:
        text = name.startswith(("tokenizer", "text_encoder"))

        def delete(d: Path, n: str = name) -> None:
            (d / n).unlink()

        def truncate(frac: float) -> Callable[[Path], None]:
            def apply(d: Path, n: str = name) -> None:
                data = (d / n).read_bytes()
                (d / n).write_bytes(data[:int(len(data) * frac)])
            return apply

        def flip(where: float) -> Callable[[Path], None]:
            def apply(d: Path, n: str = name) -> None:
                data = bytearray((d / n).read_bytes())
                if data:
                    data[min(len(data) - 1, int(len(data) * where))] ^= 0x5A
                (d / n).write_bytes(bytes(data))
            return apply

        def link_out(d: Path, n: str = name) -> None:  # same bytes outside: the hash still matches
            copy = outside / f"{d.name}-{n.replace('/', '_')}"
            shutil.copyfile(d / n, copy)
            (d / n).unlink()
            (d / n).symlink_to(copy)

        def dangling(d: Path, n: str = name) -> None:
            (d / n).unlink()
            (d / n).symlink_to(d / "no-such-file")

        def loop(d: Path, n: str = name) -> None:
            (d / n).unlink()
            (d / n).symlink_to(d / n)

        def dev_zero(d: Path, n: str = name) -> None:
            (d / n).unlink()
            (d / n).symlink_to("/dev/zero")

        def fifo(d: Path, n: str = name) -> None:
            (d / n).unlink()
            os.mkfifo(d / n)

        def folder(d: Path, n: str = name) -> None:
            (d / n).unlink()
            (d / n).mkdir()

        for label, fn in [("delete", delete), ("truncate-0", truncate(0)), ("truncate-half", truncate(0.5)),
                          ("truncate-1", truncate(0.999)), ("flip-start", flip(0.0)), ("flip-mid", flip(0.5)),
                          ("flip-end", flip(1.0)), ("symlink-out", link_out), ("dangling", dangling),
                          ("loop", loop), ("dev-zero", dev_zero), ("fifo", fifo), ("folder", folder)]:
            out.append(Damage(f"{name}:{label}", "file", fn, text))
    return out


def _manifest_damages(m: dict[str, Any]) -> list[Damage]:
    out: list[Damage] = []
    values: list[tuple[str, Any]] = [("null", None), ("string", "x"), ("bool", True), ("float", 1.5),
                                     ("negative", -1), ("zero", 0), ("list", []), ("object", {}),
                                     ("huge", 10 ** 30), ("long-string", "a" * 5000)]
    for path in _leaves(m):
        if path == ("schema_version",):
            continue
        where = ".".join(str(p) for p in path)
        text = path[0] == "tokenizer" or (len(path) > 1 and str(path[1]).startswith(("text_", "tokenizer")))

        def drop(d: Path, p: tuple = path) -> None:
            mm = _manifest(d)
            _set_path(mm, p, None, delete=True)
            _write_manifest(d, mm)

        out.append(Damage(f"manifest.{where}:missing", "manifest", drop, text))
        for label, value in values:
            def setv(d: Path, p: tuple = path, v: Any = value) -> None:
                mm = _manifest(d)
                _set_path(mm, p, v)
                _write_manifest(d, mm)
            out.append(Damage(f"manifest.{where}:{label}", "manifest", setv, text))
    return out


def _text_manifest(transform: Callable[[str], str]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        p = d / "manifest.json"
        p.write_text(transform(p.read_text()))
    return apply


def _flatten_encoder(size: list[int], width: object) -> bytes:
    """An "image encoder" that flattens the pixels (3 x H x W values per image) and declares [batch, width]."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, *size])
    y = helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", width])
    graph = helper.make_graph([helper.make_node("Flatten", ["pixels"], ["emb"], axis=1)], "wide", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _onnx_with_location(src: Path, location: str) -> bytes:
    """The ONNX model at ``src`` with its weights moved to external data named ``location`` (no checks)."""
    import onnx
    from onnx import external_data_helper

    model = onnx.load(str(src))
    external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=True, location="w.bin",
                                                        size_threshold=0)
    for t in external_data_helper._get_all_tensors(model):
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    return model.SerializeToString()


def _content_damages(b: Path, outside: Path) -> list[Damage]:
    m = _manifest(b)
    n, dim = m["labels"]["count"], m["model"]["embed_dim"]
    rng = np.random.default_rng(0)
    good = rng.standard_normal((n, dim)).astype(np.float32)
    good /= np.linalg.norm(good, axis=1, keepdims=True)
    nan, inf, zero = good.copy(), good.copy(), good.copy()
    nan[0, 0], inf[1, 2], zero[2] = np.nan, np.inf, 0
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (3 << 30, dim)})
    huge_header = header.getvalue()
    npys = {
        "object": _npy(np.array([{"a": 1}, None, "x"], dtype=object), allow_pickle=True),
        "float64": _npy(good.astype(np.float64)), "float16": _npy(good.astype(np.float16)),
        "int32": _npy(good.astype(np.int32)), "wide": _npy(np.ones((n, dim + 1), np.float32)),
        "tall": _npy(np.ones((n + 1, dim), np.float32)), "flat": _npy(good.ravel()),
        "cube": _npy(good[None]), "nan": _npy(nan), "inf": _npy(inf), "zero-row": _npy(zero),
        "truncated-data": _npy(good)[:-7], "garbage": b"not a numpy file at all", "empty": b"",
        "huge-shape": huge_header + b"\x00" * 64, "bad-header": b"\x93NUMPY\x01\x00\x10\x00{'descr': lambda}  \n",
        "big-endian": _npy(good.astype(">f4")), "fortran": _npy(np.asfortranarray(good)),
    }
    out = [Damage(f"labels.npy:{k}", "content", _replace_content("labels.npy", v)) for k, v in npys.items()]
    doc = json.loads((b / "labels.json").read_text())
    names = [{"name": x} for x in BASE_LABELS]
    jsons = {
        "garbage": b"{not json", "deep": b"[" * 100000, "nan": b'{"labels": [{"name": NaN}]}',
        "not-object": b"[1, 2, 3]", "labels-not-list": b'{"labels": "cat"}', "empty-list": b'{"labels": []}',
        "name-int": json.dumps({"labels": [{"name": 1}, {"name": "dog"}, {"name": "bird"}]}).encode(),
        "duplicate-name": json.dumps({"labels": [{"name": "cat"}] * 3}).encode(),
        "fewer": json.dumps({"labels": names[:2]}).encode(),
        "more": json.dumps({"labels": names + [{"name": "extra"}]}).encode(),
        "synonyms-int": json.dumps({"labels": [{"name": "cat", "synonyms": 3}] + names[1:]}).encode(),
        "huge-number": b'{"labels": [{"name": "cat"}, {"name": "dog"}, {"name": "bird"}], "x": 1e999}',
        "duplicate-key": b'{"labels": [], "labels": [{"name": "cat"}, {"name": "dog"}, {"name": "bird"}]}',
        "latin1": '{"labels": [{"name": "caf\xe9"}, {"name": "dog"}, {"name": "bird"}]}'.encode("latin-1"),
        "bom": b"\xef\xbb\xbf" + json.dumps(doc).encode(),
        "templates-bad": json.dumps({**doc, "templates": ["a {x}"]}).encode(),
    }
    out += [Damage(f"labels.json:{k}", "content", _replace_content("labels.json", v), k == "templates-bad")
            for k, v in jsons.items()]
    image, text = (b / "image_encoder.onnx").read_bytes(), (b / "text_encoder.onnx").read_bytes()
    int8 = "image_encoder.int8.cpu.onnx"
    onnxes = [("image_encoder.onnx", "text-tower", text), ("text_encoder.onnx", "image-tower", image),
              ("image_encoder.onnx", "truncated", image[: len(image) // 3]),
              ("image_encoder.onnx", "random", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()),
              ("image_encoder.onnx", "empty", b""), ("text_encoder.onnx", "truncated", text[:1000])]
    if (b / int8).exists():
        onnxes.append((int8, "text-tower", text))
    for name, label, data in onnxes:
        out.append(Damage(f"{name}:{label}", "content", _replace_content(name, data), name.startswith("text")))
    def wide(d: Path) -> None:  # 3 x H x W values per image under a named width (needs onnx: made when applied)
        _replace_content("image_encoder.onnx", _flatten_encoder(m["preprocess"]["size"], "width"))(d)
    out.append(Damage("image_encoder.onnx:wide-named-width", "content", wide))
    for label, loc in [("external-parent", "../w.bin"), ("external-absolute", "/etc/hostname"),
                       ("external-unrecorded", "w.bin"), ("external-backslash", "..\\w.bin")]:
        def ext(d: Path, loc: str = loc) -> None:
            data = _onnx_with_location(d / "image_encoder.onnx", loc)
            shutil.copyfile(d / "image_encoder.onnx", outside / "w.bin")  # something to find outside
            _replace_content("image_encoder.onnx", data)(d)
        out.append(Damage(f"image_encoder.onnx:{label}", "content", ext))
    vocab = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
    bomb = gzip.compress(b"\x00" * (80 << 20), compresslevel=9)
    for label, data in [("garbage", b"garbage"), ("empty-gzip", gzip.compress(b"")), ("bomb", bomb),
                        ("not-utf8", gzip.compress(b"header\n\xff\xfe a\n")),
                        ("one-symbol-lines", gzip.compress(b"header\nabc\n"))]:
        out.append(Damage(f"{vocab}:{label}", "content", _replace_content(vocab, data), True))
    texts: list[tuple[str, Callable[[str], str]]] = [
        ("nan-logit-scale", lambda t: t.replace('"logit_scale": ', '"logit_scale": NaN, "x": ', 1)),
        ("inf-embed-dim", lambda t: t.replace('"embed_dim": ', '"embed_dim": 1e999, "y": ', 1)),
        ("duplicate-key", lambda t: t.replace('"model": {', '"model": {"embed_dim": 8, ', 1)),
        ("deep", lambda t: "[" * 100000), ("top-list", lambda t: "[" + t + "]"), ("empty", lambda t: ""),
        ("schema-2", lambda t: t.replace('"schema_version": 1', '"schema_version": 2', 1)),
        ("schema-string", lambda t: t.replace('"schema_version": 1', '"schema_version": "1"', 1)),
        ("trailing-garbage", lambda t: t + "}}"),
    ]
    out += [Damage(f"manifest.json:{k}", "manifest-text", _text_manifest(fn)) for k, fn in texts]

    def manifest_bytes(data: bytes) -> Callable[[Path], None]:
        return lambda d: (d / "manifest.json").write_bytes(data)

    out.append(Damage("manifest.json:latin1", "manifest-text", manifest_bytes(b'{"schema_version": 1, "x": "\xe9"}')))

    def manifest_folder(d: Path) -> None:
        (d / "manifest.json").unlink()
        (d / "manifest.json").mkdir()

    def manifest_link_out(d: Path) -> None:
        copy = outside / f"{d.name}-manifest.json"
        shutil.copyfile(d / "manifest.json", copy)
        (d / "manifest.json").unlink()
        (d / "manifest.json").symlink_to(copy)

    out += [Damage("manifest.json:folder", "file", manifest_folder),
            Damage("manifest.json:delete", "file", lambda d: (d / "manifest.json").unlink())]
    out.append(Damage("manifest.json:symlink-out-then-size", "file", manifest_link_out))

    def mutate(fn: Callable[[dict], None]) -> Callable[[Path], None]:
        def apply(d: Path) -> None:
            mm = _manifest(d)
            fn(mm)
            _write_manifest(d, mm)
        return apply

    consistency = [
        ("preprocess-size-64", lambda mm: mm["preprocess"].update(size=[64, 64])),
        ("preprocess-size-and-image-size", lambda mm: (mm["preprocess"].update(size=[64, 64]),
                                                       mm["model"].update(image_size=[64, 64]))),
        ("context-length-32", lambda mm: mm["tokenizer"].update(context_length=32)),
        ("context-length-both-32", lambda mm: (mm["tokenizer"].update(context_length=32),
                                               mm["model"].update(context_length=32))),
        ("embed-dim-32", lambda mm: mm["model"].update(embed_dim=32)),
        ("labels-count-9", lambda mm: mm["labels"].update(count=9)),
        ("file-escape", lambda mm: mm["files"].update({"../escape.onnx": mm["files"]["image_encoder.onnx"]})),
        ("file-absolute", lambda mm: mm["files"].update({"/etc/hostname": mm["files"]["labels.json"]})),
        ("vocab-escape", lambda mm: mm["tokenizer"].update(vocab="../vocab.gz")),
        ("vocab-unrecorded", lambda mm: mm["files"].pop("tokenizer/bpe_simple_vocab_16e6.txt.gz")),
        ("sha-uppercase", lambda mm: mm["files"]["labels.json"].update(
            sha256=mm["files"]["labels.json"]["sha256"].upper())),
        ("role-unknown", lambda mm: mm["files"]["labels.json"].update(role="weights")),
        ("int8-without-target", lambda mm: [e.pop("target", None) for e in mm["files"].values()
                                             if e.get("precision") == "int8"]),
        ("quantization-file-missing", lambda mm: mm.setdefault("quantization", {}).update(
            cpu={"recipe": "x", "file": "nope.onnx"})),
        ("two-fp32-image-encoders", lambda mm: mm["files"]["image_encoder.onnx"].update(role="image_encoder") or
            mm["files"].update({"text_encoder.onnx": {**mm["files"]["text_encoder.onnx"], "role": "image_encoder"}})),
    ]
    out += [Damage(f"manifest:{k}", "consistency", mutate(fn), k.startswith(("context", "vocab")))
            for k, fn in consistency]
    return out


def damages(base: Path, outside: Path) -> list[Damage]:
    """Every damage case for copies of the bundle ``base``; ``outside`` is a folder beside it for targets."""
    m = _manifest(base)
    names = sorted(m["files"]) + ["manifest.json"]
    out = _file_damages(base, [n for n in names if n != "manifest.json"], outside)
    out += _manifest_damages(m)
    out += _content_damages(base, outside)
    return out


def pick(cases: list[Damage], n: int, seed: int = 0) -> list[Damage]:
    """A deterministic sample of ``n`` cases spread over the kinds."""
    if n >= len(cases):
        return list(cases)
    rng = random.Random(seed)
    by_kind: dict[str, list[Damage]] = {}
    for c in cases:
        by_kind.setdefault(c.kind, []).append(c)
    out: list[Damage] = []
    while len(out) < n:
        for kind in sorted(by_kind):
            if by_kind[kind] and len(out) < n:
                out.append(by_kind[kind].pop(rng.randrange(len(by_kind[kind]))))
    return out


def _run_cli(args: list[str]) -> tuple[int | None, str, str]:
    """edgeclip in-process: (exit status or None if it raised, stdout, traceback or stderr)."""
    from edgeclip.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(args)
        return rc, out.getvalue(), err.getvalue()
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue(), err.getvalue()
    except BaseException:
        return None, out.getvalue(), traceback.format_exc()


def check_damaged(bundle: Path, image: Path, text: bool = False) -> tuple[str, str]:
    """Run inspect, classify (and labels) on a damaged bundle: ("rejected"|"accepted", "") if clean, else
    ("traceback"|"inconsistent", details)."""
    rc_i, _, err_i = _run_cli(["-q", "inspect", str(bundle)])
    if rc_i is None:
        return "traceback", f"inspect: {err_i}"
    out = bundle.parent / f"{bundle.name}.jsonl"
    rc_c, _, err_c = _run_cli(["-q", "classify", str(bundle), str(image), "--format", "jsonl", "-o", str(out)])
    if rc_c is None:
        return "traceback", f"classify: {err_c}"
    if rc_i not in (0, 2) or rc_c not in (0, 2):
        return "inconsistent", f"exit statuses inspect {rc_i}, classify {rc_c}: {err_i} {err_c}"
    if (rc_i == 0) != (rc_c == 0):
        return "inconsistent", f"inspect exit {rc_i} but classify exit {rc_c}: {err_i.strip()} | {err_c.strip()}"
    if rc_c == 0:
        from edgeclip.bundle import loads_strict

        rows = [loads_strict(line, out) for line in out.read_text().splitlines()]
        if len(rows) != 1 or not isinstance(rows[0].get("score"), float) or not 0 <= rows[0]["score"] <= 1:
            return "inconsistent", f"classify output {rows}"
    if text:
        rc_l, _, err_l = _run_cli(["-q", "labels", str(bundle), "--labels", "plane", "ship"])
        if rc_l is None:
            return "traceback", f"labels: {err_l}"
        if rc_l not in (0, 2):
            return "inconsistent", f"labels exit {rc_l}: {err_l}"
    return ("accepted" if rc_i == 0 else "rejected"), ""


# ---------------------------------------------------------------------------------------------------------
# Kills
# ---------------------------------------------------------------------------------------------------------
#: Runs in the killed subprocess: counts the swap's renames/removals and SIGKILLs itself at one of them.
_KILL_AT = r"""
import os, signal, sys
import edgeclip.bundle.write as w
target, when = int(sys.argv[1]), sys.argv[2]
count = [0]
def hook(name, fn):
    def wrapped(*a, **k):
        count[0] += 1
        if count[0] == target and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        if count[0] == target and when == "during" and name == "_remove_tree":
            import shutil
            entries = sorted(os.listdir(a[0]))
            for e in entries[: len(entries) // 2]:
                p = os.path.join(a[0], e)
                shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
            os.kill(os.getpid(), signal.SIGKILL)
        r = fn(*a, **k)
        if count[0] == target and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return r
    return wrapped
for name in ("_rename", "_exchange", "_remove_tree"):
    setattr(w, name, hook(name, getattr(w, name)))
from edgeclip.cli import main
rc = main(sys.argv[3:])
sys.stderr.write(f"EVENTS {count[0]}\n")
sys.exit(rc)
"""


def run_killed(args: list[str], event: int | None = None, when: str = "before", delay: float | None = None,
               env: dict[str, str] | None = None, timeout: float = 600) -> tuple[int, str]:
    """Run ``edgeclip ARGS``; kill it at swap event ``event`` (``before``/``after``/``during``) or after
    ``delay`` seconds. Returns (exit status, stderr); -9 when killed."""
    if event is not None:
        cmd = [sys.executable, "-c", _KILL_AT, str(event), when, *args]
    else:
        cmd = [sys.executable, "-c", _KILL_AT, "0", "never", *args]
    with tempfile.TemporaryDirectory(prefix="edgeclip-killed-") as tmp:  # what a killed writer leaves goes too
        full_env = {**os.environ, "TMPDIR": tmp, **(env or {})}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
        if delay is not None:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def count_events(stderr: str) -> int:
    """Swap events a finished (not killed) run reported."""
    for line in stderr.splitlines():
        if line.startswith("EVENTS "):
            return int(line.split()[1])
    return 0


def outcome_after_kill(bundle: Path, marker: Callable[[Any], Any], old: Any, new: Any) -> tuple[str, str]:
    """Load the bundle after a kill: ("old"|"new", "") when intact, else ("lost"|"traceback", details)."""
    from edgeclip.bundle import load_bundle
    from edgeclip.errors import EdgeclipError

    try:
        b = load_bundle(bundle)
        value = marker(b)
    except EdgeclipError as exc:
        return "lost", str(exc)
    except Exception:
        return "traceback", traceback.format_exc()
    left = [p.name for p in bundle.parent.iterdir() if p.name.startswith(f".{bundle.name}.")
            and not p.name.endswith(".lock")]
    if left:
        return "lost", f"temporaries left after a load: {left}"
    if value == old:
        return "old", ""
    if value == new:
        return "new", ""
    return "lost", f"neither the old nor the new bundle: {value!r}"


def label_marker(b: Any) -> tuple[str, ...]:
    return tuple(b.label_names())


#: The writing quantize of the kill and concurrency campaigns (the base bundle already has a ``cpu`` one).
QUANTIZE = ["--calib", "noise", "--images", "8", "--target", "tensorrt"]


def quant_marker(b: Any) -> bool:
    """Whether the bundle holds the INT8 ``tensorrt`` encoder that ``QUANTIZE`` writes."""
    return "tensorrt" in b.info.quantization and b.info.files.get("image_encoder.int8.tensorrt.onnx") is not None


# ---------------------------------------------------------------------------------------------------------
# Concurrent writers
# ---------------------------------------------------------------------------------------------------------
def run_concurrent(commands: list[list[str]], timeout: float = 600) -> list[tuple[int, str]]:
    """Start every ``edgeclip`` command at once; (exit status, stderr) of each."""
    procs = [subprocess.Popen([sys.executable, "-m", "edgeclip.cli", *c], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        out.append((p.returncode, err))
    return out


def fresh_copy(base: Path, dst: Path) -> Path:
    """A private copy of ``base`` at ``dst`` (replacing what is there, lock and temporaries included)."""
    if dst.exists():
        shutil.rmtree(dst)
    for p in dst.parent.glob(f".{dst.name}.*"):
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    shutil.copytree(base, dst, symlinks=True)
    return dst


def now() -> float:
    return time.monotonic()

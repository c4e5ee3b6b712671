"""Rockchip NPUs: build a bundle's image encoder into an INT8 ``.rknn`` file with RKNN-Toolkit2, calibrated
on the bundle's synthetic images.

RKNN-Toolkit2 (the converter and its x86 simulator) cannot share a venv with edgeclip: it pins numpy, onnx,
torch and protobuf to old versions. It lives in its own venv, and edgeclip runs
``edgeclip/devices/rknn_convert.py`` there as a subprocess, passing only files: a JSON job, the ONNX file, a
list of calibration ``.npy`` files, and (optionally) images to run in the simulator. The converter's Python
is ``converter_python`` or the environment variable ``EDGECLIP_RKNN_PYTHON``; :data:`MAKE_ENV` gives the lines
that make one.

Calibration: the cached calibration set that ``edgeclip quantize`` made (``<bundle>/.work/calib-<key>.npy``,
normalised NCHW float32), or images given by the caller; both are turned back into raw 0-255 RGB (rounded to
whole levels, as the NPU will see them) and written one image per ``(1, 3, H, W)`` float32 file, with the
normalisation passed to the toolkit (``mean_values = mean * 255``, ``std_values = std * 255``) so it runs
inside the model. The ``.rknn`` input is uint8 NHWC RGB (``edgeclip.runtime.backends.rknn``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from ..bundle import Bundle, now_iso
from ..bundle.onnxinfo import read_onnx_info
from ..bundle.store import sha256_file
from ..errors import DeviceError, OptionError
from ..runtime.preprocess import to_pixels
from ..extras import release
from ..runtime.backends.rknn import lite_version
from ..options import Options, option

log = logging.getLogger("edgeclip.devices")

#: the environment variable naming the converter venv's Python
ENV_VAR = "EDGECLIP_RKNN_PYTHON"
TOOLKIT_PACKAGE = "rknn-toolkit2"
#: the toolkit release edgeclip's conversions and agreement figures were verified with (docs/rknn.md)
VERIFIED_TOOLKIT = "2.5.0"
#: the toolkit major version whose API the converter script is written for
TOOLKIT_MAJOR = 2
#: the converter script, run with the converter venv's Python
CONVERTER = Path(__file__).with_name("rknn_convert.py")
#: the lines that make a converter environment (Python 3.11 or 3.12; about 5.6 GB, a few minutes)
MAKE_ENV = (f"python3.11 -m venv ~/.venvs/rknn && ~/.venvs/rknn/bin/pip install {TOOLKIT_PACKAGE}=={VERIFIED_TOOLKIT}",
            f"export {ENV_VAR}=~/.venvs/rknn/bin/python")
#: the toolkit's quantization algorithms
ALGORITHMS = ("normal", "mmse", "kl_divergence")
#: the Rockchip chips with an RKNPU2 NPU that a build may target (the toolkit's RK35xx platforms)
TARGET_PLATFORMS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562")
#: how the .rknn file takes its input (recorded in the manifest)
INPUT_LAYOUT = {"layout": "NHWC", "dtype": "uint8", "color": "RGB", "normalisation": "inside the model"}
#: the calibration source whose cached set a build uses unless told otherwise
DEFAULT_CALIB = "text-guided"
#: the toolkit's automatic hybrid quantization keeps layers below this output cosine in float16
HYBRID_COS_THRESH = 0.999
#: quantization algorithm chosen by measured agreement with fp32 (scripts/rknn_agreement.py, docs/rknn.md)
DEFAULT_ALGORITHM = "mmse"


def _make_env_help() -> str:
    return "make one with: " + "; ".join(MAKE_ENV) + " (or pass `converter_python`)"


_GROUP = "Rockchip NPU builds (rk3588, rk3566, rk3568 profiles)"


@dataclass(frozen=True)
class RknnBuildOptions(Options):
    """What an RKNN build is asked for (``edgeclip build`` on a Rockchip profile)."""

    WHAT: ClassVar[str] = "RKNN build option"

    target_platform: str | None = option(None, "Rockchip chip to build for (default: the device profile's): "
                                               + ", ".join(TARGET_PLATFORMS), choices=TARGET_PLATFORMS, group=_GROUP)
    algorithm: str = option(DEFAULT_ALGORITHM, "quantization algorithm (mmse: the best agreement measured, "
                                               "docs/rknn.md)", choices=ALGORITHMS, group=_GROUP)
    hybrid: bool = option(False, "keep the layers the toolkit finds sensitive in float16 (its automatic hybrid "
                                 "quantization)", group=_GROUP)
    hybrid_cos_thresh: float = option(HYBRID_COS_THRESH, "with `hybrid`: layers whose output cosine against float "
                                                         "falls below this stay in float16", group=_GROUP)
    fixed_batch: int = option(1, "the fixed batch of the .rknn model (the NPU runs batches of exactly this size)",
                              group=_GROUP)
    calib: str = option(DEFAULT_CALIB, "calibration source whose set `edgeclip quantize` cached for the bundle "
                                       "(made now where it is missing and the export extra is installed)",
                        group=_GROUP)
    converter_python: str | None = option(None, f"Python of the RKNN-Toolkit2 venv (default: ${ENV_VAR})",
                                          metavar="PATH", group=_GROUP)
    timeout: float = option(4 * 3600.0, "seconds a conversion may take (mmse on ViT-B/32: about 1.5 h on one "
                                        "core)", group=_GROUP)

    def problems(self) -> list[str]:
        """Values out of range, each naming the option."""
        out = []
        if self.target_platform is not None and self.target_platform not in TARGET_PLATFORMS:
            out.append(f"target_platform={self.target_platform!r} is not an RKNN target; use one of "
                       f"{', '.join(TARGET_PLATFORMS)}")
        if self.algorithm not in ALGORITHMS:
            out.append(f"algorithm={self.algorithm!r} is not an RKNN quantization algorithm; use one of "
                       f"{', '.join(ALGORITHMS)}")
        if not 0.0 < self.hybrid_cos_thresh <= 1.0:
            out.append(f"hybrid_cos_thresh={self.hybrid_cos_thresh} must be in (0, 1]")
        if self.fixed_batch < 1:
            out.append(f"fixed_batch={self.fixed_batch} must be >= 1")
        if self.timeout <= 0:
            out.append(f"timeout={self.timeout} must be > 0 seconds")
        return out

    @property
    def platform(self) -> str:
        """The chip built for (``rk3588`` when neither the options nor a profile say)."""
        return self.target_platform or "rk3588"


# ---------------------------------------------------------------------------------------------------------
# the converter environment
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Converter:
    """A checked converter environment: its Python and the toolkit version there."""

    python: Path
    toolkit: str
    python_version: str
    numpy: str


def find_converter_python(converter_python: str | os.PathLike[str] | None = None) -> Path:
    """The converter venv's Python: ``converter_python``, else ``$EDGECLIP_RKNN_PYTHON``; DeviceError if neither
    names an executable file (the message gives the lines that make one)."""
    given, where = (converter_python, "`converter_python`") if converter_python else (os.environ.get(ENV_VAR), ENV_VAR)
    if not given:
        raise DeviceError(f"building .rknn files needs RKNN-Toolkit2 in its own venv, and none is set "
                          f"(`converter_python` or {ENV_VAR}); {_make_env_help()}")
    path = Path(given).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise DeviceError(f"{where}={str(given)!r} is not an executable Python; {_make_env_help()}")
    return path


def check_toolkit_version(version: str | None, python: Path) -> None:
    """DeviceError unless ``version`` is an RKNN-Toolkit2 this converter speaks (major 2)."""
    if not version:
        raise DeviceError(f"{python}: {TOOLKIT_PACKAGE} is not installed in that environment; {_make_env_help()}")
    if release(version)[:1] != (TOOLKIT_MAJOR,):
        raise DeviceError(f"{python}: {TOOLKIT_PACKAGE} {version} is installed; edgeclip converts with "
                          f"{TOOLKIT_MAJOR}.x (verified with {VERIFIED_TOOLKIT}); {_make_env_help()}")
    if version != VERIFIED_TOOLKIT:
        log.warning("%s %s: edgeclip's RKNN conversion was verified with %s", TOOLKIT_PACKAGE, version,
                    VERIFIED_TOOLKIT)


def _clean_env() -> dict[str, str]:
    """This process's environment without the variables that would make the converter's Python see edgeclip's."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _run(python: Path, args: list[str], timeout: float, cwd: Path | None = None) -> tuple[int, dict[str, Any], str]:
    """Run the converter script; (exit status, its JSON result line, the tail of stderr)."""
    try:
        done = subprocess.run([str(python), str(CONVERTER), *args], capture_output=True, text=True,
                              timeout=timeout, check=False, cwd=cwd, env=_clean_env())
    except subprocess.TimeoutExpired:
        raise DeviceError(f"the RKNN converter ({python}) did not finish within {timeout:.0f} s; pass a larger "
                          f"`timeout`") from None
    except OSError as exc:
        raise DeviceError(f"{python}: cannot run it ({exc}); {_make_env_help()}") from None
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {}
    return done.returncode, result if isinstance(result, dict) else {}, done.stderr[-2000:]


def probe_converter(converter_python: str | os.PathLike[str] | None = None, timeout: float = 180.0) -> Converter:
    """Find the converter environment and check it: ``rknn.api`` imports and the toolkit version is one edgeclip
    speaks. DeviceError (the CLI's exit status 2) with the lines that make one, if not."""
    python = find_converter_python(converter_python)
    code, result, err = _run(python, ["--probe"], timeout)
    if code != 0 or result.get("status") != "ok":
        why = result.get("error") or (err.strip().splitlines() or [f"exit status {code}"])[-1]
        raise DeviceError(f"{python} is not a working RKNN-Toolkit2 environment ({why}); {_make_env_help()}")
    check_toolkit_version(result.get("toolkit"), python)
    return Converter(python, str(result["toolkit"]), str(result.get("python", "")), str(result.get("numpy", "")))


# ---------------------------------------------------------------------------------------------------------
# calibration files
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """Calibration images (normalised float32 [N, 3, H, W], as ``edgeclip quantize`` caches them) and their origin."""

    images: np.ndarray
    source: str
    key: str | None = None
    cached: bool = True

    def record(self) -> dict[str, Any]:
        """The manifest's ``calibration`` entry (the algorithm is added by the build)."""
        rec: dict[str, Any] = {"source": self.source, "images": int(len(self.images))}
        if self.key:
            rec["key"] = self.key
        return rec


def cached_calibration(bundle: Bundle, source: str = DEFAULT_CALIB) -> Calibration:
    """The calibration set of ``source`` that ``edgeclip quantize`` cached for this bundle.

    Found through the manifest's quantization records (their calibration ``key``) in ``<bundle>/.work``;
    DeviceError saying which ``edgeclip quantize`` makes it when there is none.
    """
    size = tuple(int(s) for s in bundle.preprocess["size"])
    seen = []
    for target, rec in sorted((bundle.manifest.get("quantization") or {}).items()):
        calib = (rec.get("calibration") or {}) if isinstance(rec, dict) else {}
        if str(calib.get("source")) != source or not calib.get("key"):
            continue
        path = bundle.path / ".work" / f"calib-{calib['key']}.npy"
        seen.append(str(path))
        try:
            images = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            continue
        if images.dtype == np.float32 and images.ndim == 4 and images.shape[1:] == (3, *size):
            log.info("calibration: %d cached %s images from the %s quantization (%s)", len(images), source,
                     target, path.name)
            return Calibration(images, source, str(calib["key"]))
    where = f" (looked for {', '.join(seen)})" if seen else ""
    raise DeviceError(f"{bundle.path}: no cached {source} calibration set{where}; make it by quantizing the bundle "
                      f"with calib='{source}' (`edgeclip quantize`; it is kept in {bundle.path / '.work'}), or pass "
                      f"`calibration` images")


def raw_pixels(images: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """Normalised float32 [N, 3, H, W] -> raw RGB on the 0-255 scale, whole levels (float32 NCHW, as the
    converter's dataset files hold them): :func:`edgeclip.runtime.preprocess.to_pixels`, channels first."""
    return to_pixels(np.asarray(images, np.float32), mean, std).transpose(0, 3, 1, 2).astype(np.float32)


def write_dataset(raw: np.ndarray, folder: Path) -> Path:
    """One ``(1, 3, H, W)`` float32 .npy per image in ``folder`` and the list file naming them; returns the list."""
    if raw.ndim != 4 or raw.shape[1] != 3 or not len(raw):
        raise OptionError(f"calibration images must be a non-empty [N, 3, H, W] array, got shape {raw.shape}")
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, img in enumerate(raw):
        path = folder / f"calib-{i:04d}.npy"
        np.save(path, np.ascontiguousarray(img[None], dtype=np.float32), allow_pickle=False)
        names.append(str(path))
    listing = folder / "dataset.txt"
    listing.write_text("\n".join(names) + "\n", encoding="utf-8")
    return listing


# ---------------------------------------------------------------------------------------------------------
# the build
# ---------------------------------------------------------------------------------------------------------
def rknn_file_name(target_platform: str) -> str:
    """The bundle file name of the INT8 image encoder for ``target_platform``."""
    return f"image_encoder.int8.{target_platform}.rknn"


def make_job(onnx: Path, output: Path, dataset: Path, preprocess: dict[str, Any], opts: RknnBuildOptions,
             work: Path, eval_inputs: Path | None = None) -> dict[str, Any]:
    """The converter's job (see ``rknn_convert.py``) for one build."""
    info = read_onnx_info(onnx)
    job: dict[str, Any] = {
        "job_version": 1, "onnx": str(onnx), "output": str(output), "dataset": str(dataset),
        "target_platform": opts.platform, "input_name": info.inputs[0].name,
        "input_size": [int(s) for s in preprocess["size"]],
        "mean_values": [float(v) * 255.0 for v in preprocess["mean"]],
        "std_values": [float(v) * 255.0 for v in preprocess["std"]],
        "quantized_algorithm": opts.algorithm, "hybrid": opts.hybrid, "hybrid_cos_thresh": opts.hybrid_cos_thresh,
        "batch": opts.fixed_batch,
        "log": str(work / "toolkit.log"),
    }
    if eval_inputs is not None:
        job["eval_inputs"], job["eval_outputs"] = str(eval_inputs), str(work / "eval-outputs.npy")
    return job


@dataclass
class RknnBuild:
    """A finished build: the file, its manifest record, the converter's own result, simulator outputs if asked."""

    path: Path
    record: dict[str, Any]
    result: dict[str, Any]
    eval_outputs: np.ndarray | None = None


def run_job(converter: Converter, job: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    """Write ``job`` into ``work``, run the converter on it; its result, or DeviceError with its message."""
    path = work / "job.json"
    path.write_text(json.dumps(job, indent=2), encoding="utf-8")
    code, result, err = _run(converter.python, [str(path)], timeout, cwd=work)
    if code == 0 and result.get("status") == "ok":
        return result
    why = result.get("error") or (err.strip().splitlines() or [f"exit status {code}"])[-1]
    if code < 0:
        why = f"the converter was killed by signal {-code}"
    if code == 3:
        raise DeviceError(f"{converter.python}: rknn.api no longer imports ({why}); {_make_env_help()}")
    raise DeviceError(f"RKNN conversion of {Path(job['onnx']).name} for {job['target_platform']} failed: {why}")


def convert_bundle(bundle: Bundle, output: str | os.PathLike[str], opts: RknnBuildOptions | None = None,
                   calibration: Calibration | None = None, eval_pixels: np.ndarray | None = None,
                   converter: Converter | None = None,
                   step: Callable[[str], None] | None = None) -> RknnBuild:
    """Build the bundle's fp32 image encoder into an INT8 ``.rknn`` file at ``output``.

    ``calibration``: default the cached set of ``opts.calib`` (:func:`cached_calibration`); ``eval_pixels``:
    uint8 [N, H, W, 3] RGB images to run in the toolkit's simulator right after the build (their outputs come
    back in ``eval_outputs``); ``converter``: a probed environment (default: :func:`probe_converter`).
    Returns the file's manifest record (file name, sha256, platform, toolkit version, input layout,
    calibration source and algorithm) ready for ``manifest["rknn"]``; the bundle itself is not changed.
    """
    opts = opts or RknnBuildOptions()
    opts.check()
    say = step or (lambda m: log.info(m))
    converter = converter or probe_converter(opts.converter_python)
    calib = calibration or cached_calibration(bundle, opts.calib)
    pre = bundle.preprocess
    output = Path(output)
    onnx = bundle.encoder("image", "fp32")
    with tempfile.TemporaryDirectory(prefix="edgeclip-rknn-") as tmp:
        work = Path(tmp)
        dataset = write_dataset(raw_pixels(calib.images, pre["mean"], pre["std"]), work / "calib")
        eval_path = None
        if eval_pixels is not None:
            eval_path = work / "eval-inputs.npy"
            np.save(eval_path, np.ascontiguousarray(eval_pixels, dtype=np.uint8), allow_pickle=False)
        job = make_job(onnx, output.resolve(), dataset, pre, opts, work, eval_path)
        say(f"converting {onnx.name} for {opts.platform} with {TOOLKIT_PACKAGE} {converter.toolkit} "
            f"({opts.algorithm}{', hybrid' if opts.hybrid else ''}; {len(calib.images)} {calib.source} images)")
        result = run_job(converter, job, work, opts.timeout)
        outputs = np.load(job["eval_outputs"], allow_pickle=False) if eval_path is not None else None
    record = build_record(output, result, job, calib, opts, converter)
    return RknnBuild(output, record, result, outputs)


def build_record(output: Path, result: dict[str, Any], job: dict[str, Any], calib: Calibration,
                 opts: RknnBuildOptions, converter: Converter) -> dict[str, Any]:
    """The manifest record of a built ``.rknn`` file."""
    h, w = job["input_size"]
    record: dict[str, Any] = {
        "file": output.name, "sha256": sha256_file(output), "bytes": output.stat().st_size,
        "target_platform": opts.platform, "precision": "int8", "quantized_dtype": "w8a8",
        "toolkit": {"name": TOOLKIT_PACKAGE, "version": converter.toolkit},
        "input": {**INPUT_LAYOUT, "name": job["input_name"], "shape": [opts.fixed_batch, h, w, 3],
                  "mean_values": job["mean_values"], "std_values": job["std_values"]},
        "batch": opts.fixed_batch,
        "calibration": {**calib.record(), "algorithm": opts.algorithm, "hybrid": opts.hybrid},
        "seconds": result.get("seconds"), "created": now_iso(),
    }
    if result.get("layers"):
        record["layers"] = result["layers"]
    return record


# ---------------------------------------------------------------------------------------------------------
# in the bundle: a built file of role ``engine`` and format ``rknn``, one per chip
# ---------------------------------------------------------------------------------------------------------
#: the ``format`` of the manifest entry of a built ``.rknn`` file (role ``engine``)
FORMAT = "rknn"


def bundle_file(platform: str) -> str:
    """Where a bundle keeps the ``.rknn`` file for ``platform``: ``engines/image_encoder.<platform>.rknn``."""
    return f"engines/{rknn_file_name(platform)}"


def find_file(bundle: Bundle, precision: str = "int8", platform: str | None = None, root: str = "/",
              lite: Any = lite_version) -> Path:
    """The ``.rknn`` file this board runs (``edgeclip.tables.BACKENDS["rknn"].files``): the one built for its
    chip, on an NPU that is ready; DeviceError saying why not (no NPU, no driver, no runtime, no file).
    ``platform``, ``root`` (the filesystem read) and ``lite`` (the runtime's version) default to this board's."""
    from .engines import is_stale
    from .rknpu import npu_readiness

    ready = npu_readiness(root, lite)
    chip = platform or ready.soc
    if chip is None:
        raise DeviceError("this machine is not a Rockchip board with an NPU (no rk35xx in "
                          "/proc/device-tree/compatible)")
    if not ready.ready:
        raise DeviceError(f"the {chip} NPU is not usable: {ready.describe()}")
    stale = []
    for name, entry in bundle.files_with_role("engine").items():
        if entry.get("format") == FORMAT and entry.get("target_platform") == chip:
            if not is_stale(entry, bundle.manifest["files"]):
                return bundle.path / name
            stale.append(name)
    why = f" ({', '.join(stale)} was built from an image encoder the bundle no longer has)" if stale else ""
    raise DeviceError(f"{bundle.path}: no .rknn file for {chip}{why}; build one (`edgeclip build` with "
                      f"target_platform='{chip}', on a machine with RKNN-Toolkit2: docs/rknn.md)")


def build_in_bundle(bundle_path: str | os.PathLike[str], opts: RknnBuildOptions, calibration: Calibration | None = None,
                    step: Callable[[str], None] | None = None, converter: Converter | None = None) -> dict[str, Any]:
    """Build the ``.rknn`` file for ``opts.platform`` and write it into the bundle, atomically (a file of role
    ``engine``, format ``rknn``, with the build's record); returns the record."""
    from ..bundle import load_bundle, update_bundle

    bundle = load_bundle(bundle_path)
    name = bundle_file(opts.platform)
    with tempfile.TemporaryDirectory(prefix="edgeclip-rknn-out-") as tmp:
        built = convert_bundle(bundle, Path(tmp) / Path(name).name, opts, calibration=calibration, step=step,
                               converter=converter)
        record = {k: v for k, v in built.record.items() if k not in ("file", "sha256", "bytes")}
        with update_bundle(bundle) as draft:
            shutil.move(str(built.path), draft.new_file(name))
            source = bundle.encoder("image", "fp32").name  # a new fp32 encoder makes the file stale, as an engine
            draft.add_file(name, "engine", format=FORMAT, source=source,
                           source_sha256=bundle.manifest["files"][source]["sha256"], **record)
    return {"file": name, **record}


BUILD_OPTIONS = RknnBuildOptions


def build(bundle_path: str | os.PathLike[str], profile: Any, opts: RknnBuildOptions,
          step: Callable[[str], None] | None = None,
          calibrate: Callable[[], Calibration | None] | None = None) -> str:
    """Build the bundle's ``.rknn`` file for the profile's chip (or ``target_platform``) into the bundle; one
    line saying what was done. The converter environment is checked first; ``calibrate`` gives the calibration
    images (default: the bundle's cached set of ``opts.calib``)."""
    from ..bundle import load_bundle

    if opts.target_platform is None:
        opts = opts.replace(target_platform=profile.rknn_platform)
    converter = probe_converter(opts.converter_python)
    calibration = (calibrate() if calibrate else None) or cached_calibration(load_bundle(bundle_path), opts.calib)
    record = build_in_bundle(bundle_path, opts, calibration, step, converter)
    calib = record["calibration"]
    return (f"{Path(bundle_path) / record['file']}: INT8 .rknn for {record['target_platform']} (batch "
            f"{record['batch']}, {calib['algorithm']}{', hybrid' if calib.get('hybrid') else ''}) from "
            f"{calib.get('images')} {calib.get('source')} calibration images, {record['toolkit']['name']} "
            f"{record['toolkit']['version']}, in {record.get('seconds') or 0:.0f} s")


def readiness() -> dict[str, Any]:
    """Whether this machine's NPU can run ``.rknn`` files, and every reason it cannot (``edgeclip devices``)."""
    from .rknpu import npu_readiness

    ready = npu_readiness()
    return {"ready": ready.ready, "reasons": ready.reasons(), "summary": ready.describe()}

"""TensorRT engines for a bundle: keys, the engine cache in ``engines/``, building and finding.

An engine is valid for one ONNX file (sha256), one TensorRT version, one GPU compute capability (SM), one
precision and one batch range, so all five are in its key: ``engines/<sha16>-trt<ver>-sm<SM>-<prec>-b<min>-
<opt>-<max>.engine``. Engines are recorded in the manifest (role ``engine``) with those fields; one whose
ONNX changed is stale and removed on the next build, one for another TensorRT or GPU is kept for that
device and never loaded here. TensorRT is imported only inside the functions that build.
"""
from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..bundle import Bundle, load_bundle, now_iso, update_bundle, verify_files
from ..errors import BackendError, BundleError, DeviceError, EdgeclipError, OptionError
from ..options import Options, option
from ..runtime.backends.tensorrt import import_tensorrt
from ..tables import precisions
from .catalog import DeviceProfile

log = logging.getLogger("edgeclip.devices")

ENGINE_DIR = "engines"
ENGINE_PRECISIONS = precisions("engine")


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; ``key`` is its file name stem."""

    source: str
    source_sha256: str
    tensorrt: str
    sm: str
    precision: str
    batch: tuple[int, int, int]
    dla_core: int | None = None

    @property
    def key(self) -> str:
        lo, opt, hi = self.batch
        k = (f"{self.source_sha256[:16]}-trt{self.tensorrt}-sm{self.sm.replace('.', '')}-{self.precision}"
             f"-b{lo}-{opt}-{hi}")
        return k + (f"-dla{self.dla_core}" if self.dla_core is not None else "")

    @property
    def file(self) -> str:
        """The engine's path inside the bundle."""
        return f"{ENGINE_DIR}/{self.key}.engine"

    def fields(self) -> dict[str, Any]:
        """What the manifest records about the engine."""
        return {"format": "tensorrt-engine", "key": self.key, "source": self.source,
                "source_sha256": self.source_sha256, "tensorrt": self.tensorrt, "sm": self.sm,
                "precision": self.precision, "batch": list(self.batch), "dla_core": self.dla_core}


@dataclass
class BuildOptions:
    """Builder settings that do not change what the engine computes."""

    workspace_mb: int = 1024
    timing_cache: bytes | None = None


#: ``compile(onnx_path, key, options) -> (engine bytes, timing cache bytes or None)``.
Compiler = Callable[[Path, EngineKey, BuildOptions], "tuple[bytes, bytes | None]"]


@dataclass
class BuildResult:
    """The engine's path, whether it was built now (False: cache hit), and what happened."""

    path: Path
    key: EngineKey
    built: bool
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# Versions of this machine
# ---------------------------------------------------------------------------------------------------------


def tensorrt_version() -> str | None:
    """The installed TensorRT version (``"10.3.0"``), or None if ``tensorrt`` does not import."""
    try:
        return str(import_tensorrt(DeviceError).__version__)
    except DeviceError:
        return None


def _machine(tensorrt: str | None, sm: str | None, error: type[EdgeclipError]) -> tuple[str, str]:
    from .detect import cuda_compute_capability

    tensorrt = tensorrt or str(import_tensorrt(error).__version__)
    sm = sm or cuda_compute_capability()
    if not sm:
        raise error("no NVIDIA GPU is visible (CUDA and nvidia-smi report none); TensorRT engines are built and "
                    "run on the GPU they are for")
    return tensorrt, sm


# ---------------------------------------------------------------------------------------------------------
# Cache logic (no TensorRT needed)
# ---------------------------------------------------------------------------------------------------------
def engine_problem(entry: dict[str, Any], files: dict[str, dict[str, Any]], tensorrt: str, sm: str) -> str | None:
    """Why a recorded engine must not be loaded on this machine, or None if it may."""
    source = entry.get("source")
    current = files.get(source) if source else None
    if current is None:
        return f"its ONNX source {source!r} is no longer in the bundle"
    if entry.get("source_sha256") != current["sha256"]:
        return (f"stale: built from an older {source} (sha {str(entry.get('source_sha256'))[:12]}..., "
                f"now {current['sha256'][:12]}...)")
    if entry.get("tensorrt") != tensorrt:
        return f"built with TensorRT {entry.get('tensorrt')}, this machine has {tensorrt}"
    if entry.get("sm") != sm:
        return f"built for SM {entry.get('sm')}, this GPU is SM {sm}"
    return None


def is_stale(entry: dict[str, Any], files: dict[str, dict[str, Any]]) -> bool:
    """True if the engine's ONNX source changed or is gone (useless on every device)."""
    current = files.get(entry.get("source", ""))
    return current is None or entry.get("source_sha256") != current["sha256"]


def engine_source(bundle: Bundle, precision: str) -> str:
    """The ONNX file an engine of ``precision`` is built from (INT8: the TensorRT Q/DQ recipe)."""
    if precision not in ENGINE_PRECISIONS:
        raise DeviceError(f"unknown engine precision {precision!r}; use one of {', '.join(ENGINE_PRECISIONS)}")
    if precision == "int8":
        try:
            return bundle.encoder("image", "int8", "tensorrt").name
        except BundleError as exc:  # says to quantize with target='tensorrt'
            raise DeviceError(f"{exc}, or build FP16") from exc
    return bundle.encoder("image", "fp32").name


def engine_key(bundle: Bundle, precision: str, tensorrt: str, sm: str, batch: tuple[int, int, int],
               dla_core: int | None = None) -> EngineKey:
    """The key of the engine for this bundle, machine, precision and batch range."""
    lo, opt, hi = (int(b) for b in batch)
    if not 1 <= lo <= opt <= hi:
        raise DeviceError(f"batch range {lo},{opt},{hi} is invalid: need 1 <= min <= opt <= max")
    source = engine_source(bundle, precision)
    sha = bundle.manifest["files"][source]["sha256"]
    return EngineKey(source, sha, tensorrt, sm, precision, (lo, opt, hi), dla_core)


def cached_engine(bundle: Bundle, key: EngineKey) -> tuple[Path | None, str]:
    """(path, why) of a usable cached engine for ``key``; path None with the reason it is (re)built."""
    entry = bundle.manifest["files"].get(key.file)
    if entry is None:
        if (bundle.path / key.file).exists():
            return None, f"{key.file} exists but the manifest does not record it (foreign): rebuilt, never loaded"
        return None, f"no engine for key {key.key}"
    if entry.get("role") != "engine" or entry.get("key") != key.key:
        return None, f"{key.file} is recorded as something else; rebuilding"
    problem = engine_problem(entry, bundle.manifest["files"], key.tensorrt, key.sm)
    if problem:
        return None, f"{key.file}: {problem}; rebuilding"
    return bundle.path / key.file, f"cache hit: {key.file}"


def find_engine(bundle: Bundle, precision: str = "fp32", tensorrt: str | None = None, sm: str | None = None) -> Path:
    """The engine for this machine's TensorRT and GPU; raises BackendError saying to run ``edgeclip build``.

    ``precision`` is the runtime's: ``fp32`` (an FP16 or FP32 engine from the FP32 ONNX, exact match
    first), ``fp16`` or ``int8`` (an engine from the TensorRT INT8 ONNX).
    """
    tensorrt, sm = _machine(tensorrt, sm, BackendError)
    files = bundle.manifest["files"]
    engines = bundle.files_with_role("engine")
    usable, rejected = [], []
    for name, entry in engines.items():
        if entry.get("format", "tensorrt-engine") != "tensorrt-engine":
            continue  # a file built for another backend
        src = files.get(entry.get("source", ""), {})
        if (src.get("precision", "fp32") == "int8") != (precision == "int8"):
            continue
        problem = engine_problem(entry, files, tensorrt, sm)
        if problem:
            rejected.append(f"{name}: {problem}")
        else:
            usable.append((entry.get("precision") != precision, entry.get("precision") != "fp16",
                           -entry.get("batch", [0, 0, 0])[2], name))
    if usable:
        name = sorted(usable)[0][3]
        log.info("TensorRT engine %s (%s)", name, files[name].get("precision"))
        return bundle.path / name
    hint = "build one (`edgeclip build`" + (", precision='int8'" if precision == "int8" else "") + ")"
    raise BackendError(f"{bundle.path}: no TensorRT engine for this machine (TensorRT {tensorrt}, SM {sm}, "
                       f"{precision})" + (f"; not usable: {'; '.join(rejected)}" if rejected else "")
                       + f"; {hint}")


# ---------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------
def find_file(bundle: Bundle, precision: str = "fp32") -> Path:
    """The engine the TensorRT backend runs here (``edgeclip.tables.BACKENDS["tensorrt"].files``)."""
    return find_engine(bundle, precision)


def resolve_precision(bundle: Bundle, profile: DeviceProfile, precision: str | None) -> tuple[str, list[str]]:
    """The engine precision: the explicit one, else the profile's (INT8 falls back to FP16 if not in the bundle)."""
    if precision:
        engine_source(bundle, precision)  # an explicit INT8 without its ONNX is an error
        return precision, []
    if profile.precision == "int8":
        if profile.int8_target != "tensorrt":
            return "fp16", [f"profile {profile.name} uses the {profile.int8_target} INT8 recipe; building FP16"]
        try:
            engine_source(bundle, "int8")
            return "int8", []
        except DeviceError:
            return "fp16", [f"profile {profile.name} prefers INT8 but the bundle has no image_encoder.int8.tensorrt."
                            f"onnx (quantize it with target='tensorrt'); building FP16"]
    return profile.precision, []


def timing_cache_file(tensorrt: str, sm: str) -> str:
    """The timing cache's path inside the bundle (per TensorRT version and GPU; not in the manifest)."""
    return f"{ENGINE_DIR}/timing-trt{tensorrt}-sm{sm.replace('.', '')}.cache"


def load_for_build(bundle_path: str | Path) -> tuple[Bundle, list[str]]:
    """Load and verify the bundle, dropping engines whose files are missing or damaged (a cache)."""
    bundle = load_bundle(bundle_path, verify=False)
    damaged: list[str] = []
    verify_files(bundle, damaged)  # every other file is verified: a bad one raises, naming it
    if damaged:
        with update_bundle(bundle, verify=False) as draft:
            for name in damaged:
                draft.remove_file(name)
    bundle.verified = True
    return bundle, [f"dropped the missing or damaged engine {n}" for n in damaged]


def build_engine(bundle_path: str | Path, profile: DeviceProfile, precision: str | None = None,
                 batch: tuple[int, int, int] | None = None, dla_core: int | None = None, force: bool = False,
                 tensorrt: str | None = None, sm: str | None = None, compile: Compiler | None = None,
                 check: bool = True) -> BuildResult:
    """Build (or reuse) the engine for this machine and record it in the bundle, atomically."""
    if not profile.uses_gpu:
        raise DeviceError(f"profile {profile.name} is a CPU profile: TensorRT engines need an NVIDIA GPU; pass "
                          f"`device` with a GPU profile (desktop-gpu or a Jetson) on a machine that has that GPU")
    tensorrt, sm = _machine(tensorrt, sm, DeviceError)
    bundle, notes = load_for_build(bundle_path)
    if profile.sm and profile.sm != sm:
        notes.append(f"profile {profile.name} is for SM {profile.sm} but this GPU is SM {sm}; building for SM {sm}")
    precision, more = resolve_precision(bundle, profile, precision)
    notes += more
    batch = tuple(batch or (1, profile.opt_batch, profile.max_batch))
    dla_core = profile.dla_core if dla_core is None else dla_core
    if dla_core is not None:
        if precision == "fp32":
            raise DeviceError("DLA runs FP16 or INT8 only; drop `dla_core` or pick precision='fp16' or precision='int8'")
        if batch[0] != batch[2]:
            notes.append(f"DLA needs a fixed batch: using batch {batch[1]}")
            batch = (batch[1],) * 3
    key = engine_key(bundle, precision, tensorrt, sm, batch, dla_core)
    path, why = cached_engine(bundle, key)
    if path is not None and not force:
        return BuildResult(path, key, False, notes=notes + [why])
    notes.append("forced: rebuilding" if path is not None else why)
    onnx_path = bundle.path / key.source
    if check:
        _check_ready(onnx_path, tensorrt)
    cache_name = timing_cache_file(tensorrt, sm)
    cache_path = bundle.path / cache_name
    options = BuildOptions(profile.workspace_mb, cache_path.read_bytes() if cache_path.is_file() else None)
    start = time.perf_counter()
    engine, cache = (compile or build_serialized_engine)(onnx_path, key, options)
    seconds = time.perf_counter() - start
    pruned = []
    with update_bundle(bundle) as draft:
        for name, entry in list(draft.manifest["files"].items()):
            if entry.get("role") == "engine" and is_stale(entry, draft.manifest["files"]):
                draft.remove_file(name)
                pruned.append(name)
        draft.new_file(key.file).write_bytes(engine)
        draft.add_file(key.file, "engine", **key.fields(), device=profile.name, built=now_iso(),
                       build_seconds=round(seconds, 1))
        if cache:
            draft.new_file(cache_name).write_bytes(cache)
    return BuildResult(bundle.path / key.file, key, True, seconds, notes, pruned)


def _check_ready(onnx_path: Path, tensorrt: str) -> None:
    """Refuse to start a build that the readiness check says will fail (skipped without ``onnx``)."""
    if importlib.util.find_spec("onnx") is None:
        log.warning("onnx is not installed: skipping the readiness check (pip install onnx)")
        return
    from .readiness import check_model, errors, format_findings

    findings = check_model(onnx_path, tensorrt)
    if errors(findings):
        raise DeviceError(format_findings(findings, str(onnx_path)))


# ---------------------------------------------------------------------------------------------------------
# TensorRT (one function per job)
# ---------------------------------------------------------------------------------------------------------
def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def strongly_typed(trt: Any, precision: str) -> bool:
    """TensorRT 11: always; 9-10: for explicit Q/DQ INT8; 8.x: never (weak typing with builder flags)."""
    major = _major(trt)
    has_flag = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    return major >= 11 or (has_flag and major >= 9 and precision == "int8")


def prepare_onnx(onnx_path: Path, precision: str, typed: bool, workdir: Path) -> Path:
    """The ONNX to parse: for a strongly typed FP16/INT8 build, a copy whose GEMMs/convs compute in FP16."""
    if not typed or precision == "fp32":
        return onnx_path
    from .fp16 import mixed_fp16
    from .readiness import load_onnx

    model, converted = mixed_fp16(load_onnx(onnx_path))  # DeviceError naming onnx if it is not installed
    import onnx

    log.info("strongly typed %s build: %d MatMul/Gemm/Conv nodes set to FP16", precision, converted)
    out = workdir / onnx_path.name
    onnx.save_model(model, str(out), save_as_external_data=True, location=f"{out.name}.data")
    return out


def create_network(trt: Any, builder: Any, typed: bool) -> Any:
    """An explicit-batch network (the flag exists only before TensorRT 10), strongly typed if asked."""
    flags = 0
    if _major(trt) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return builder.create_network(flags)


def parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: Path) -> Any:
    """Parse the ONNX file into ``network``; the returned parser owns the weights until the build ends."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DeviceError(f"{onnx_path}: TensorRT's ONNX parser failed: {errs}; check it without TensorRT (`edgeclip build` with check)")
    return parser


def set_workspace(trt: Any, config: Any, megabytes: int) -> None:
    """Workspace memory limit (``set_memory_pool_limit`` from 8.4, ``max_workspace_size`` before)."""
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, megabytes << 20)
    else:
        config.max_workspace_size = megabytes << 20


def set_precision(trt: Any, config: Any, precision: str, typed: bool) -> None:
    """Builder flags of a weakly typed network (a strongly typed one takes its types from the ONNX)."""
    if typed or precision == "fp32":
        return
    if not hasattr(trt.BuilderFlag, "FP16"):
        raise DeviceError(f"TensorRT {trt.__version__} has no FP16 builder flag; build with a strongly typed network")
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":  # explicit quantization: the scales are the ONNX Q/DQ nodes, no calibrator
        config.set_flag(trt.BuilderFlag.INT8)


def add_batch_profile(builder: Any, network: Any, config: Any, batch: tuple[int, int, int]) -> None:
    """One optimization profile: every input's batch axis from ``batch`` (min, opt, max)."""
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        if dims[0] != -1 or any(d < 0 for d in dims[1:]):
            raise DeviceError(f"input {tensor.name!r} has shape {dims}: need a dynamic batch and fixed other axes")
        shapes = [(b, *dims[1:]) for b in batch]
        profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)


def use_dla(trt: Any, builder: Any, config: Any, core: int) -> None:
    """Run on DLA core ``core``, with layers DLA cannot run falling back to the GPU."""
    if not hasattr(trt, "DeviceType") or not hasattr(trt.DeviceType, "DLA"):
        raise DeviceError(f"TensorRT {trt.__version__} has no DLA support; drop `dla_core`")
    cores = int(getattr(builder, "num_DLA_cores", 0))
    if core >= cores:
        raise DeviceError(f"DLA core {core} requested but this device has {cores} DLA core(s)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def set_timing_cache(config: Any, data: bytes | None) -> None:
    """Start from a saved timing cache; an unreadable or foreign one is replaced by an empty one."""
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception as exc:  # TensorRT raises its own errors for a corrupt cache
            log.warning("ignoring an unreadable timing cache (%s)", exc)
    if cache is None or not config.set_timing_cache(cache, False):
        config.set_timing_cache(config.create_timing_cache(b""), False)


def build_serialized_engine(onnx_path: Path, key: EngineKey, options: BuildOptions) -> tuple[bytes, bytes | None]:
    """Build the engine with TensorRT's Python API; returns (engine, timing cache)."""
    trt = import_tensorrt(DeviceError)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    typed = strongly_typed(trt, key.precision)
    with tempfile.TemporaryDirectory(prefix="edgeclip-trt-") as tmp:
        source = prepare_onnx(onnx_path, key.precision, typed, Path(tmp))
        network = create_network(trt, builder, typed)
        parser = parse_onnx(trt, network, logger, source)
        config = builder.create_builder_config()
        set_workspace(trt, config, options.workspace_mb)
        set_precision(trt, config, key.precision, typed)
        add_batch_profile(builder, network, config, key.batch)
        if key.dla_core is not None:
            use_dla(trt, builder, config, key.dla_core)
        set_timing_cache(config, options.timing_cache)
        log.info("building a %s TensorRT %s engine for SM %s, batch %s (this takes minutes on a Jetson)",
                 key.precision, trt.__version__, key.sm, key.batch)
        serialized = builder.build_serialized_network(network, config)
        del parser
    if serialized is None:
        raise DeviceError(f"TensorRT could not build an engine from {onnx_path.name} (see TensorRT's messages above)")
    cache = config.get_timing_cache()
    return bytes(memoryview(serialized)), (bytes(memoryview(cache.serialize())) if cache is not None else None)


# ---------------------------------------------------------------------------------------------------------
# the build step of the TensorRT backend (``edgeclip build`` on a GPU profile)
# ---------------------------------------------------------------------------------------------------------
def _batch_range(text: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(v) for v in str(text).split(","))
    except ValueError:
        raise OptionError(f"batch {text!r}: give three integers MIN,OPT,MAX, e.g. 1,4,16") from None
    if not 1 <= lo <= opt <= hi:
        raise OptionError(f"batch {text!r}: need 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


_GROUP = "TensorRT engines (GPU and Jetson profiles)"


@dataclass(frozen=True)
class TensorRTBuildOptions(Options):
    """What a TensorRT engine build is asked for; None values are the device profile's."""

    WHAT: ClassVar[str] = "TensorRT build option"

    precision: str | None = option(None, "engine precision (default: the profile's; INT8 needs the tensorrt "
                                         "recipe: quantize with target='tensorrt')", choices=ENGINE_PRECISIONS,
                                   group=_GROUP)
    batch: tuple[int, int, int] | None = option(None, "batch range of the optimization profile (default: "
                                                      "1,<profile opt>,<profile max>)", metavar="MIN,OPT,MAX",
                                                parse=_batch_range, group=_GROUP)
    workspace_mb: int | None = option(None, "TensorRT workspace limit (default: the profile's)", group=_GROUP)
    dla_core: int | None = option(None, "build for this DLA core (Xavier/Orin), GPU fallback on", group=_GROUP)
    force: bool = option(False, "rebuild even if a valid cached engine exists", group=_GROUP)

    def __post_init__(self) -> None:
        if isinstance(self.batch, (str, list)):
            object.__setattr__(self, "batch", _batch_range(",".join(map(str, self.batch)))
                               if isinstance(self.batch, list) else _batch_range(self.batch))


BUILD_OPTIONS = TensorRTBuildOptions


def build(bundle_path: str | Path, profile: DeviceProfile, opts: TensorRTBuildOptions,
          step: Callable[[str], None] | None = None) -> str:
    """Build (or reuse) this GPU's engine in the bundle; one line saying what was done (notes go to ``step``)."""
    from ..extras import require

    require("tensorrt", ["onnx"], what="edgeclip build")
    if opts.workspace_mb is not None:
        profile = profile.with_changes(workspace_mb=opts.workspace_mb)
    result = build_engine(bundle_path, profile, precision=opts.precision, batch=opts.batch, dla_core=opts.dla_core,
                          force=opts.force)
    for note in result.notes + [f"removed stale engine {name}" for name in result.pruned]:
        (step or log.info)(note)
    how = f"built in {result.seconds:.1f} s" if result.built else "cached, reused"
    k = result.key
    return (f"{result.path}: {k.precision} TensorRT {k.tensorrt} engine for SM {k.sm}, batch {k.batch[0]}-{k.batch[2]} "
            f"(opt {k.batch[1]}) from {k.source} ({how})")

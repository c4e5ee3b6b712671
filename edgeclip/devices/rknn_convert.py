"""ONNX -> ``.rknn`` with Rockchip's RKNN-Toolkit2, run by edgeclip as a subprocess in the toolkit's own venv.

This file is a standalone script: it imports nothing of edgeclip (the standard library, numpy and
``rknn.api`` only), because RKNN-Toolkit2 cannot share a venv with edgeclip (it pins numpy, onnx, torch and
protobuf to old versions). edgeclip writes a job file and runs ``<toolkit python> rknn_convert.py JOB.json``.

    python rknn_convert.py --probe        # one JSON line: toolkit version, Python, numpy (exit 0), or why not
    python rknn_convert.py JOB.json       # convert; one JSON line on stdout: the result or the error

The job (JSON object; paths absolute): ``onnx``, ``output`` (the .rknn to write), ``target_platform``
(rk3588, rk3566, ...), ``input_name``, ``input_size`` ([H, W]), ``mean_values`` / ``std_values`` (three 0-255
values each: the model's normalisation, applied on the NPU), ``dataset`` (a text file listing ``.npy`` files,
each float32 NCHW (1, 3, H, W) raw 0-255 RGB), ``quantized_algorithm`` (normal, mmse, kl_divergence),
``hybrid`` (bool: the toolkit's automatic hybrid quantization keeps layers whose output cosine against float
falls below ``hybrid_cos_thresh`` in float16), ``batch`` (fixed batch of the model), and optionally
``eval_inputs`` (a .npy of uint8 NHWC RGB images [N, H, W, 3], run in the toolkit's simulator after the build)
with ``eval_outputs`` (where their outputs go, float32 .npy), and ``log`` (the toolkit's verbose log).

Toolkit messages go to the log (or stderr); stdout carries only the result line. Exit status: 0 converted;
2 a bad job (the message names the field); 3 the toolkit does not import; 4 the toolkit failed (the
message names the step and quotes its last error lines); 1 anything else.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator

# This script sits beside edgeclip's own ``rknn.py``: keep its folder off the path so ``rknn`` is the toolkit's.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

JOB_VERSION = 1
ALGORITHMS = ("normal", "mmse", "kl_divergence")
EXIT_OK, EXIT_ERROR, EXIT_JOB, EXIT_TOOLKIT_MISSING, EXIT_TOOLKIT_FAILED = 0, 1, 2, 3, 4
#: rows of the toolkit's "Network Layer Information Table" (verbose log): id, op type, data type, target
_LAYER_ROW = re.compile(r"^D RKNN: \[[^\]]*\]\s+(\d+)\s+(\S+)\s+(\S+)\s+(CPU|NPU|GPU)\s")
_TABLE_START = "Network Layer Information Table"
_IO_OPS = ("InputOperator", "OutputOperator")


class JobError(Exception):
    """A bad job file or field (exit 2)."""


class ToolkitError(Exception):
    """The toolkit failed at one step (exit 4)."""


def toolkit_version() -> str | None:
    """The installed rknn-toolkit2 version (package metadata), or None."""
    from importlib import metadata

    try:
        return metadata.version("rknn-toolkit2")
    except metadata.PackageNotFoundError:
        return None


def probe() -> dict[str, Any]:
    """What edgeclip checks before a conversion: the toolkit's version and that ``rknn.api`` imports."""
    import numpy

    info: dict[str, Any] = {"status": "ok", "toolkit": toolkit_version(), "python": sys.version.split()[0],
                            "numpy": numpy.__version__}
    with _quiet_stdout():
        from rknn.api import RKNN  # noqa: F401  (imports torch: a broken venv fails here)
    return info


def _need(job: dict[str, Any], key: str, kind: type) -> Any:
    if key not in job:
        raise JobError(f"job field {key!r} is missing")
    value = job[key]
    if not isinstance(value, kind):
        raise JobError(f"job field {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _file(job: dict[str, Any], key: str) -> Path:
    path = Path(_need(job, key, str))
    if not path.is_file():
        raise JobError(f"job field {key!r}: no such file {path}")
    return path


def _triple(job: dict[str, Any], key: str) -> list[float]:
    values = _need(job, key, list)
    if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise JobError(f"job field {key!r} must be 3 numbers (R, G, B on the 0-255 scale), got {values!r}")
    if key == "std_values" and min(values) <= 0:
        raise JobError(f"job field 'std_values' must be positive, got {values!r}")
    return [float(v) for v in values]


def read_job(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a job file; raises JobError naming the bad field."""
    try:
        job = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise JobError(f"cannot read the job file {path} ({exc})") from None
    if not isinstance(job, dict):
        raise JobError(f"the job file {path} must hold a JSON object")
    if job.get("job_version", JOB_VERSION) != JOB_VERSION:
        raise JobError(f"job_version {job.get('job_version')!r} is not {JOB_VERSION}: edgeclip and this script "
                       f"come from different versions")
    out: dict[str, Any] = {"onnx": _file(job, "onnx"), "dataset": _file(job, "dataset"),
                           "output": Path(_need(job, "output", str)), "input_name": _need(job, "input_name", str),
                           "target_platform": _need(job, "target_platform", str),
                           "mean_values": _triple(job, "mean_values"), "std_values": _triple(job, "std_values")}
    size = _need(job, "input_size", list)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise JobError(f"job field 'input_size' must be [height, width] of positive ints, got {size!r}")
    out["input_size"] = [int(s) for s in size]
    batch = job.get("batch", 1)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise JobError(f"job field 'batch' must be an int >= 1, got {batch!r}")
    out["batch"] = batch
    algo = job.get("quantized_algorithm", "normal")
    if algo not in ALGORITHMS:
        raise JobError(f"job field 'quantized_algorithm' is {algo!r}; use one of {', '.join(ALGORITHMS)}")
    out["quantized_algorithm"] = algo
    out["hybrid"] = bool(job.get("hybrid", False))
    thresh = job.get("hybrid_cos_thresh", 0.98)
    if not isinstance(thresh, (int, float)) or not 0.0 < float(thresh) <= 1.0:
        raise JobError(f"job field 'hybrid_cos_thresh' must be in (0, 1], got {thresh!r}")
    out["hybrid_cos_thresh"] = float(thresh)
    if ("eval_inputs" in job) != ("eval_outputs" in job):
        raise JobError("job fields 'eval_inputs' and 'eval_outputs' come together")
    if "eval_inputs" in job:
        out["eval_inputs"] = _file(job, "eval_inputs")
        out["eval_outputs"] = Path(_need(job, "eval_outputs", str))
    out["log"] = Path(job["log"]) if isinstance(job.get("log"), str) else None
    if not out["output"].parent.is_dir():
        raise JobError(f"job field 'output': the folder {out['output'].parent} does not exist")
    return out


def check_dataset(job: dict[str, Any]) -> int:
    """Check every calibration file the dataset list names; returns how many there are."""
    import numpy as np

    h, w = job["input_size"]
    names = [line.strip() for line in job["dataset"].read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise JobError(f"the dataset list {job['dataset']} names no files")
    for name in names:
        path = Path(name) if Path(name).is_absolute() else job["dataset"].parent / name
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise JobError(f"calibration file {path}: cannot read it as .npy ({exc})") from None
        if arr.shape != (1, 3, h, w) or arr.dtype != np.float32:
            raise JobError(f"calibration file {path}: shape {arr.shape} {arr.dtype}, expected (1, 3, {h}, {w}) "
                           f"float32 (raw 0-255 RGB, NCHW)")
    return len(names)


@contextlib.contextmanager
def _quiet_stdout(log: Path | None = None) -> Iterator[None]:
    """Send file descriptors 1 (and 2, with ``log``) to the log or stderr while the toolkit runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log else os.dup(2)
    try:
        os.dup2(target, 1)
        if log:
            os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


def peak_memory_mb() -> float | None:
    """This process's peak resident memory (``VmHWM``: unlike ``ru_maxrss`` it starts afresh at exec)."""
    try:
        text = Path("/proc/self/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return round(int(m.group(1)) / 1024.0, 1) if m else None


def layer_summary(log_text: str) -> dict[str, Any] | None:
    """Ops per target (NPU/CPU) from the last layer table of the toolkit's verbose log; None without one."""
    rows: list[tuple[str, str, str]] = []
    for line in log_text.splitlines():
        if _TABLE_START in line:
            rows = []
        m = _LAYER_ROW.match(line)
        if m:
            rows.append((m.group(2), m.group(3), m.group(4)))
    if not rows:
        return None
    by_target: dict[str, int] = {}
    by_dtype: dict[str, int] = {}
    cpu: dict[str, int] = {}
    for op, dtype, target in rows:
        if op in _IO_OPS:
            continue
        by_target[target] = by_target.get(target, 0) + 1
        by_dtype[dtype] = by_dtype.get(dtype, 0) + 1
        if target != "NPU":
            cpu[op] = cpu.get(op, 0) + 1
    return {"layers": sum(by_target.values()), "by_target": by_target, "by_dtype": by_dtype,
            "not_on_npu": cpu}


def _last_errors(log: Path | None, limit: int = 6) -> str:
    if log is None or not log.is_file():
        return ""
    text = log.read_text(encoding="utf-8", errors="replace")
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in text.splitlines()]
    picked = [ln for ln in lines if ln.startswith("E ") or "Error" in ln]
    return " | ".join(dict.fromkeys(picked[-limit:]))


def _step(rknn: Any, name: str, ret: Any, log: Path | None) -> None:
    if ret != 0:
        why = _last_errors(log)
        raise ToolkitError(f"rknn-toolkit2 {name} failed" + (f": {why}" if why else "")
                           + (f" (full log: {log})" if log else ""))


def convert(job: dict[str, Any]) -> dict[str, Any]:
    """Build the .rknn the job describes (and run the evaluation inputs in the simulator); the result record."""
    images = check_dataset(job)
    log = job["log"]
    start = time.monotonic()
    with _quiet_stdout(log):
        from rknn.api import RKNN

        rknn = RKNN(verbose=log is not None)
        try:
            h, w = job["input_size"]
            _step(rknn, "config", rknn.config(
                mean_values=[job["mean_values"]], std_values=[job["std_values"]],
                target_platform=job["target_platform"], quantized_algorithm=job["quantized_algorithm"],
                quantized_dtype="w8a8", auto_hybrid_cos_thresh=job["hybrid_cos_thresh"]), log)
            _step(rknn, "load_onnx", rknn.load_onnx(str(job["onnx"]), inputs=[job["input_name"]],
                                                    input_size_list=[[1, 3, h, w]]), log)
            batch = job["batch"] if job["batch"] > 1 else None
            _step(rknn, "build", rknn.build(do_quantization=True, dataset=str(job["dataset"]),
                                            rknn_batch_size=batch, auto_hybrid=job["hybrid"]), log)
            _step(rknn, "export_rknn", rknn.export_rknn(str(job["output"])), log)
            built = time.monotonic() - start
            evaluated = _evaluate(rknn, job, log) if "eval_inputs" in job else None
        except (JobError, ToolkitError):
            raise
        except Exception as exc:  # the toolkit raised instead of returning -1
            raise ToolkitError(f"rknn-toolkit2 raised {type(exc).__name__}: {exc}"
                               + (f" (full log: {log})" if log else "")) from exc
        finally:
            rknn.release()
    result: dict[str, Any] = {
        "status": "ok", "toolkit": toolkit_version(), "output": str(job["output"]),
        "bytes": job["output"].stat().st_size, "seconds": round(built, 2), "calibration_images": images,
        "target_platform": job["target_platform"], "quantized_algorithm": job["quantized_algorithm"],
        "hybrid": job["hybrid"], "batch": job["batch"],
        "peak_memory_mb": peak_memory_mb(),
    }
    if log is not None and log.is_file():
        result["layers"] = layer_summary(log.read_text(encoding="utf-8", errors="replace"))
    if evaluated is not None:
        result["eval"] = evaluated
    return result


def _evaluate(rknn: Any, job: dict[str, Any], log: Path | None) -> dict[str, Any]:
    """Run ``eval_inputs`` through the just-built model in the simulator, ``batch`` images at a time."""
    import numpy as np

    x = np.load(job["eval_inputs"], allow_pickle=False)
    h, w = job["input_size"]
    if x.ndim != 4 or x.shape[1:] != (h, w, 3) or x.dtype != np.uint8:
        raise JobError(f"eval_inputs {job['eval_inputs']}: shape {x.shape} {x.dtype}, expected [N, {h}, {w}, 3] uint8")
    _step(rknn, "init_runtime (simulator)", rknn.init_runtime(), log)
    start = time.monotonic()
    b = job["batch"]
    outs = []
    for i in range(0, len(x), b):
        chunk = x[i:i + b]
        n = len(chunk)
        if n < b:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, axis=0)])
        got = rknn.inference(inputs=[np.ascontiguousarray(chunk)], data_format="nhwc")
        if got is None:
            _step(rknn, "inference (simulator)", -1, log)
        outs.append(np.asarray(got[0], dtype=np.float32).reshape(b, -1)[:n])
    y = np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
    np.save(job["eval_outputs"], y, allow_pickle=False)
    return {"images": int(len(x)), "seconds": round(time.monotonic() - start, 2), "outputs": str(job["eval_outputs"])}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out = sys.stdout
    try:
        if args in (["--probe"], ["--version"]):
            result = probe()
        elif len(args) == 1 and not args[0].startswith("-"):
            result = convert(read_job(args[0]))
        else:
            raise JobError("usage: rknn_convert.py --probe | rknn_convert.py JOB.json")
        code = EXIT_OK
    except JobError as exc:
        result, code = {"status": "error", "kind": "job", "error": str(exc)}, EXIT_JOB
    except ImportError as exc:
        result = {"status": "error", "kind": "toolkit-missing", "toolkit": toolkit_version(),
                  "error": f"rknn.api does not import with {sys.executable} ({exc})"}
        code = EXIT_TOOLKIT_MISSING
    except ToolkitError as exc:
        result, code = {"status": "error", "kind": "toolkit", "error": str(exc)}, EXIT_TOOLKIT_FAILED
    except Exception as exc:  # noqa: BLE001  (reported as one line; the caller shows it)
        result, code = {"status": "error", "kind": "internal", "error": f"{type(exc).__name__}: {exc}"}, EXIT_ERROR
    out.write(json.dumps(result) + "\n")
    out.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())

"""TensorRT backend: a serialized engine run with pinned host buffers and one CUDA stream.

Same interface as ``OrtBackend`` (``name``, ``input_name``, ``output_name``, ``max_batch``, ``run``).
TensorRT >= 8.5 uses the named-tensor API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); older releases (Jetson Nano's 8.2) the bindings API. Device memory comes from
``cuda-python``. Imports of tensorrt and cuda happen here only, so machines without them never load them.
"""
from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendError, EdgeclipError
from ...bundle import Bundle
from ...options import LoadOptions

log = logging.getLogger("edgeclip.runtime")

INSTALL_HINT = ("on a Jetson install JetPack's python3-libnvinfer (`sudo apt install python3-libnvinfer`), "
                "elsewhere `pip install tensorrt`")


def import_tensorrt(error: type[EdgeclipError] = BackendError) -> Any:
    """The ``tensorrt`` module, or ``error`` saying how to install it."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise error(f"the tensorrt Python package is not importable ({exc}); {INSTALL_HINT}") from exc
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise BackendError("the TensorRT backend needs cuda-python for GPU memory: pip install cuda-python "
                               "(the version matching your CUDA, e.g. 'cuda-python<13' for CUDA 12)") from exc
    return cudart


def cuda_call(cudart: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, value...)`` result; raise BackendError naming the CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        _, text = cudart.cudaGetErrorString(err)
        raise BackendError(f"CUDA {what} failed: {text.decode() if isinstance(text, bytes) else text}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


#: the kind of file this backend runs (built on the device by ``edgeclip build``)
FILE_SUFFIX = ".engine"


def available(variant: str | None = None, installed: bool | None = None) -> tuple[bool, str]:
    """Whether tensorrt and cuda-python import here (``installed`` states it instead of trying)."""
    if installed is not None:
        return installed, "tensorrt and cuda-python import" if installed else "TensorRT is not installed"
    try:
        import_tensorrt(BackendError)
        import_cudart()
    except BackendError as exc:
        return False, str(exc)
    return True, "tensorrt and cuda-python import"


def open_encoder(path: Path, options: LoadOptions, precision: str = "fp32", variant: str | None = None,
                 bundle: Bundle | None = None) -> TensorRTBackend:
    """The engine file, deserialized for this GPU."""
    return TensorRTBackend(path)


class _Buffer:
    """A pinned host array and a device allocation of the same size."""

    def __init__(self, cudart: Any, dtype: np.dtype, count: int) -> None:
        self.cudart, self.nbytes = cudart, int(np.dtype(dtype).itemsize * count)
        self.host_ptr = cuda_call(cudart, cudart.cudaMallocHost(self.nbytes), "cudaMallocHost")
        raw = (ctypes.c_uint8 * self.nbytes).from_address(int(self.host_ptr))
        self.host = np.frombuffer(raw, dtype=dtype, count=count)
        self.device = cuda_call(cudart, cudart.cudaMalloc(self.nbytes), "cudaMalloc")

    def free(self) -> None:
        if self.device is not None:
            self.cudart.cudaFree(self.device)
            self.cudart.cudaFreeHost(self.host_ptr)
            self.device = None


class TensorRTBackend:
    """A TensorRT engine behind the backend interface; batches above the engine's max are split."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = "tensorrt"
        trt = import_tensorrt(BackendError)
        self.cudart = cudart = import_cudart()
        self._buffers: list[_Buffer] = []
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise BackendError(f"{self.path}: cannot read the engine ({exc})") from exc
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise BackendError(f"{self.path}: TensorRT {trt.__version__} could not load this engine (built with "
                               f"another TensorRT version or for another GPU?); run `edgeclip build` on this device")
        self.context = self.engine.create_execution_context()
        self.v3 = hasattr(self.context, "execute_async_v3") and hasattr(self.engine, "num_io_tensors")
        self.stream = cuda_call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.input_name, self.output_name, in_shape, out_shape, in_dtype, out_dtype = self._io(trt)
        self.max_batch = int(in_shape[0])
        self.in_dtype, self.out_dtype = in_dtype, out_dtype
        self._in = _Buffer(cudart, in_dtype, int(np.prod(in_shape)))
        self._out = _Buffer(cudart, out_dtype, int(np.prod(out_shape)))
        self._buffers = [self._in, self._out]
        if self.v3:
            self.context.set_tensor_address(self.input_name, int(self._in.device))
            self.context.set_tensor_address(self.output_name, int(self._out.device))
        log.info("loaded TensorRT engine %s (max batch %d, %s API)", self.path.name, self.max_batch,
                 "tensor" if self.v3 else "bindings")

    def _io(self, trt: Any) -> tuple[str, str, tuple, tuple, np.dtype, np.dtype]:
        """Names, max-batch shapes and dtypes of the one input and the first output."""
        e = self.engine
        if self.v3:
            names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
            inputs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            if len(inputs) != 1 or not outputs:
                raise BackendError(f"{self.path}: expected one input and an output, got {inputs} -> {outputs}")
            max_in = tuple(e.get_tensor_profile_shape(inputs[0], 0)[2])
            self.context.set_input_shape(inputs[0], max_in)
            out_shape = tuple(self.context.get_tensor_shape(outputs[0]))
            dtype = lambda n: np.dtype(trt.nptype(e.get_tensor_dtype(n)))  # noqa: E731
            return inputs[0], outputs[0], max_in, out_shape, dtype(inputs[0]), dtype(outputs[0])
        names = [e.get_binding_name(i) for i in range(e.num_bindings)]
        inputs = [i for i in range(e.num_bindings) if e.binding_is_input(i)]
        outputs = [i for i in range(e.num_bindings) if not e.binding_is_input(i)]
        if len(inputs) != 1 or not outputs:
            raise BackendError(f"{self.path}: expected one input and an output, got {names}")
        self._in_index, self._out_index, self._n_bindings = inputs[0], outputs[0], e.num_bindings
        max_in = tuple(e.get_profile_shape(0, inputs[0])[2])
        self.context.set_binding_shape(inputs[0], max_in)
        out_shape = tuple(self.context.get_binding_shape(outputs[0]))
        dtype = lambda i: np.dtype(trt.nptype(e.get_binding_dtype(i)))  # noqa: E731
        return names[inputs[0]], names[outputs[0]], max_in, out_shape, dtype(inputs[0]), dtype(outputs[0])

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run a batch of any size (split into engine-sized chunks); returns the first output."""
        x = np.asarray(x)
        if len(x) <= self.max_batch:
            return self._run_chunk(x)
        return np.concatenate([self._run_chunk(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)])

    def _run_chunk(self, x: np.ndarray) -> np.ndarray:
        cudart, stream = self.cudart, self.stream
        x = np.ascontiguousarray(x, dtype=self.in_dtype)
        if self.v3:
            if not self.context.set_input_shape(self.input_name, x.shape):
                raise BackendError(f"{self.path.name}: input shape {x.shape} is outside the engine's profile")
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        else:
            if not self.context.set_binding_shape(self._in_index, x.shape):
                raise BackendError(f"{self.path.name}: input shape {x.shape} is outside the engine's profile")
            out_shape = tuple(self.context.get_binding_shape(self._out_index))
        n_out = int(np.prod(out_shape))
        self._in.host[:x.size] = x.ravel()
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(cudart, cudart.cudaMemcpyAsync(self._in.device, self._in.host_ptr, x.nbytes, h2d, stream), "copy in")
        if self.v3:
            ok = self.context.execute_async_v3(stream_handle=int(stream))
        else:
            bindings = [0] * self._n_bindings
            bindings[self._in_index], bindings[self._out_index] = int(self._in.device), int(self._out.device)
            ok = self.context.execute_async_v2(bindings=bindings, stream_handle=int(stream))
        if not ok:
            raise BackendError(f"{self.path.name}: TensorRT execution failed (see TensorRT's messages above)")
        nbytes = n_out * self.out_dtype.itemsize
        cuda_call(cudart, cudart.cudaMemcpyAsync(self._out.host_ptr, self._out.device, nbytes, d2h, stream), "copy out")
        cuda_call(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return self._out.host[:n_out].reshape(out_shape).astype(np.float32, copy=True)

    def close(self) -> None:
        """Free the GPU buffers and the stream (also done when the backend is garbage-collected)."""
        for buf in self._buffers:
            buf.free()
        self._buffers = []
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: cuda may already be gone
            pass

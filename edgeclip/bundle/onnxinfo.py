"""What a bundle needs to know about an ONNX file, read without the ``onnx`` package.

A device installs no ``onnx``; this module reads the protobuf wire format directly (bounds-checked, from
a memory map, skipping weight bytes) for two things: the graph's inputs and outputs (names, element types,
shapes) and the locations of external-data tensors, so a bundle can be checked before any session is made.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import BundleError

#: ONNX TensorProto element types by number (those an encoder may use).
ELEM_TYPES = {1: "float", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "double",
              16: "bfloat16"}
_MAX_DEPTH = 16  # nested subgraphs (If/Loop bodies) deeper than this are refused


class _Malformed(Exception):
    pass


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type, and dims (an int, or a name for a symbolic dim)."""

    name: str
    elem_type: str
    shape: tuple[int | str, ...] | None  # None: rank unknown

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


@dataclass(frozen=True)
class OnnxInfo:
    """Graph inputs (initializers excluded), outputs, and the external-data locations it names."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_locations: tuple[str, ...]


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) for each field of a message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == 1:
            pos += 8
            yield number, wire, pos - 8, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed("length-delimited field runs past its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 5:
            pos += 4
            yield number, wire, pos - 4, pos
        else:
            raise _Malformed(f"unsupported wire type {wire}")
        if pos > end:
            raise _Malformed("field runs past its message")


def _text(buf: memoryview, start: int, end: int) -> str:
    try:
        return bytes(buf[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("a name is not UTF-8") from None


def _value_info(buf: memoryview, start: int, end: int) -> TensorSpec:
    name, elem, shape = "", "unknown", None
    for num, wire, a, b in _fields(buf, start, end):
        if num == 1 and wire == 2:
            name = _text(buf, a, b)
        elif num == 2 and wire == 2:  # TypeProto
            for tnum, twire, ta, tb in _fields(buf, a, b):
                if tnum != 1 or twire != 2:  # only tensor_type
                    continue
                for fnum, fwire, fa, fb in _fields(buf, ta, tb):
                    if fnum == 1 and fwire == 0:
                        elem = ELEM_TYPES.get(fa, f"type {fa}")
                    elif fnum == 2 and fwire == 2:  # TensorShapeProto
                        dims: list[int | str] = []
                        for dnum, dwire, da, db in _fields(buf, fa, fb):
                            if dnum != 1 or dwire != 2:
                                continue
                            dim: int | str = "?"
                            for vnum, vwire, va, vb in _fields(buf, da, db):
                                if vnum == 1 and vwire == 0:
                                    dim = va
                                elif vnum == 2 and vwire == 2:
                                    dim = _text(buf, va, vb) or "?"
                            dims.append(dim)
                        shape = tuple(dims)
    return TensorSpec(name, elem, shape)


def _tensor(buf: memoryview, start: int, end: int, out: list[str]) -> str:
    """A TensorProto's name; its external-data location (if any) is appended to ``out``."""
    name = ""
    for num, wire, a, b in _fields(buf, start, end):
        if num == 8 and wire == 2:
            name = _text(buf, a, b)
        elif num == 13 and wire == 2:  # StringStringEntryProto
            key = value = ""
            for enum_, ewire, ea, eb in _fields(buf, a, b):
                if enum_ == 1 and ewire == 2:
                    key = _text(buf, ea, eb)
                elif enum_ == 2 and ewire == 2:
                    value = _text(buf, ea, eb)
            if key == "location":
                out.append(value)
    return name


def _sparse(buf: memoryview, start: int, end: int, out: list[str]) -> None:
    for num, wire, a, b in _fields(buf, start, end):
        if num in (1, 2) and wire == 2:
            _tensor(buf, a, b, out)


def _node(buf: memoryview, start: int, end: int, out: list[str], depth: int) -> None:
    for num, wire, a, b in _fields(buf, start, end):
        if num != 5 or wire != 2:  # attributes
            continue
        for anum, awire, aa, ab in _fields(buf, a, b):
            if awire != 2:
                continue
            if anum in (5, 10):  # t, tensors
                _tensor(buf, aa, ab, out)
            elif anum in (6, 11):  # g, graphs
                _graph(buf, aa, ab, out, depth + 1)
            elif anum in (22, 23):  # sparse_tensor, sparse_tensors
                _sparse(buf, aa, ab, out)


def _graph(buf: memoryview, start: int, end: int, out: list[str], depth: int
           ) -> tuple[list[TensorSpec], list[TensorSpec], set[str]]:
    if depth > _MAX_DEPTH:
        raise _Malformed(f"subgraphs nested deeper than {_MAX_DEPTH}")
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    initializers: set[str] = set()
    for num, wire, a, b in _fields(buf, start, end):
        if wire != 2:
            continue
        if num == 1:
            _node(buf, a, b, out, depth)
        elif num == 5:
            initializers.add(_tensor(buf, a, b, out))
        elif num == 15:
            _sparse(buf, a, b, out)
        elif num == 11:
            inputs.append(_value_info(buf, a, b))
        elif num == 12:
            outputs.append(_value_info(buf, a, b))
    return inputs, outputs, initializers


def read_onnx_info(path: Path) -> OnnxInfo:
    """Inputs, outputs and external-data locations of an ONNX model file; BundleError if it is not one."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            if size == 0:
                raise BundleError(f"{path}: empty file where an ONNX model was expected; restore or re-export it")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                buf = memoryview(mm)
                try:
                    return _model(buf, size)
                finally:
                    buf.release()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the ONNX file ({exc.strerror or exc})") from None
    except (_Malformed, IndexError, ValueError) as exc:
        raise BundleError(f"{path}: not a valid ONNX model ({exc}); restore or re-export it") from None


def _model(buf: memoryview, size: int) -> OnnxInfo:
    out: list[str] = []
    graph = None
    for num, wire, a, b in _fields(buf, 0, size):
        if num == 7 and wire == 2:
            graph = _graph(buf, a, b, out, 0)
        elif num == 25 and wire == 2:  # FunctionProto: its nodes may hold constant tensors
            for fnum, fwire, fa, fb in _fields(buf, a, b):
                if fnum == 7 and fwire == 2:
                    _node(buf, fa, fb, out, 1)
    if graph is None:
        raise _Malformed("no graph")
    inputs, outputs, initializers = graph
    return OnnxInfo(tuple(i for i in inputs if i.name not in initializers), tuple(outputs), tuple(out))

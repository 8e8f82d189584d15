"""Protobuf's wire format, walked by hand and without onnx: the skeleton reader's field walk, and the
external-data locations a model file names (what `detect` and `heatmap`, which start without onnx, must
never write over).

A length-delimited field is skipped by its length, so a walk costs the number of fields, not the bytes of
the weights it passes."""
from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path
from typing import Iterator, Set, Tuple

from ..errors import InputError

MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_RAW_DATA = 7, 5, 9
LENGTH_DELIMITED = 2

# onnx.proto's field numbers on the way to a tensor's external-data entries.
_MODEL_FUNCTIONS, _FUNCTION_NODES = 25, 7
_GRAPH_NODES, _GRAPH_SPARSE_INITIALIZERS = 1, 15
_NODE_ATTRIBUTES = 5
_ATTRIBUTE_TENSOR, _ATTRIBUTE_GRAPH, _ATTRIBUTE_TENSORS, _ATTRIBUTE_GRAPHS = 5, 6, 10, 11
_ATTRIBUTE_SPARSE_TENSOR, _ATTRIBUTE_SPARSE_TENSORS = 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA = 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
#: Subgraphs deeper than this are not searched (no exporter nests If/Loop bodies this far).
_MAX_DEPTH = 64


def _varint(buf, pos: int, end: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise InputError("a protobuf varint runs past the end")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def fields(buf, start: int, end: int) -> Iterator[Tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, value end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        tag, value_start = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, value_end = _varint(buf, value_start, end)
        elif wire == 1:
            value_end = value_start + 8
        elif wire == 5:
            value_end = value_start + 4
        elif wire == LENGTH_DELIMITED:
            length, value_start = _varint(buf, value_start, end)
            value_end = value_start + length
        else:
            raise InputError(f"protobuf wire type {wire} in field {number}")
        if number == 0 or value_end > end:
            raise InputError("a protobuf field runs past the end")
        yield number, wire, pos, value_start, value_end
        pos = value_end


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_header(number: int, length: int) -> bytes:
    """Tag and length of a length-delimited field."""
    return _encode_varint(number << 3 | LENGTH_DELIMITED) + _encode_varint(length)


def external_locations(path: Path) -> Set[str]:
    """The external-data locations the model file at `path` names, wherever a tensor may be (initializers,
    sparse ones, Constant and other attributes, subgraphs, functions), as written: relative to its folder.
    What a damaged file names before the damage is returned; an empty or unreadable file names nothing."""
    found: Set[str] = set()
    try:  # never blocks: a FIFO or a device is not walked (the readers refuse it in their own words)
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        return found
    try:
        status = os.fstat(handle)
        if not stat.S_ISREG(status.st_mode) or status.st_size == 0:
            return found
        with mmap.mmap(handle, 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                _model(buf, len(buf), found)
            except InputError:
                pass
            finally:
                buf.release()
    except (OSError, ValueError):
        pass
    finally:
        os.close(handle)
    return found


def _children(buf, start: int, end: int) -> Iterator[Tuple[int, int, int]]:
    for number, wire, _, value_start, value_end in fields(buf, start, end):
        if wire == LENGTH_DELIMITED:
            yield number, value_start, value_end


def _model(buf, end: int, found: Set[str]) -> None:
    for number, start, stop in _children(buf, 0, end):
        if number == MODEL_GRAPH:
            _graph(buf, start, stop, found, 0)
        elif number == _MODEL_FUNCTIONS:
            for inner, node_start, node_stop in _children(buf, start, stop):
                if inner == _FUNCTION_NODES:
                    _node(buf, node_start, node_stop, found, 0)


def _graph(buf, start: int, end: int, found: Set[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    for number, inner_start, inner_end in _children(buf, start, end):
        if number == GRAPH_INITIALIZER:
            _tensor(buf, inner_start, inner_end, found)
        elif number == _GRAPH_SPARSE_INITIALIZERS:
            _sparse(buf, inner_start, inner_end, found)
        elif number == _GRAPH_NODES:
            _node(buf, inner_start, inner_end, found, depth)


def _node(buf, start: int, end: int, found: Set[str], depth: int) -> None:
    for number, attribute_start, attribute_end in _children(buf, start, end):
        if number != _NODE_ATTRIBUTES:
            continue
        for inner, inner_start, inner_end in _children(buf, attribute_start, attribute_end):
            if inner in (_ATTRIBUTE_TENSOR, _ATTRIBUTE_TENSORS):
                _tensor(buf, inner_start, inner_end, found)
            elif inner in (_ATTRIBUTE_SPARSE_TENSOR, _ATTRIBUTE_SPARSE_TENSORS):
                _sparse(buf, inner_start, inner_end, found)
            elif inner in (_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS):
                _graph(buf, inner_start, inner_end, found, depth + 1)


def _sparse(buf, start: int, end: int, found: Set[str]) -> None:
    for number, inner_start, inner_end in _children(buf, start, end):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES):
            _tensor(buf, inner_start, inner_end, found)


def _tensor(buf, start: int, end: int, found: Set[str]) -> None:
    for number, entry_start, entry_end in _children(buf, start, end):
        if number != _TENSOR_EXTERNAL_DATA:
            continue
        entry = {key: bytes(buf[a:b]) for key, a, b in _children(buf, entry_start, entry_end)}
        if entry.get(_ENTRY_KEY) == b"location" and _ENTRY_VALUE in entry:
            found.add(entry[_ENTRY_VALUE].decode("utf-8", "surrogateescape"))

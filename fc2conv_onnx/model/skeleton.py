"""Reading a model without its large initializers: a *skeleton* holds every node, attribute and small tensor;
each large initializer stays where it is - inside the .onnx file (its `raw_data` bytes) or in an
external-data file - marked as external data, with the `FileRange` its bytes are at.

Protobuf's wire format is walked by hand to find the `raw_data` bytes (ModelProto.graph = field 7,
GraphProto.initializer = 5, TensorProto.raw_data = 9): the python protobuf API cannot parse a message
while leaving one field's bytes on disk, and `onnx.load(path, load_external_data=False)` holds every
embedded byte (1098 MiB to read a 528 MiB model, against 57 MiB here; docs/scale.md).
tests/test_hostile.py proves this reader gives what `onnx.load` + `numpy_helper.to_array` give for every
storage form.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import InputError, printable
from .stored_files import StoredFile, external_file, model_file
from .wire import GRAPH_INITIALIZER, LENGTH_DELIMITED, MODEL_GRAPH, TENSOR_RAW_DATA, field_header, fields

#: Initializers with at least this many bytes of data are kept out of the skeleton (onnx's own default
#: threshold for external data).
DETACH_BYTES = 1024


@dataclass(frozen=True)
class FileRange:
    """`length` bytes at `offset` of `file`."""

    file: StoredFile
    offset: int
    length: int

    @property
    def path(self) -> Path:
        return self.file.path


# --- reading ---------------------------------------------------------------------------------------------

def read_skeleton(path: Path) -> Tuple[onnx.ModelProto, Dict[str, FileRange]]:
    """Parse the model at `path` without its large initializers' `raw_data`: each becomes an external-data
    reference in the skeleton, and its FileRange (inside `path`) is returned by tensor name."""
    with open(path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        if size == 0:
            raise InputError("the file is empty")
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                return _split(buf, size, model_file(path, stream.fileno()))
            finally:
                buf.release()


def _split(buf: memoryview, size: int, source: StoredFile) -> Tuple[onnx.ModelProto, Dict[str, FileRange]]:
    model_parts: List[bytes] = []
    graph_parts: List[bytes] = []
    tensors: List[bytes] = []
    ranges: Dict[str, FileRange] = {}
    for number, wire, start, value_start, value_end in fields(buf, 0, size):
        if number != MODEL_GRAPH or wire != LENGTH_DELIMITED:
            model_parts.append(bytes(buf[start:value_end]))
            continue
        for g_number, g_wire, g_start, g_value_start, g_value_end in fields(buf, value_start, value_end):
            if g_number != GRAPH_INITIALIZER or g_wire != LENGTH_DELIMITED:
                graph_parts.append(bytes(buf[g_start:g_value_end]))
                continue
            header: List[bytes] = []
            raw: Optional[Tuple[int, int]] = None
            for t_number, t_wire, t_start, t_value_start, t_value_end in fields(buf, g_value_start, g_value_end):
                if t_number == TENSOR_RAW_DATA and t_wire == LENGTH_DELIMITED \
                        and t_value_end - t_value_start >= DETACH_BYTES:
                    raw = (t_value_start, t_value_end - t_value_start)
                else:
                    header.append(bytes(buf[t_start:t_value_end]))
            tensor = TensorProto.FromString(b"".join(header))
            if raw is not None and tensor.data_location == TensorProto.EXTERNAL:
                raise InputError(f"initializer '{tensor.name}' is marked as external data but also holds its "
                                 "bytes (raw_data); onnx and onnxruntime would read the file, so it is ambiguous")
            if raw is not None:
                expected = tensor_nbytes(tensor)
                if expected is not None and expected != raw[1]:
                    raise InputError(f"initializer '{tensor.name}' holds {raw[1]} bytes, but its shape "
                                     f"{list(tensor.dims)} and type need {expected}")
                if tensor.name in ranges:
                    raise InputError(f"two initializers are named '{tensor.name}'")
                ranges[tensor.name] = FileRange(source, *raw)
                del tensor.external_data[:]
                tensor.data_location = TensorProto.EXTERNAL
                # Where the bytes are is `ranges`; the location only names the file, in text a protobuf string
                # takes (a file name of non-UTF-8 bytes escaped).
                tensor.external_data.add(key="location", value=source.path.name.encode(
                    "utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
                tensor.external_data.add(key="offset", value=str(raw[0]))
                tensor.external_data.add(key="length", value=str(raw[1]))
            tensors.append(tensor.SerializeToString())
    graph = b"".join(graph_parts + [field_header(GRAPH_INITIALIZER, len(t)) + t for t in tensors])
    skeleton = b"".join(model_parts) + field_header(MODEL_GRAPH, len(graph)) + graph
    return onnx.ModelProto.FromString(skeleton), ranges


def external_entries(tensor: TensorProto) -> Dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def external_range(tensor: TensorProto, folder: Path, label: str,
                   files: Optional[Dict[str, StoredFile]] = None) -> FileRange:
    """Where an external-data tensor's bytes are, refused with a one-line reason where onnx's opener refuses
    the location (`stored_files`), or if the file is too short for them. Nothing is read here. `files`
    caches the checked files by location."""
    entries = external_entries(tensor)
    location = entries.get("location", "")
    shown = location if len(location) <= 120 else location[:100] + f"... ({len(location)} characters)"
    where = f"input {label}: tensor '{tensor.name}' has external data at '{printable(shown)}'"
    if not location:
        raise InputError(f"input {label}: tensor '{tensor.name}' has external data with no location")
    files = {} if files is None else files
    if location not in files:
        files[location] = external_file(folder, location, where)
    stored = files[location]
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else stored.size - offset
    except ValueError:
        raise InputError(f"{where} with an offset or length that is not a number") from None
    expected = tensor_nbytes(tensor)
    if offset < 0 or length < 0:
        raise InputError(f"{where} with a negative offset or length ({offset}, {length})")
    if offset + length > stored.size:
        raise InputError(f"{where}: bytes {offset}..{offset + length} are past the end of the file")
    if expected is not None and length != expected:
        raise InputError(f"{where}: {length} bytes, but its shape and type need {expected}")
    return FileRange(stored, offset, length)


def nbytes_per_element(data_type: int) -> Optional[int]:
    """Bytes per element of an ONNX tensor type (None for strings and sub-byte types)."""
    if data_type in (TensorProto.STRING, TensorProto.UNDEFINED) or data_type in SUB_BYTE_TYPES:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize or None
    except Exception:
        return None


def tensor_nbytes(tensor: TensorProto) -> Optional[int]:
    """The raw byte size of a tensor's data from its dims and type (None for strings and sub-byte types).
    Python integers: absurd dims must not wrap around."""
    itemsize = nbytes_per_element(tensor.data_type)
    return None if itemsize is None else prod(int(d) for d in tensor.dims) * itemsize


SUB_BYTE_TYPES = {getattr(TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, name)}

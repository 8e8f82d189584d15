"""Where the bytes of large tensors live, so that a model is never held in memory more than once.

A model read from a file is a skeleton (`skeleton`): its large initializers stay where they are, as
`FileRange`s. `Weights` knows where their bytes are and reads them only when a stage asks for the values
(the heads read their FC weights, nothing reads the trunk's for the conversion), once, into a read-only
array that every later reader shares. Arrays made during the conversion (the new kernels) are *held*: kept
as numpy arrays and never copied into a TensorProto. Writing streams every tensor's bytes from its file or
array straight to the output, embedded in the .onnx file or as external data next to it. Validation runs
onnxruntime on the same arrays, fed as graph inputs (`Weights.as_inputs`).
"""
from __future__ import annotations

import io as _io
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto
from onnx_graphsurgeon.ir.tensor import LazyValues  # the type Constant.values takes

from ..errors import InputError
from .skeleton import DETACH_BYTES, FileRange, StoredFile, external_entries, external_range, tensor_nbytes
from .wire import GRAPH_INITIALIZER, MODEL_GRAPH, TENSOR_RAW_DATA, field_header

#: A model whose serialized size would reach this is written with external data: protobuf cannot read a
#: message of 2 GiB or more (a margin is kept for the skeleton).
EMBEDDED_LIMIT = (2 << 30) - (64 << 20)
#: Tensors of at least this many bytes start at a page boundary of the external-data file (onnxruntime
#: can memory-map them); smaller ones at 16 bytes.
PAGE_ALIGN_BYTES = 64 << 10
COPY_CHUNK = 16 << 20

#: The start of a held array's location (see `Weights.held`).
_HELD = "\0held:"


def _tensors_besides_initializers(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every TensorProto of the model but the main graph's initializers: sparse initializers, node
    attributes, and everything in subgraphs."""
    graphs = [(model.graph, False)]
    while graphs:
        graph, nested = graphs.pop()
        if nested:
            yield from graph.initializer
        yield from (sparse.values for sparse in graph.sparse_initializer)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    graphs.append((attribute.g, True))
                graphs.extend((subgraph, True) for subgraph in attribute.graphs)


class Weights:
    """The bytes of a skeleton's external tensors, by tensor name: file ranges (in the input file or its
    external-data files) and held arrays (made during the conversion)."""

    def __init__(self, ranges: Optional[Dict[str, FileRange]] = None, source: Optional[Path] = None) -> None:
        self.ranges: Dict[str, FileRange] = dict(ranges or {})
        #: Arrays made during the conversion, by the key in their tensor's external-data location (not by
        #: tensor name: a rewrite may reuse the name of a tensor it removed). The keys start with a NUL byte,
        #: which no file name holds and every input location is refused for (`external_range`), and carry
        #: this object's own random token: no input, and no other `Weights`, can name one.
        self.held: Dict[str, np.ndarray] = {}
        self._token = uuid.uuid4().hex
        #: Arrays read from files, by tensor name: each is read once, and every stage and onnxruntime session
        #: shares it (read-only: a new kernel is often a view of the weight it comes from).
        self._read: Dict[str, np.ndarray] = {}
        #: The bytes each of those was made from: what is written for it, so that the weights validated are
        #: the weights written even if a file changed since.
        self._read_bytes: Dict[str, np.ndarray] = {}
        #: id(array) -> its key in `held`, so that an array held again keeps its key.
        self._held_keys: Dict[int, str] = {}
        #: id(constant) -> (the constant, the lazy values given to it here).
        self._lazy: Dict[int, Tuple[gs.Constant, "_StoredValues"]] = {}
        #: The .onnx file the skeleton was read from, if any.
        self.source = source

    @classmethod
    def of_file(cls, model: onnx.ModelProto, path: Path, ranges: Dict[str, FileRange], label: str) -> "Weights":
        """The weights of a skeleton read from `path`: its detached ranges plus, after checking every
        location (before anything is read), its own external-data references."""
        weights = cls(ranges, Path(os.path.realpath(path)))
        files: Dict[str, StoredFile] = {}
        for tensor in model.graph.initializer:
            if tensor.data_location == TensorProto.EXTERNAL and tensor.name not in weights.ranges:
                weights.ranges[tensor.name] = external_range(tensor, path.parent, label, files)
        for tensor in _tensors_besides_initializers(model):
            if tensor.data_location == TensorProto.EXTERNAL:
                where = external_range(tensor, path.parent, label, files)
                raise InputError(f"input {label}: tensor '{tensor.name}' keeps its data in '{where.path.name}' but "
                                 "is not an initializer of the main graph; external data is read for those only")
        return weights

    def _held(self, tensor: TensorProto) -> Optional[np.ndarray]:
        if tensor.data_location != TensorProto.EXTERNAL:
            return None
        location = external_entries(tensor).get("location", "")
        return self.held.get(location) if location.startswith(_HELD) else None

    def knows(self, tensor: TensorProto) -> bool:
        return self._held(tensor) is not None or tensor.name in self.ranges

    def payload_size(self, tensor: TensorProto) -> int:
        held = self._held(tensor)
        return held.nbytes if held is not None else self.ranges[tensor.name].length

    def array(self, tensor: TensorProto) -> np.ndarray:
        """The values of `tensor` (a skeleton's initializer, external or not) as a numpy array."""
        held = self._held(tensor)
        if held is not None:
            return held
        if tensor.data_location != TensorProto.EXTERNAL:
            return onnx.numpy_helper.to_array(tensor)
        if tensor.name not in self.ranges:
            raise InputError(f"tensor '{tensor.name}' has external data this model was not read with; "
                             "give the model as a file path")
        if tensor.name not in self._read:
            array = self._read_file_range(tensor)
            array.flags.writeable = False
            self._read[tensor.name] = array
        return self._read[tensor.name]

    def _read_file_range(self, tensor: TensorProto) -> np.ndarray:
        where = self.ranges[tensor.name]
        raw = where.file.read(where.offset, where.length)
        raw.flags.writeable = False
        self._read_bytes[tensor.name] = raw
        if tensor_nbytes(tensor) == where.length:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
            return raw.view(dtype).reshape(tuple(tensor.dims)).astype(dtype.newbyteorder("="), copy=False)
        inline = TensorProto()
        inline.CopyFrom(tensor)
        del inline.external_data[:]
        inline.data_location = TensorProto.DEFAULT
        inline.raw_data = raw.tobytes()
        return onnx.numpy_helper.to_array(inline)

    def as_inputs(self, model: onnx.ModelProto) -> Tuple[onnx.ModelProto, Dict[str, np.ndarray]]:
        """`model` with each tensor whose bytes are here made a graph input, and the arrays to feed them:
        onnxruntime then runs it on these very arrays (inputs are not copied, initializers would be), with no
        serialized copy of the weights, and any number of sessions share them. The model stays small (no
        protobuf size limit) and refers to no file."""
        light, moved = _external_as_inputs(model, self.knows)
        return light, {tensor.name: self.array(tensor) for tensor in moved}

    def external_arrays(self, model: onnx.ModelProto) -> Dict[str, np.ndarray]:
        """Tensor name -> C-contiguous array, for each initializer of `model` whose bytes are here."""
        return {t.name: np.ascontiguousarray(self.array(t)) for t in model.graph.initializer
                if t.data_location == TensorProto.EXTERNAL and self.knows(t)}

    def _write_payload(self, tensor: TensorProto, out: BinaryIO) -> None:
        held = self._held(tensor)
        if held is not None:
            out.write(np.ascontiguousarray(held).data.cast("B"))
            return
        read = self._read_bytes.get(tensor.name)
        if read is not None:
            out.write(read.data)
            return
        where = self.ranges[tensor.name]
        for start in range(0, where.length, COPY_CHUNK):
            out.write(where.file.read(where.offset + start, min(COPY_CHUNK, where.length - start)).data)

    def check_unchanged(self) -> None:
        """Refuse (InputError) if a file the weights are read from changed since it was checked: what was read
        and validated must be what the file still holds."""
        for stored in {where.file for where in self.ranges.values()}:
            stored.unchanged()

    # --- graphsurgeon ------------------------------------------------------------------------------------

    def attach(self, graph: gs.Graph, model: onnx.ModelProto) -> None:
        """Make the constants of `graph` (imported from `model`) that are external tensors load their values
        from here when a stage reads them (graphsurgeon's public `values` setter takes lazy values)."""
        external = {t.name: t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL}
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and tensor.name in external:
                self._make_lazy(tensor, external[tensor.name])

    def hold(self, graph: gs.Graph) -> None:
        """Keep the graph's large in-memory constants (new kernels, values a stage has read) as held arrays,
        so that exporting the graph does not copy them into TensorProtos. Constants still lazy are left so
        (asking graphsurgeon for their values would load them)."""
        for tensor in graph.tensors().values():
            if not isinstance(tensor, gs.Constant) or self._is_lazy(tensor):
                continue
            values = tensor.values
            if not isinstance(values, np.ndarray) or values.nbytes < DETACH_BYTES or values.dtype.kind not in "biuf":
                continue
            key = self._held_keys.get(id(values))
            if key is None or self.held[key] is not values:
                key = f"{_HELD}{self._token}#{len(self.held)}"
                self.held[key] = values
                self._held_keys[id(values)] = key
            proto = TensorProto(name=tensor.name, dims=values.shape,
                                data_type=onnx.helper.np_dtype_to_tensor_dtype(values.dtype),
                                data_location=TensorProto.EXTERNAL)
            proto.external_data.add(key="location", value=key)
            self._make_lazy(tensor, proto)

    def _make_lazy(self, constant: gs.Constant, proto: TensorProto) -> None:
        lazy = _StoredValues(proto, self)
        constant.values = lazy
        self._lazy[id(constant)] = (constant, lazy)

    def _is_lazy(self, constant: gs.Constant) -> bool:
        """Whether `constant` still has the lazy values given here, not loaded since."""
        constant_and_lazy = self._lazy.get(id(constant))
        return constant_and_lazy is not None and constant_and_lazy[0] is constant and not constant_and_lazy[1].loaded

    # --- writing -----------------------------------------------------------------------------------------

    def _tensors(self, model: onnx.ModelProto) -> List[Tuple[TensorProto, bool]]:
        """The model's initializers, each with whether its bytes come from here (else it is self-contained)."""
        return [(t, t.data_location == TensorProto.EXTERNAL and self.knows(t)) for t in model.graph.initializer]

    def embedded_size(self, model: onnx.ModelProto) -> int:
        """About how many bytes `model` takes with every tensor embedded."""
        return model.ByteSize() + sum(self.payload_size(t) for t, ours in self._tensors(model) if ours)

    def write_embedded(self, model: onnx.ModelProto, out: BinaryIO) -> None:
        """Write `model` with every tensor's bytes inside it, streaming each from its file or array."""
        graph = onnx.GraphProto()
        graph.CopyFrom(model.graph)
        del graph.initializer[:]
        rest = onnx.ModelProto()
        rest.CopyFrom(model)
        rest.ClearField("graph")
        parts: List[Tuple[bytes, Optional[TensorProto]]] = []  # (header bytes, tensor or None) per initializer
        for tensor, ours in self._tensors(model):
            if not ours:
                body = tensor.SerializeToString()
                parts.append((field_header(GRAPH_INITIALIZER, len(body)) + body, None))
                continue
            header = TensorProto()
            header.CopyFrom(tensor)
            del header.external_data[:]
            header.ClearField("data_location")
            head = header.SerializeToString()
            size = self.payload_size(tensor)
            body_head = head + field_header(TENSOR_RAW_DATA, size)
            parts.append((field_header(GRAPH_INITIALIZER, len(body_head) + size) + body_head, tensor))
        graph_bytes = graph.SerializeToString()
        graph_length = len(graph_bytes) + sum(len(h) + (self.payload_size(t) if t is not None else 0)
                                              for h, t in parts)
        out.write(rest.SerializeToString())
        out.write(field_header(MODEL_GRAPH, graph_length))
        out.write(graph_bytes)
        for header_bytes, payload in parts:
            out.write(header_bytes)
            if payload is not None:
                self._write_payload(payload, out)

    def embedded_bytes(self, model: onnx.ModelProto) -> bytes:
        buffer = _io.BytesIO()
        self.write_embedded(model, buffer)
        return buffer.getvalue()

    def write_external(self, model: onnx.ModelProto, out: BinaryIO, data: BinaryIO, data_name: str) -> None:
        """Write the bytes of every tensor known here to `data` (named `data_name`, next to the model) and
        the model, whose tensors then refer to it, to `out`."""
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(model)
        offset = 0
        for tensor in skeleton.graph.initializer:
            if not (tensor.data_location == TensorProto.EXTERNAL and self.knows(tensor)):
                continue
            size = self.payload_size(tensor)
            align = 4096 if size >= PAGE_ALIGN_BYTES else 16
            padding = -offset % align
            data.write(b"\0" * padding)
            offset += padding
            self._write_payload(tensor, data)
            del tensor.external_data[:]
            tensor.external_data.add(key="location", value=data_name)
            tensor.external_data.add(key="offset", value=str(offset))
            tensor.external_data.add(key="length", value=str(size))
            offset += size
        out.write(skeleton.SerializeToString())

    def embedded(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A self-contained copy of `model` (every tensor's bytes inside), for API callers."""
        size = self.embedded_size(model)
        if size >= EMBEDDED_LIMIT:
            raise InputError(f"the converted model is {size / 2**30:.1f} GiB, too large for one protobuf "
                             "message; use convert_file, which writes its weights as external data")
        return onnx.ModelProto.FromString(self.embedded_bytes(model))

    def had_external_data_files(self) -> bool:
        """Whether the input kept weights in external-data files (not in the .onnx itself): its conversion is
        written so too, even when every tensor that came from them was rewritten."""
        return any(where.path != self.source for where in self.ranges.values())


def check_model(model: onnx.ModelProto, full_check: bool = False) -> None:
    """`onnx.checker.check_model` for a skeleton. The checker insists that each external tensor's location is
    a file; the skeleton's external tensors (whose bytes `Weights` reads and checks against their shapes) are
    checked as graph inputs of the same type and shape instead. Raises what the checker raises."""
    checked, _ = _external_as_inputs(model, lambda tensor: True)
    onnx.checker.check_model(checked, full_check=full_check)


def _external_as_inputs(model: onnx.ModelProto, which: Callable[[TensorProto], bool]
                        ) -> Tuple[onnx.ModelProto, List[TensorProto]]:
    """A copy of `model` whose external initializers picked by `which` are graph inputs of the same type and
    shape, and those initializers."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    initializers = list(light.graph.initializer)
    moved = [t for t in initializers if t.data_location == TensorProto.EXTERNAL and which(t)]
    if not moved:
        return light, []
    declared = {value.name for value in light.graph.input}
    light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in moved if t.name not in declared)
    names = {t.name for t in moved}
    del light.graph.initializer[:]
    light.graph.initializer.extend(t for t in initializers if t.name not in names)
    light.ir_version = max(light.ir_version, 4)  # graph inputs apart from initializers
    return light, moved


class _StoredValues(LazyValues):
    """Lazy constant values (graphsurgeon's `LazyValues`, a type its `Constant.values` takes) loaded from a
    `Weights`; exporting the graph keeps the skeleton tensor. Records whether it was loaded, so that
    `Weights.hold` can tell a constant that is still lazy without loading it."""

    def __init__(self, tensor: TensorProto, weights: Weights) -> None:
        super().__init__(tensor)
        self.weights = weights
        self.loaded = False

    def load(self) -> np.ndarray:
        self.loaded = True
        return self.weights.array(self.tensor)

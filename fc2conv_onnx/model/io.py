"""Reading models: refuse what is not a model (or not one this tool can read) with a one-line reason."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, BinaryIO, List, Optional, Union

import onnx
from google.protobuf.message import Message
from onnx import TensorProto

from ..errors import InputError, ResourceError, first_line, printable
from .skeleton import SUB_BYTE_TYPES, nbytes_per_element, read_skeleton, tensor_nbytes
from .stored_files import check_input_file
from .weights import Weights, check_model

#: What a model may be given as: a path, a ModelProto, its serialized bytes, a binary file object, the
#: `ONNXProgram` that `torch.onnx.export(..., dynamo=True)` returns, or an `onnx_ir` model.
ModelSource = Union[str, "os.PathLike[str]", onnx.ModelProto, bytes, bytearray, memoryview, BinaryIO, Any]


@dataclass
class Loaded:
    """A model as the pipeline reads it: the skeleton (large initializers as external-data references)
    and the `Weights` that know where their bytes are."""

    model: onnx.ModelProto
    weights: Weights


def read_model(source: ModelSource) -> Loaded:
    """Read the model at `source` (a path) without loading its large weights, or take `source` itself if it
    is already a ModelProto (never modified by the tool).

    External-data locations are checked before anything is read. The model must pass
    `onnx.checker.check_model`; anything else raises `InputError`.
    """
    if not isinstance(source, (str, os.PathLike)):
        source = as_model_proto(source)
    if isinstance(source, onnx.ModelProto):
        model, label = source, "the given model"
        weights = Weights()
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            raise InputError("the given model keeps weights in external data, which a ModelProto does not "
                             "carry; pass the model's file path instead")
    else:
        path = Path(source)
        label = f"'{printable(str(path))}'"
        check_input_file(path, label)
        try:
            model, ranges = read_skeleton(path)
        except InputError as error:
            raise InputError(f"input {label} is not an ONNX model, or is damaged ({error})") from None
        except OSError as error:
            if error.errno == errno.ENOMEM:  # mapping the file failed: the machine's limit, not the input's fault
                raise ResourceError(f"out of memory reading input {label}; nothing was written") from None
            raise InputError(f"input {label} cannot be read ({error.strerror or error})") from None
        except Exception as error:  # protobuf raises several types for damaged bytes
            raise InputError(f"input {label} is not a readable ONNX model ({first_line(error)})") from None
        weights = Weights.of_file(model, path, ranges, label)
    broken = _check_strings(model)
    if broken:
        raise InputError(f"input {label} is damaged: a string ({broken}) is not valid UTF-8")
    if not model.graph.node and not model.graph.output:
        raise InputError(f"input {label} is not an ONNX model (it holds no graph)")
    check_supported(model, label)
    model = with_negative_dims_symbolic(model, owned=weights.source is not None)
    try:
        check_model(model)
    except Exception as error:
        raise InputError(f"input {label} is not a valid ONNX model: {first_line(error)}") from None
    return Loaded(model, weights)


def as_model_proto(source: Any) -> onnx.ModelProto:
    """A ModelProto for any `ModelSource` that is not a path; torch and onnx_ir are not imported unless the
    source is one of theirs (recognised by its type's module)."""
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse(bytes(source), "the given bytes")
    module = type(source).__module__ or ""
    if module.startswith("torch.onnx") and hasattr(source, "model_proto"):  # torch's ONNXProgram
        return source.model_proto
    if module.split(".")[0] == "onnx_ir":
        import onnx_ir

        if isinstance(source, onnx_ir.Model):
            return onnx_ir.serde.serialize_model(source)
    if callable(getattr(source, "read", None)):
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise InputError("the given file object is open in text mode; open the model with 'rb'")
        return _parse(bytes(data), f"'{printable(str(getattr(source, 'name', 'the given file')))}'")
    raise InputError(f"cannot read a model from a {type(source).__name__}; give a path, an onnx.ModelProto, "
                     "bytes, a binary file object, torch's ONNXProgram or an onnx_ir model")


#: Protobuf parses no message of 2 GiB or more from memory (a file is read past it: `read_skeleton`).
MAX_MESSAGE_BYTES = (2 << 30) - 1


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    if not data:
        raise InputError(f"input {label} is empty")
    if len(data) > MAX_MESSAGE_BYTES:
        raise InputError(f"input {label} is {len(data) / 2**30:.2f} GiB; protobuf parses at most 2 GiB from memory "
                         "(standard input, bytes, a file object): give the model's file path, which is read "
                         "without that limit")
    try:
        return onnx.ModelProto.FromString(data)
    except Exception as error:  # protobuf raises several types for damaged bytes
        raise InputError(f"input {label} is not a readable ONNX model ({first_line(error)})") from None


def _check_strings(message) -> Optional[str]:
    """The name of the first string field that is not valid UTF-8, if any. (Python protobuf parses such a
    field silently and hands back bytes, which would break a later stage.)"""
    for field, value in message.ListFields():
        items = (value,) if isinstance(value, (Message, str, bytes)) else value
        if field.message_type is not None:
            for item in items:
                broken = _check_strings(item)
                if broken:
                    return broken
        elif field.type == field.TYPE_STRING and any(isinstance(item, bytes) for item in items):
            return field.full_name
    return None


#: The oldest default-domain opset handled: the ONNX model zoo's Caffe2-era models use 7 to 9.
MIN_OPSET = 7
#: Domains whose ops may appear in a model: standard ONNX, ONNX-ML, and onnxruntime's contrib ops (which
#: the validator can run). Ops of any other domain are refused, since nothing here can run or read them.
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def check_supported(model: onnx.ModelProto, label: str = "the model") -> None:
    """Refuse, with the reason, a model whose IR version, opset or ops this tool does not understand.
    Only what the graph uses counts: tf2onnx imports ai.onnx.ml in every file without using it."""
    if model.ir_version > onnx.IR_VERSION:
        raise InputError(f"input {label} has IR version {model.ir_version}, newer than the {onnx.IR_VERSION} "
                         f"that onnx {onnx.__version__} reads; upgrade onnx")
    check_input_sizes(model, label)
    _check_initializer_sizes(model, label)
    opsets = {o.domain or "": o.version for o in model.opset_import}
    functions = {(f.domain, f.name) for f in model.functions}
    nodes = list(model.graph.node)
    if any(node.domain in ("", "ai.onnx") for node in nodes):
        opset = opsets.get("", opsets.get("ai.onnx", 1))
        newest = onnx.defs.onnx_opset_version()
        if opset > newest:
            raise InputError(f"input {label} uses ONNX opset {opset}, newer than the {newest} that onnx "
                             f"{onnx.__version__} knows; upgrade onnx")
        if opset < MIN_OPSET:
            raise InputError(f"input {label} uses ONNX opset {opset}, older than {MIN_OPSET}; upgrade it first "
                             "(onnx.version_converter.convert_version(model, 13))")
    for node in nodes:
        if (node.domain, node.op_type) in functions:
            raise InputError(f"input {label}: node '{node.name}' calls the model-local function "
                             f"'{node.domain}::{node.op_type}'; inline it first (onnx.inliner.inline_local_functions)")
        if node.domain not in KNOWN_DOMAINS:
            raise InputError(f"input {label}: node '{node.name}' is op '{node.op_type}' of the custom domain "
                             f"'{node.domain}', which fc2conv-onnx cannot read or run")


#: The largest input one example may take at its declared (training) size: validation allocates a few.
MAX_INPUT_BYTES = 1 << 30


def _image_inputs(model: onnx.ModelProto) -> List[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [value for value in model.graph.input
            if value.name not in initializers and value.type.HasField("tensor_type")]


def with_negative_dims_symbolic(model: onnx.ModelProto, owned: bool) -> onnx.ModelProto:
    """`model` whose graph inputs name their negative dims symbolically: changed in place when it is
    `owned` (read from a file here), else a copy (the caller's model is never modified).

    paddle2onnx (and older exporters) write a dynamic dim as `dim_value: -1`, which onnxruntime runs as a
    free dim; the rest of the pipeline reads free dims as `dim_param`s. (A dim of 0 onnxruntime holds to 0.)
    """
    negative = [(value.name, axis) for value in _image_inputs(model)
                for axis, dim in enumerate(value.type.tensor_type.shape.dim)
                if dim.HasField("dim_value") and dim.dim_value < 0]
    if not negative:
        return model
    copy = model
    if not owned:
        copy = model.__class__()
        copy.CopyFrom(model)
    values = {value.name: value for value in copy.graph.input}
    for name, axis in negative:
        dim = values[name].type.tensor_type.shape.dim[axis]
        dim.Clear()
        dim.dim_param = f"{name}_dynamic_{axis}"
    return copy


def check_input_sizes(model: onnx.ModelProto, label: str) -> None:
    """Refuse graph inputs with a dim of 0, or that take more than MAX_INPUT_BYTES at their declared size."""
    for value in _image_inputs(model):
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
        if 0 in dims:
            raise InputError(f"input {label}: graph input '{value.name}' has shape {dims}; onnxruntime runs a dim "
                             "of 0 with nothing in it, which leaves nothing to convert or check")
        dims = [max(d, 1) for d in dims]  # -1: a free dim (paddle2onnx), as onnxruntime reads it
        itemsize = nbytes_per_element(value.type.tensor_type.elem_type) or 1
        size = prod(max(d, 1) for d in dims) * itemsize
        if size > MAX_INPUT_BYTES:
            raise InputError(f"input {label}: graph input '{value.name}' of shape {dims} takes {size / 2**30:.3g} GiB "
                             f"at its declared size (at most {MAX_INPUT_BYTES >> 30} GiB are handled)")


def _check_initializer_sizes(model: onnx.ModelProto, label: str) -> None:
    """Each initializer's data must fit its declared shape exactly (the checker lets longer data through, and
    the reader would then fail on it), live in one place, and be dense."""
    if model.graph.sparse_initializer:
        raise InputError(f"input {label} has sparse initializers ('{model.graph.sparse_initializer[0].values.name}'"
                         "), which fc2conv-onnx does not read; make them dense first")
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            if tensor.HasField("raw_data"):
                raise InputError(f"input {label}: initializer '{tensor.name}' is marked as external data but also "
                                 "holds its bytes (raw_data); onnx and onnxruntime would read the file: ambiguous")
            continue
        if tensor.HasField("raw_data"):
            expected, held = tensor_nbytes(tensor), len(tensor.raw_data)
            unit = "bytes"
        else:
            if tensor.data_type in SUB_BYTE_TYPES:
                continue  # packed two to an int32: checked by onnx on reading
            try:
                typed = onnx.helper.tensor_dtype_to_field(tensor.data_type)  # the field onnx.proto names
            except Exception:  # an unknown type: the checker's to refuse
                continue
            elements = prod(tensor.dims)
            expected = elements * 2 if tensor.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) \
                else elements
            held, unit = len(getattr(tensor, typed)), f"values ({typed})"
        if expected is not None and expected != held:
            raise InputError(f"input {label}: initializer '{tensor.name}' holds {held} {unit}, but its shape "
                             f"{list(tensor.dims)} and type need {expected}")

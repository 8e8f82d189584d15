"""Reading and writing models: refuse what is not a model with a one-line reason; write atomically."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Union

import onnx
from google.protobuf.message import Message

from .errors import InputError, first_line
from .weights import EMBEDDED_LIMIT, Weights, check_model, nbytes_per_element, read_skeleton, tensor_nbytes

ModelSource = Union[str, "os.PathLike[str]", onnx.ModelProto]


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
    if isinstance(source, onnx.ModelProto):
        model, label = source, "the given model"
        weights = Weights()
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            raise InputError("the given model keeps weights in external data, which a ModelProto does not "
                             "carry; pass the model's file path instead")
    else:
        path = Path(source)
        label = f"'{path}'"
        if not path.exists():
            raise InputError(f"input {label} does not exist")
        if path.is_dir():
            raise InputError(f"input {label} is a directory, not an ONNX file")
        try:
            model, ranges = read_skeleton(path)
        except InputError as error:
            raise InputError(f"input {label} is not an ONNX model, or is damaged ({error})") from None
        except Exception as error:  # protobuf raises several types for damaged bytes
            raise InputError(f"input {label} is not a readable ONNX model ({first_line(error)})") from None
        weights = Weights.of_file(model, path, ranges, label)
    broken = _check_strings(model)
    if broken:
        raise InputError(f"input {label} is damaged: a string ({broken}) is not valid UTF-8")
    if not model.graph.node and not model.graph.output:
        raise InputError(f"input {label} is not an ONNX model (it holds no graph)")
    check_supported(model, label)
    try:
        check_model(model)
    except Exception as error:
        raise InputError(f"input {label} is not a valid ONNX model: {first_line(error)}") from None
    return Loaded(model, weights)


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
    _check_input_sizes(model, label)
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


def _check_input_sizes(model: onnx.ModelProto, label: str) -> None:
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
        itemsize = nbytes_per_element(value.type.tensor_type.elem_type) or 1
        size = prod(max(d, 1) for d in dims) * itemsize
        if size > MAX_INPUT_BYTES:
            raise InputError(f"input {label}: graph input '{value.name}' of shape {dims} takes {size / 2**30:.3g} GiB "
                             f"at its declared size (at most {MAX_INPUT_BYTES >> 30} GiB are handled)")


def _check_initializer_sizes(model: onnx.ModelProto, label: str) -> None:
    """Embedded data must fit the declared shape exactly (the checker lets longer raw_data through)."""
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or not tensor.HasField("raw_data"):
            continue
        expected, held = tensor_nbytes(tensor), len(tensor.raw_data)
        if expected is not None and expected != held:
            raise InputError(f"input {label}: initializer '{tensor.name}' holds {held} bytes, but its shape "
                             f"{list(tensor.dims)} and type need {expected}")


def same_file(a: Union[str, "os.PathLike[str]"], b: Union[str, "os.PathLike[str]"]) -> bool:
    """True when two paths name the same file (also through links), whether or not b exists yet."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_output_path(output: Union[str, "os.PathLike[str]"]) -> Path:
    """Refuse, before any work is done, an output path that cannot be written."""
    path = Path(output)
    if path.is_dir():
        raise InputError(f"output '{path}' is a directory; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"output folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"output folder '{folder}' is not writable")
    return path


def data_file_name(output: Path) -> str:
    """The external-data file written next to `output`."""
    return output.name + ".data"


def save_model(model: onnx.ModelProto, weights: Weights, output: Union[str, "os.PathLike[str]"],
               external_data: Optional[bool] = None, overwrite_input: bool = False) -> Optional[Path]:
    """Write `model` to `output` atomically (temporary files in the same folder, then renames), streaming
    each weight from where it is; return the external-data file written, if any.

    `external_data`: None writes the weights next to the model (`OUT.data`) when the input had external
    data or the model would reach protobuf's 2 GiB limit, else inside it; True or False forces either.
    A file the weights are read from (the input model or its external data) is replaced only with
    `overwrite_input`. On any failure the previous files at `output`, if any, are untouched and no partial
    file remains.
    """
    path = check_output_path(output)
    folder = path.parent if str(path.parent) else Path(".")
    if external_data is None:
        external_data = weights.has_external_data_files(model) or weights.embedded_size(model) >= EMBEDDED_LIMIT
    elif not external_data and weights.embedded_size(model) >= EMBEDDED_LIMIT:
        raise InputError("the converted model is too large for one protobuf message (2 GiB); write it with "
                         "external data")
    data_path = folder / data_file_name(path) if external_data else None
    if not overwrite_input:
        for target in filter(None, (path, data_path)):
            if weights.reads_from(target):
                raise InputError(f"output '{target}' is a file the input model is read from; choose another "
                                 "output path or give --in-place")
    with _temporaries(folder) as temporary:
        model_temporary = temporary(path)
        with open(model_temporary, "wb") as out:
            if data_path is None:
                weights.write_embedded(model, out)
            else:
                data_temporary = temporary(data_path)
                with open(data_temporary, "wb") as data:
                    weights.write_external(model, out, data, data_path.name)
                    _sync(data)
            _sync(out)
        if data_path is not None:
            os.replace(data_temporary, data_path)
        os.replace(model_temporary, path)
    return data_path


def save_bytes(data: bytes, output: Union[str, "os.PathLike[str]"]) -> Path:
    """Write `data` to `output` atomically, like `save_model` (for pictures and other small files)."""
    path = check_output_path(output)
    with _temporaries(path.parent if str(path.parent) else Path(".")) as temporary:
        name = temporary(path)
        with open(name, "wb") as out:
            out.write(data)
            _sync(out)
        os.replace(name, path)
    return path


@contextmanager
def _temporaries(folder: Path) -> Iterator[Callable[[Path], str]]:
    """Hands out temporary files in `folder` (one per target); if the block fails, removes those that are
    left, so no partial file remains (renamed ones are already in place)."""
    made: List[str] = []
    try:
        yield lambda target: _temporary(folder, target, made)
    except BaseException:
        for name in made:
            if os.path.exists(name):
                os.unlink(name)
        raise


def _temporary(folder: Path, target: Path, made: List[str]) -> str:
    """A new empty file next to `target`, with the permissions a plainly created file would get (mkstemp
    makes it private)."""
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    made.append(name)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(handle, 0o666 & ~umask)
    os.close(handle)
    return name


def _sync(stream) -> None:
    stream.flush()
    os.fsync(stream.fileno())

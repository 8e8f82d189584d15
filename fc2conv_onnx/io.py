"""Reading and writing models: refuse what is not a model with a one-line reason; write atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import onnx

from .errors import InputError, first_line

ModelSource = Union[str, "os.PathLike[str]", onnx.ModelProto]


def load_model(source: ModelSource) -> onnx.ModelProto:
    """Return the model at `source` (a path), or `source` itself if it is already a ModelProto.

    The model must pass `onnx.checker.check_model`; anything else raises `InputError`.
    A ModelProto given by the caller is never modified by the tool.
    """
    if isinstance(source, onnx.ModelProto):
        model, label = source, "the given model"
    else:
        path = Path(source)
        label = f"'{path}'"
        if not path.exists():
            raise InputError(f"input {label} does not exist")
        if path.is_dir():
            raise InputError(f"input {label} is a directory, not an ONNX file")
        try:
            model = onnx.load(str(path))
        except Exception as error:  # protobuf raises several types for damaged bytes
            raise InputError(f"input {label} is not a readable ONNX model ({first_line(error)})") from None
    if not model.graph.node and not model.graph.output:
        raise InputError(f"input {label} is not an ONNX model (it holds no graph)")
    check_supported(model, label)
    try:
        onnx.checker.check_model(model)
    except Exception as error:
        raise InputError(f"input {label} is not a valid ONNX model: {first_line(error)}") from None
    return model


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


def save_model(model: onnx.ModelProto, output: Union[str, "os.PathLike[str]"]) -> None:
    """Write `model` to `output` atomically: a temporary file in the same folder, then a rename.

    On any failure the previous file at `output`, if any, is untouched and no partial file remains.
    """
    path = check_output_path(output)
    folder = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(model.SerializeToString())
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise

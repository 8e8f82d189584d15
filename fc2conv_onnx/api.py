"""The Python API: the pipeline load -> normalize -> heads/plan -> rewrite -> shapes -> validate -> save.

Every CLI flag is an argument here with the same name and meaning.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import onnx
import onnx_graphsurgeon as gs

from . import io, shapes, validate as validation
from .errors import InputError, NothingToConvertError, first_line
from .heads import find_heads
from .normalize import normalize
from .plan import Plan
from .report import Report
from .rewrite import rewrite

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Conversion:
    """A converted model and the report on how it was made."""

    model: onnx.ModelProto
    report: Report


def _label(source: io.ModelSource) -> Optional[str]:
    return None if isinstance(source, onnx.ModelProto) else str(source)


def _plan(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, gs.Graph, Plan]:
    """Shape-inferred copy of the model, its graph (normalized), and the conversion plan."""
    marker = shapes.converted_marker(model)
    if marker is not None:
        raise NothingToConvertError("the model was already converted by fc2conv-onnx (metadata "
                                    f"'{shapes.CONVERTED_KEY}'); nothing to do")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as error:
        raise InputError(f"shape inference fails on the model: {first_line(error)}") from None
    graph = normalize(gs.import_onnx(inferred))
    return inferred, graph, find_heads(graph)


def nothing_to_convert(plan: Plan, label: Optional[str]) -> NothingToConvertError:
    """The error for a plan with no head, naming the first reason (the report holds them all)."""
    report = Report(plan=plan, source=label, dry_run=True)
    if plan.skipped:
        first = plan.skipped[0]
        more = f" (and {len(plan.skipped) - 1} more; see `fc2conv-onnx inspect`)" if len(plan.skipped) > 1 else ""
        return NothingToConvertError(f"no fully connected head can be converted: {first.describe()}{more}",
                                     report=report)
    return NothingToConvertError("no fully connected head found (no Gemm or MatMul after a flattened "
                                 "feature map)", report=report)


def inspect(model: io.ModelSource) -> Report:
    """Dry run: the heads that would be converted and what each becomes, and what is skipped and why."""
    original = io.load_model(model)
    _, _, plan = _plan(original)
    return Report(plan=plan, source=_label(model), dry_run=True)


def convert_with_report(model: io.ModelSource, *, validate: bool = True, seed: int = 0) -> Conversion:
    """Convert every fully connected head of `model` (a path or a ModelProto, never modified).

    Args:
        model: the classifier, as a path to an .onnx file or an `onnx.ModelProto`.
        validate: prove the result with onnxruntime (at the training size, and window by window on a
            larger input) and raise `ValidationError` if it differs. On by default; turn it off only for
            models you validate otherwise.
        seed: seed of the random validation inputs.

    Returns:
        A `Conversion` with the converted model and its `Report`.

    Raises:
        InputError: the model is unreadable or invalid.
        NothingToConvertError: no head could be converted (the error's `report` says why), or the model
            was converted already.
        ValidationError: the converted model is not equivalent; nothing is returned.
    """
    original = io.load_model(model)
    inferred, graph, plan = _plan(original)
    if not plan.heads:
        raise nothing_to_convert(plan, _label(model))
    rewrite(graph, plan)
    converted = shapes.finish(graph, original, plan)
    checks = validation.validate(inferred, converted, plan, seed=seed) if validate else []
    report = Report(plan=plan, checks=tuple(checks), validated=validate, source=_label(model))
    return Conversion(model=converted, report=report)


def convert(model: io.ModelSource, *, validate: bool = True, seed: int = 0) -> onnx.ModelProto:
    """Convert `model` and return the fully convolutional ModelProto. See `convert_with_report`."""
    return convert_with_report(model, validate=validate, seed=seed).model


def convert_file(src: PathLike, dst: PathLike, *, validate: bool = True, seed: int = 0) -> Report:
    """Convert the model at `src` and write it to `dst` atomically; return the report.

    `dst` may not be `src`: the input is never overwritten. Nothing is written if any step fails.
    """
    if io.same_file(src, dst):
        raise InputError(f"output '{dst}' is the input file; choose another output path")
    io.check_output_path(dst)
    conversion = convert_with_report(src, validate=validate, seed=seed)
    io.save_model(conversion.model, dst)
    conversion.report.output = str(dst)
    return conversion.report

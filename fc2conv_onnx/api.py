"""The Python API: the pipeline load -> normalize -> heads/plan -> rewrite -> shapes -> validate -> save.

Every CLI flag is an argument here with the same name and meaning.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import onnx
import onnx_graphsurgeon as gs

from . import io, shapes, validate as validation
from .errors import InputError, NothingToConvertError, ValidationError, first_line
from .geometry import Box, Geometry, HeadGeometry, plan_geometry
from .heads import find_heads
from .normalize import normalize
from .plan import Plan
from .report import Report
from .rewrite import rewrite

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
#: `validate_size` / `size`: None for the default (a few strides larger than the training size), a
#: spatial size such as (512, 1024) or "512x1024", or "off" to skip the window check.
Size = Union[None, str, Sequence[int]]


@dataclass
class Conversion:
    """A converted model and the report on how it was made."""

    model: onnx.ModelProto
    report: Report


def _label(source: io.ModelSource) -> Optional[str]:
    return None if isinstance(source, onnx.ModelProto) else str(source)


def _plan(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, gs.Graph, Plan, Tuple[HeadGeometry, ...]]:
    """Shape-inferred copy of the model, its graph (normalized), the conversion plan and each head's geometry."""
    marker = shapes.converted_marker(model)
    if marker is not None:
        raise NothingToConvertError("the model was already converted by fc2conv-onnx (metadata "
                                    f"'{shapes.CONVERTED_KEY}'); nothing to do")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as error:
        raise InputError(f"shape inference fails on the model: {first_line(error)}") from None
    graph = normalize(gs.import_onnx(inferred))
    plan = find_heads(graph)
    return inferred, graph, plan, plan_geometry(graph, plan)


def _window_size(size: Size) -> Tuple[bool, Optional[Tuple[int, ...]]]:
    """(run the window check?, its spatial size or None for the default) from a `validate_size`/`size`."""
    if size is None:
        return True, None
    if isinstance(size, str):
        return (False, None) if size.strip().lower() == "off" else (True, validation.parse_size(size))
    return True, tuple(int(v) for v in size)


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
    _, _, plan, geometry = _plan(original)
    return Report(plan=plan, geometry=geometry, source=_label(model), dry_run=True)


def convert_with_report(model: io.ModelSource, *, validate: bool = True, validate_size: Size = None,
                        seed: int = 0, progress: Optional[validation.Progress] = None) -> Conversion:
    """Convert every fully connected head of `model` (a path or a ModelProto, never modified).

    Args:
        model: the classifier, as a path to an .onnx file or an `onnx.ModelProto`.
        validate: prove the result with onnxruntime and raise `ValidationError` if it differs. On by
            default; turn it off only for models you validate otherwise.
        validate_size: spatial input size of the window check, which compares every output location
            with the original head on that feature window: None for a few strides larger than the
            training size, e.g. (512, 1024) or "512x1024", or "off" for the training-size check only.
        seed: seed of the random validation inputs.
        progress: called as progress(done, total) while the window check runs the original head.

    Returns:
        A `Conversion` with the converted model and its `Report`.

    Raises:
        InputError: the model is unreadable or invalid, or `validate_size` is unusable.
        NothingToConvertError: no head could be converted (the error's `report` says why), or the model
            was converted already.
        ValidationError: the converted model is not equivalent; nothing is returned.
    """
    windows, size = _window_size(validate_size)
    original = io.load_model(model)
    inferred, graph, plan, geometry = _plan(original)
    if not plan.heads:
        raise nothing_to_convert(plan, _label(model))
    rewrite(graph, plan)
    converted = shapes.finish(graph, original, plan, geometry)
    checks = validation.validate(inferred, converted, plan, geometry, seed=seed, size=size, windows=windows,
                                 progress=progress) if validate else []
    report = Report(plan=plan, geometry=geometry, checks=tuple(checks), validated=validate, source=_label(model))
    return Conversion(model=converted, report=report)


def convert(model: io.ModelSource, *, validate: bool = True, validate_size: Size = None,
            seed: int = 0) -> onnx.ModelProto:
    """Convert `model` and return the fully convolutional ModelProto. See `convert_with_report`."""
    return convert_with_report(model, validate=validate, validate_size=validate_size, seed=seed).model


def convert_file(src: PathLike, dst: PathLike, *, validate: bool = True, validate_size: Size = None,
                 seed: int = 0, progress: Optional[validation.Progress] = None) -> Report:
    """Convert the model at `src` and write it to `dst` atomically; return the report.

    `dst` may not be `src`: the input is never overwritten. Nothing is written if any step fails.
    """
    if io.same_file(src, dst):
        raise InputError(f"output '{dst}' is the input file; choose another output path")
    io.check_output_path(dst)
    conversion = convert_with_report(src, validate=validate, validate_size=validate_size, seed=seed,
                                     progress=progress)
    io.save_model(conversion.model, dst)
    conversion.report.output = str(dst)
    return conversion.report


def validate_pair(original: io.ModelSource, converted: io.ModelSource, *, size: Size = None, seed: int = 0,
                  progress: Optional[validation.Progress] = None) -> Report:
    """Prove that `converted` (made by this tool earlier, or by hand) is the fully convolutional form of
    `original`: the same checks `convert` runs, on an existing pair. Raises `ValidationError` if not.

    The heads are found in `original`, which is cut at their source tensors; `converted` must have the
    same input and output names. `size` is as `validate_size` in `convert_with_report`.
    """
    windows, spatial = _window_size(size)
    reference = io.load_model(original)
    candidate = io.load_model(converted)
    inferred, _, plan, geometry = _plan(reference)
    if not plan.heads:
        raise nothing_to_convert(plan, _label(original))
    names = {o.name for o in candidate.graph.output}
    missing = [o for o in reference.graph.output if o.name not in names]
    if missing:
        raise ValidationError(f"the converted model has no output '{missing[0].name}' (outputs must keep "
                              "their names)")
    checks = validation.validate(inferred, candidate, plan, geometry, seed=seed, size=spatial, windows=windows,
                                 progress=progress)
    return Report(plan=plan, geometry=geometry, checks=tuple(checks), validated=True, source=_label(original),
                  compared_with=_label(converted))


def read_geometry(model: io.ModelSource) -> Dict[str, Geometry]:
    """The geometry stored in a converted model, by output name (outputs of unknown geometry are absent)."""
    marker = shapes.converted_marker(io.load_model(model))
    if marker is None:
        raise InputError("the model was not converted by fc2conv-onnx (no metadata "
                         f"'{shapes.CONVERTED_KEY}'); convert it first")
    return shapes.geometry_from_marker(marker)


def window_of(model: io.ModelSource, cell: Sequence[int], output: Optional[str] = None) -> Box:
    """The input box [start, stop) per axis whose classification output cell `cell` holds.

    `model` is a converted model (path or ModelProto); `output` picks the output when heads differ.
    """
    geometry = read_geometry(model)
    if not geometry:
        raise InputError("the converted model stores no geometry (see the conversion report for why)")
    if output is None:
        output = next(iter(geometry))
    if output not in geometry:
        raise InputError(f"no geometry for output '{output}'; known: {', '.join(geometry)}")
    return geometry[output].window_of(cell)

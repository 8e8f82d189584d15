"""The Python API: the pipeline load -> normalize -> heads/plan -> rewrite -> shapes -> validate -> save.

Every CLI flag is an argument here with the same name and meaning.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import onnx
import onnx_graphsurgeon as gs

from .apps.detecting import Detections, detect  # noqa: F401 (re-exported)
from .apps.heatmaps import Heatmap, heatmap  # noqa: F401 (re-exported)
from .errors import InputError, NothingToConvertError, ValidationError, first_line, printable
from .model import graphs, guard, io, marker, runtime, work, writes
from .model.detections import Detection, DetectionSettings  # noqa: F401 (re-exported)
from .model.geometry import Box, Geometry, HeadGeometry
from .model.layout import spatial_dims
from .model.scores import made_by_score_op
from .model.weights import Weights, check_model
from .plan import map_outputs, refusals, stride
from .plan.geometry_walk import default_validation_size, plan_geometry
from .plan.heads import find_heads
from .plan.options import OUTPUT_LAYOUTS, Options, Size, Stride  # noqa: F401 (re-exported)
from .plan.plan import KEEP_POOL, Plan
from .prove import detector_check, marker_check
from .prove import validate as validation
from .read import training_size, trunk_sizes
from .read.normalize import normalize
from .report import Report
from .rewrite import atrous, detector_graph, shapes
from .rewrite.rewrite import rewrite

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Conversion:
    """A converted model and the report on how it was made."""

    model: onnx.ModelProto
    report: Report


def _label(source: io.ModelSource) -> Optional[str]:
    """What the report calls the model: its path, or nothing for one given in memory."""
    return str(source) if isinstance(source, (str, os.PathLike)) else None


@dataclass
class _Planned:
    """A model read for conversion: its shape-inferred form, normalized graph, plan and geometry."""

    loaded: io.Loaded
    inferred: onnx.ModelProto
    graph: gs.Graph
    plan: Plan
    geometry: Tuple[HeadGeometry, ...]
    #: What the window check cuts: the normalized model when normalization changed the trunk's ops
    #: (exactly; the training-size check still compares with the original), else `inferred`.
    reference: onnx.ModelProto


def _plan(loaded: io.Loaded, options: Options) -> _Planned:
    model, weights = loaded.model, loaded.weights
    stored = marker.converted_marker(model)
    if stored is not None:
        raise NothingToConvertError("the model was already converted by fc2conv-onnx (metadata "
                                    f"'{marker.CONVERTED_KEY}'); nothing to do")
    probe: Tuple[int, ...] = ()
    if options.training_size is not None:
        model = training_size.with_training_size(model, options.training_size)
        io.check_input_sizes(model, "at --input-size")
    elif options.pooling == KEEP_POOL and training_size.has_dynamic_image_input(model):
        # A kept global pool needs no training size: read and validate at a common one (heads that do need
        # it are refused below).
        probe = (refusals.PROBE_SIZE,)
        model = training_size.with_training_size(model, probe)
    try:
        inferred = graphs.infer_shapes(model, data_prop=True)
    except Exception as error:
        raise InputError(f"shape inference fails on the model: {first_line(error)}") from None
    hidden = training_size.unfollowed_shapes(inferred)
    if hidden:  # sizes behind shape arithmetic: run the model once at its training size and read them
        inferred = training_size.with_observed_shapes(inferred, runtime.observed_shapes(inferred, hidden, weights))
    graph = graphs.import_graph(inferred)
    weights.attach(graph, inferred)
    notes = normalize(graph)
    plan = map_outputs.with_map_outputs(graph, find_heads(graph, options))
    refusals.require_training_size(graph, plan, probe)
    refusals.require_readable_layouts(graph, plan)
    map_outputs.refuse_rewrites(plan, options)
    if plan.heads:  # before anything runs: the trunk must follow the input's size
        notes += tuple(trunk_sizes.follow_input_size(
            graph, inferred, weights, [h.source for h in plan.heads],
            {name: plan.input_layout(name) for name in plan.trunk_inputs}))
    image = plan.trunk_inputs[0] if plan.trunk_inputs else None
    plan = replace(plan, normalized=notes, probe_size=tuple(
        spatial_dims(graph.tensors()[image].shape, plan.input_layout(image))) if probe and image else ())
    reference = inferred
    if notes:  # the trunk as rewritten; its tensors have the types and training-size shapes they had
        reference = training_size.with_known_value_info(
            graphs.infer_shapes(graphs.skeleton(graph, inferred, weights), data_prop=True), inferred)
    geometry = plan_geometry(graph, plan)
    try:
        refusals.refuse_dropped_modes(plan, geometry, options)
    except NothingToConvertError as error:
        error.report = Report(plan=plan, geometry=tuple(geometry), dry_run=True)
        raise
    if options.stride is not None and plan.heads:
        # The trunk's strides are lowered here, before the head's rewrite, so that the geometry is that of
        # the trunk as converted (and inspect shows it).
        plan = replace(plan, densify=stride.plan_densify(graph, plan, geometry, options.stride))
        atrous.apply(graph, plan.densify)
        geometry = plan_geometry(graph, plan)
    return _Planned(loaded, inferred, graph, plan, geometry, reference)


def nothing_to_convert(plan: Plan, label: Optional[str]) -> NothingToConvertError:
    """The error for a plan with no head (`refusals.nothing_to_convert`), carrying the dry-run report."""
    error = refusals.nothing_to_convert(plan)
    error.report = Report(plan=plan, source=label, dry_run=True)
    return error


def inspect(model: io.ModelSource, options: Optional[Options] = None, **overrides) -> Report:
    """Dry run: the heads that would be converted and what each becomes, and what is skipped and why.
    `options` (or keyword arguments named like its fields) as in `convert_with_report`."""
    planned = _plan(io.read_model(model), Options.of(options, overrides))
    return Report(plan=planned.plan, geometry=planned.geometry, source=_label(model), dry_run=True)


def convert_with_report(model: io.ModelSource, options: Optional[Options] = None, *,
                        progress: Optional[validation.Progress] = None, **overrides) -> Conversion:
    """Convert every head of `model` (a path or a ModelProto, never modified).

    Args:
        model: the classifier: a path to an .onnx file, an `onnx.ModelProto`, its bytes, a binary file
            object, torch's `ONNXProgram` or an `onnx_ir` model (`io.ModelSource`).
        options: an `Options` record; keyword arguments named like its fields (`pooling="none"`,
            `validate_size="512x1024"`, `input_size=224`, ...) override it. See `Options` for each one.
        progress: called as progress(done, total) while the window check runs the original head.

    Returns:
        A `Conversion` with the converted model and its `Report`.

    Raises:
        InputError: the model is unreadable or invalid, or an option is unusable.
        NothingToConvertError: no head could be converted (the error's `report` says why), a head cannot
            have the pooling mode asked for, or the model was converted already.
        ValidationError: the converted model is not equivalent; nothing is returned.
        ResourceError: memory ran out while validating (and, for `convert_file`, the disk while writing).
    """
    converted, weights, report = _convert(model, Options.of(options, overrides), progress)
    return Conversion(model=weights.embedded(converted), report=report)


def _convert(model: io.ModelSource, options: Options,
             progress: Optional[validation.Progress]) -> Tuple[onnx.ModelProto, Weights, Report]:
    """The converted skeleton, the weights it refers to, and the report (see `convert_with_report`)."""
    work.start()
    loaded = io.read_model(model)
    planned = _plan(loaded, options)
    plan, geometry = planned.plan, planned.geometry
    if not plan.heads:
        raise nothing_to_convert(plan, _label(model))
    rewrite(planned.graph, plan)
    loaded.weights.hold(planned.graph)
    converted = shapes.finish(planned.graph, loaded.model, plan, geometry, planned.inferred, loaded.weights)
    checks = validation.validate(planned.inferred, converted, plan, geometry, options, progress=progress,
                                 window_reference=planned.reference,
                                 weights=loaded.weights) if options.validate else []
    detector = ""
    if options.detector is not None:
        converted, proven, detector = _with_detector(converted, planned, options, loaded.weights)
        checks += proven
    report = Report(plan=plan, geometry=geometry, checks=tuple(checks), validated=options.validate,
                    source=_label(model), detector=detector)
    logger.info("the graph's work: %s", work.describe())
    return converted, loaded.weights, report


def _with_detector(converted: onnx.ModelProto, planned: _Planned, options: Options,
                   weights: Weights) -> Tuple[onnx.ModelProto, List[validation.OutputCheck], str]:
    """`converted` with the detector of `options.emit_detections` appended, (when validating) the proof that
    it gives `detect`'s detections at one scale, and the report's line on it."""
    settings = options.detector
    assert settings is not None
    parts = detector_graph.detector_parts(converted, planned.plan, planned.geometry, settings, options.transpose)
    settings = settings.with_output(parts.scores)
    result = detector_graph.with_detector(converted, parts, settings)
    try:
        check_model(result, full_check=True)
    except Exception as error:
        raise ValidationError(f"the model with its detector does not pass the ONNX checker: {first_line(error)}") \
            from None
    probabilities = made_by_score_op(result, parts.scores)
    line = "detector appended: " + detector_graph.describe(parts, settings, probabilities)
    if not options.validate:
        return result, [], line
    shape = runtime.training_shapes(planned.inferred)[parts.geometry.input]
    training = spatial_dims(shape, parts.geometry.layout)
    size = options.window_size or default_validation_size(parts.geometry, training)
    return result, detector_check.check_detector(result, parts, settings, tuple(size), shape, probabilities, weights,
                                                 seed=options.seed), line


def convert(model: io.ModelSource, options: Optional[Options] = None, **overrides) -> onnx.ModelProto:
    """Convert `model` and return the fully convolutional ModelProto. See `convert_with_report`."""
    return convert_with_report(model, options, **overrides).model


def convert_file(src: PathLike, dst: PathLike, options: Optional[Options] = None, *,
                 progress: Optional[validation.Progress] = None, in_place: bool = False,
                 external_data: Optional[bool] = None, **overrides) -> Report:
    """Convert the model at `src` and write it to `dst` atomically; return the report.

    The weights are streamed from `src` to `dst`, never all in memory at once. `dst` may be `src` only with
    `in_place=True`, and is never one of its external-data files (`guard.check_outputs`). `external_data`:
    None (default) writes the weights next to `dst` (`dst` + ".<12 hex digits>.data", a new name for every
    write) when `src` has external data or the model reaches 2 GiB, else inside `dst`; True or False forces
    either. Nothing is written if any step fails, and a previous `dst` is kept; the data files of a `dst`
    it replaces are left in place (docs/guarantees.md).
    `options` and keyword overrides as in `convert_with_report`.
    """
    options = Options.of(options, overrides)
    reads = guard.Reads()
    if isinstance(src, (str, os.PathLike)):
        reads.add_model("the model", src)
    guard.check_outputs([("output", dst)], reads, may_replace=src if in_place else None,
                        replace_hint=", or give --in-place (API: in_place=True) to replace the model")
    if external_data:
        writes.check_data_file_name(dst)
    converted, weights, report = _convert(src, options, progress)
    data = writes.save_model(converted, weights, dst, external_data=external_data)
    report.output = str(dst)
    report.external_data = None if data is None else str(data)
    return report


def validate_pair(original: io.ModelSource, converted: io.ModelSource, options: Optional[Options] = None, *,
                  progress: Optional[validation.Progress] = None, size: Optional[Size] = None,
                  **overrides) -> Report:
    """Prove that `converted` (made by this tool earlier, or by hand) is the fully convolutional form of
    `original`: the same checks `convert` runs, on an existing pair. Raises `ValidationError` if not.

    The heads are found in `original`, which is cut at their source tensors; `converted` must have the
    same input and output names. `size` is the window check's size (`Options.validate_size`); the other
    options (`output_layout`: the layout `converted` gives its outputs in, `pooling`, `stride`,
    `input_size`, `seed`) are as in `convert_with_report`.
    """
    if size is not None:
        overrides["validate_size"] = size
    options = Options.of(options, overrides)
    reference = io.read_model(original)
    candidate = io.read_model(converted)
    planned = _plan(reference, options)
    plan, geometry = planned.plan, planned.geometry
    if not plan.heads:
        raise nothing_to_convert(plan, _label(original))
    if isinstance(original, (str, os.PathLike)) and isinstance(converted, (str, os.PathLike)) and \
            guard.Reads().add("ORIGINAL", original).what(converted, guard.identity_of(converted)):
        raise InputError(f"ORIGINAL and CONVERTED are the same file ('{printable(os.fspath(converted))}'); give the "
                         "converted model as CONVERTED")
    names = {o.name for o in candidate.model.graph.output}
    missing = [o for o in reference.model.graph.output if o.name not in names]
    if missing:
        raise ValidationError(f"the converted model has no output '{missing[0].name}' (outputs must keep "
                              "their names)")
    marker_check.check_marker(candidate.model, plan, geometry)
    checks = validation.validate(planned.inferred, candidate.model, plan, geometry, options, progress=progress,
                                 window_reference=planned.reference, weights=reference.weights,
                                 converted_weights=candidate.weights)
    return Report(plan=plan, geometry=geometry, checks=tuple(checks), validated=True, source=_label(original),
                  compared_with=_label(converted))


def read_geometry(model: io.ModelSource) -> Dict[str, Geometry]:
    """The geometry stored in a converted model, by output name (outputs of unknown geometry are absent)."""
    stored = marker.converted_marker(io.read_model(model).model)
    if stored is None:
        raise InputError("the model was not converted by fc2conv-onnx (no metadata "
                         f"'{marker.CONVERTED_KEY}'); convert it first")
    return marker.geometry_from_marker(stored)


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

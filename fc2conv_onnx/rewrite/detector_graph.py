"""`convert --emit-detections`: nodes appended to a converted model that turn its map into detections at the
input's scale, so that the written model is a detector in any ONNX runtime. They take the steps of
`detections` in the same order (see there): scores, classes, cell boxes from the geometry, regression,
clipping to the input, then onnx's NonMaxSuppression (per class; it keeps scores strictly above the
threshold and drops boxes whose IoU with a kept one is above `iou`), best first.

Outputs, besides the maps (kept, so that `heatmap` and `detect` still read the model):
    boxes [M, 4] float (x1, y1, x2, y2 in the input's pixels), scores [M], classes [M] int64, and
    batch_index [M] int64 (which image of the batch).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InputError
from ..model.detections import AUTO, SIGMOID, SOFTMAX, UNION, DetectionSettings, refuse_softmax_of_one
from ..model.geometry import Geometry, HeadGeometry
from ..model.layout import CHANNELS_LAST
from ..model.scores import score_output
from ..plan.plan import Plan

#: The outputs the detector adds, in order; PREFIXED when one of these names is taken in the model (PyTorch
#: classifiers often name their output "scores").
DETECTION_OUTPUTS = ("boxes", "scores", "classes", "batch_index")
PREFIXED = tuple(f"detection_{name}" for name in DETECTION_OUTPUTS)
#: The metadata key that records the detector's settings.
DETECTOR_KEY = "fc2conv_onnx.detector"
#: Names of the added nodes and tensors start with this.
PREFIX = "fc2conv_detect/"
#: The oldest opset whose ops it needs (NonMaxSuppression, Range, GatherND, Equal on floats).
MIN_OPSET = 11
#: A box's corners with x and y swapped (a model that reads pictures as W x H).
SWAPPED = (1, 0, 3, 2)
#: onnx's NonMaxSuppression returns nothing for max_output_boxes_per_class 0: ask for all of them.
ALL_BOXES = 2 ** 31 - 1


@dataclass
class _Nodes:
    """The nodes and constants being added; each `op` returns its output's name."""

    opset: int
    nodes: List[onnx.NodeProto] = field(default_factory=list)
    constants: List[onnx.TensorProto] = field(default_factory=list)

    def name(self, base: str) -> str:
        return f"{PREFIX}{base}_{len(self.nodes) + len(self.constants)}"

    def const(self, values, dtype=None) -> str:
        name = self.name("const")
        self.constants.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], output: Optional[str] = None, **attributes) -> str:
        output = output or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=self.name(op_type), **attributes))
        return output

    def reduce_max(self, x: str, axis: int) -> str:
        if self.opset >= 18:  # axes became an input
            return self.op("ReduceMax", [x, self.const([axis], np.int64)], keepdims=1)
        return self.op("ReduceMax", [x], axes=[axis], keepdims=1)

    def channels_first_flat(self, x: str, layout: str, dtype: int) -> str:
        """A [N, K, h, w] (or [N, h, w, K]) map as [N, K, h*w] float32 (NonMaxSuppression takes no other)."""
        if layout == CHANNELS_LAST:
            x = self.op("Transpose", [x], perm=[0, 3, 1, 2])
        flat = self.op("Reshape", [x, self.const([0, 0, -1], np.int64)])
        return flat if dtype == TensorProto.FLOAT else self.op("Cast", [flat], to=TensorProto.FLOAT)


@dataclass(frozen=True)
class DetectorParts:
    """What the detector reads: the score map, its regression map (or none) and the image input; the names
    of its outputs."""

    scores: str
    scores_layout: str
    classes: int
    geometry: Geometry
    regression: Optional[str] = None
    regression_layout: str = ""
    outputs: Tuple[str, ...] = DETECTION_OUTPUTS
    #: The maps' element types (onnx TensorProto values).
    scores_type: int = TensorProto.FLOAT
    regression_type: int = TensorProto.FLOAT
    #: The model reads pictures as W x H (MTCNN's ported nets): its regression's offsets are in the picture's
    #: frame, and the boxes are given in it (x and y swapped back).
    transpose: bool = False


def detector_nodes(parts: DetectorParts, settings: DetectionSettings,
                   opset: int) -> Tuple[List[onnx.NodeProto], List[onnx.TensorProto]]:
    """The nodes (and their constants) from the maps to the outputs `parts.outputs`."""
    if opset < MIN_OPSET:
        raise InputError(f"--emit-detections needs opset {MIN_OPSET} or later (NonMaxSuppression, Range, GatherND); "
                         f"the model has opset {opset}: upgrade it first (onnx.version_converter)")
    g = _Nodes(opset)
    geometry = parts.geometry
    window_h, window_w = geometry.window
    scores = g.channels_first_flat(parts.scores, parts.scores_layout, parts.scores_type)  # [N, K, hw]
    if settings.activation == SIGMOID:
        scores = g.op("Sigmoid", [scores])
    elif settings.activation == SOFTMAX:  # over K as the last axis: the same in every opset's Softmax
        refuse_softmax_of_one(parts.classes)
        last = g.op("Softmax", [g.op("Transpose", [scores], perm=[0, 2, 1])], axis=2)
        scores = g.op("Transpose", [last], perm=[0, 2, 1])
    if settings.classes is not None:
        if max(settings.classes) >= parts.classes:
            raise InputError(f"class {max(settings.classes)}: output '{parts.scores}' has classes 0 to "
                             f"{parts.classes - 1}")
        scores = g.op("Gather", [scores, g.const(list(settings.classes), np.int64)], axis=1)
    else:  # each cell's best class only
        best = g.op("Equal", [scores, g.reduce_max(scores, 1)])
        scores = g.op("Where", [best, scores, g.const(-np.inf, np.float32)])
    # Cell (i, j)'s window, row by row: [hw, 4] as x1, y1, x2, y2.
    shape = g.op("Shape", [parts.scores])
    h_axis, w_axis = (1, 2) if parts.scores_layout == CHANNELS_LAST else (2, 3)
    counts = (g.op("Gather", [shape, g.const(axis, np.int64)]) for axis in (h_axis, w_axis))
    rows, columns = (g.op("Cast", [g.op("Range", [g.const(0, np.int64), count, g.const(1, np.int64)])],
                          to=TensorProto.FLOAT) for count in counts)
    y1 = g.op("Add", [g.op("Mul", [rows, g.const(float(geometry.stride[0]), np.float32)]),
                      g.const(float(geometry.offset[0]), np.float32)])
    x1 = g.op("Add", [g.op("Mul", [columns, g.const(float(geometry.stride[1]), np.float32)]),
                      g.const(float(geometry.offset[1]), np.float32)])
    y1 = g.op("Reshape", [y1, g.const([-1, 1], np.int64)])  # [h, 1]
    x1 = g.op("Reshape", [x1, g.const([1, -1], np.int64)])  # [1, w]
    zeros = g.op("Add", [g.op("Mul", [y1, g.const(0.0, np.float32)]), g.op("Mul", [x1, g.const(0.0, np.float32)])])
    column = g.const([-1, 1], np.int64)
    x1, y1 = (g.op("Reshape", [g.op("Add", [v, zeros]), column]) for v in (x1, y1))  # [hw, 1] each
    corners = [x1, y1, g.op("Add", [x1, g.const(float(window_w), np.float32)]),
               g.op("Add", [y1, g.const(float(window_h), np.float32)])]
    boxes = g.op("Reshape", [g.op("Concat", corners, axis=1), g.const([1, -1, 4], np.int64)])  # [1, hw, 4]
    if parts.regression:
        offsets = g.op("Transpose", [g.channels_first_flat(parts.regression, parts.regression_layout,
                                                           parts.regression_type)], perm=[0, 2, 1])  # [N, hw, 4]
        if parts.transpose:  # the picture's x1, y1, x2, y2 are the input's y1, x1, y2, x2
            offsets = g.op("Gather", [offsets, g.const(list(SWAPPED), np.int64)], axis=2)
        span = g.const([window_w, window_h, window_w, window_h], np.float32)
        boxes = g.op("Add", [boxes, g.op("Mul", [offsets, span])])
    else:
        batch = g.op("Slice", [shape, g.const([0], np.int64), g.const([1], np.int64)])
        boxes = g.op("Expand", [boxes, g.op("Concat", [batch, g.const([1, 1], np.int64)], axis=0)])
    # Clipped to the input: [0, W] x [0, H].
    image = g.op("Shape", [geometry.input])
    i_h, i_w = (1, 2) if geometry.layout == CHANNELS_LAST else (2, 3)
    height, width = (g.op("Gather", [image, g.const([axis], np.int64)]) for axis in (i_h, i_w))
    high = g.op("Cast", [g.op("Concat", [width, height, width, height], axis=0)], to=TensorProto.FLOAT)
    boxes = g.op("Min", [g.op("Max", [boxes, g.const(0.0, np.float32)]), high])
    selected = g.op("NonMaxSuppression", [boxes, scores, g.const([ALL_BOXES], np.int64),
                                          g.const([float(settings.iou)], np.float32),
                                          g.const([float(settings.threshold)], np.float32)])
    picked_scores = g.op("GatherND", [scores, selected])
    picked_boxes = g.op("GatherND", [boxes, g.op("Gather", [selected, g.const([0, 2], np.int64)], axis=1)])
    class_index = g.op("Gather", [selected, g.const(1, np.int64)], axis=1)
    if settings.classes is not None:
        class_index = g.op("Gather", [g.const(list(settings.classes), np.int64), class_index])
    batch_index = g.op("Gather", [selected, g.const(0, np.int64)], axis=1)
    # Best first, over every class and image.
    count = g.op("Shape", [picked_scores])
    ordered, order = g.name("scores"), g.name("order")
    g.nodes.append(helper.make_node("TopK", [picked_scores, count], [ordered, order], name=g.name("TopK"), axis=0,
                                    largest=1, sorted=1))
    out_boxes, out_scores, out_classes, out_batch = parts.outputs
    if parts.transpose:
        ordered_boxes = g.op("Gather", [picked_boxes, order], axis=0)
        g.op("Gather", [ordered_boxes, g.const(list(SWAPPED), np.int64)], out_boxes, axis=1)
    else:
        g.op("Gather", [picked_boxes, order], out_boxes, axis=0)
    g.op("Identity", [ordered], out_scores)
    g.op("Gather", [class_index, order], out_classes, axis=0)
    g.op("Gather", [batch_index, order], out_batch, axis=0)
    return g.nodes, g.constants


def describe(parts: DetectorParts, settings: DetectionSettings, probabilities: bool) -> str:
    """One line on what the detector reads and does."""
    which = "each cell's best class" if settings.classes is None else \
        f"class(es) {', '.join(map(str, settings.classes))}"
    regression = f", boxes moved by '{parts.regression}'" if parts.regression else ""
    logits = "" if probabilities or settings.activation != AUTO else \
        " (its values as they are: logits, not made by a Softmax or Sigmoid)"
    activation = f" through a {settings.activation}" if settings.activation in (SIGMOID, SOFTMAX) else ""
    return (f"{', '.join(parts.outputs)} from '{parts.scores}'{activation}{logits}, {which}, score above "
            f"{settings.threshold:g}, overlap (IoU) up to {settings.iou:g}{regression}, best first"
            + ("; the model reads pictures as W x H: boxes in the picture's frame" if parts.transpose else ""))


def output_infos(names: Sequence[str]) -> List[onnx.ValueInfoProto]:
    """The declared detection outputs (boxes, scores, classes, batch index): M detections."""
    boxes, scores, classes, batch = names
    return [helper.make_tensor_value_info(boxes, TensorProto.FLOAT, ["M", 4]),
            helper.make_tensor_value_info(scores, TensorProto.FLOAT, ["M"]),
            helper.make_tensor_value_info(classes, TensorProto.INT64, ["M"]),
            helper.make_tensor_value_info(batch, TensorProto.INT64, ["M"])]


def free_output_names(model: onnx.ModelProto) -> Tuple[str, ...]:
    """DETECTION_OUTPUTS, or PREFIXED when one of them is a tensor of `model` already."""
    taken = {name for node in model.graph.node for name in node.output} | \
        {v.name for v in model.graph.input} | {t.name for t in model.graph.initializer}
    for names in (DETECTION_OUTPUTS, PREFIXED):
        if not taken & set(names):
            return names
    raise InputError(f"--emit-detections adds outputs named {', '.join(DETECTION_OUTPUTS)} (or "
                     f"{', '.join(PREFIXED)}), and the model has tensors of those names")


def with_detector(model: onnx.ModelProto, parts: DetectorParts, settings: DetectionSettings) -> onnx.ModelProto:
    """A copy of the converted `model` with the detector appended and its outputs added."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    nodes, constants = detector_nodes(parts, settings, opset)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    result.graph.node.extend(nodes)
    result.graph.initializer.extend(constants)
    result.graph.output.extend(output_infos(parts.outputs))
    # What the detector does, for people and tools reading the model (Netron shows metadata).
    result.metadata_props.add(key=DETECTOR_KEY, value=json.dumps(
        {"outputs": list(parts.outputs), "scores": parts.scores, "regression": parts.regression,
         "transpose": parts.transpose,
         **{f.name: getattr(settings, f.name) for f in fields(settings)}}))
    return result


def standalone(parts: DetectorParts, settings: DetectionSettings, opset: int,
               input_shape: Sequence, image_type: int, score_type: onnx.TypeProto,
               regression_type: Optional[onnx.TypeProto]) -> onnx.ModelProto:
    """The detector alone, its maps and the image as inputs: validation feeds it random maps."""
    nodes, constants = detector_nodes(parts, settings, opset)
    inputs = [helper.make_tensor_value_info(parts.geometry.input, image_type, list(input_shape)),
              helper.make_value_info(parts.scores, score_type)]
    if parts.regression and regression_type is not None:
        inputs.append(helper.make_value_info(parts.regression, regression_type))
    graph = helper.make_graph(nodes, "detector", inputs, output_infos(parts.outputs), constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=max(helper.find_min_ir_version_for([helper.make_opsetid("", opset)]), 4))


def detector_parts(model: onnx.ModelProto, plan: Plan, geometries: Sequence[HeadGeometry],
                   settings: DetectionSettings, transpose: bool = False) -> DetectorParts:
    """What the detector of `settings` reads in the converted `model`: its score output (default: the one made
    by a Softmax or Sigmoid) and regression output, their layouts and geometry; InputError, naming the output,
    when one cannot serve."""
    placed = {name: (head, where) for head, where in zip(plan.heads, geometries) for name in head.outputs}
    name = settings.output_name or score_output(model, [n for n in placed if isinstance(placed[n][1], Geometry)]
                                                or list(placed))
    outputs = {o.name: o for o in model.graph.output}
    if settings.overlap != UNION:
        raise InputError(f"--emit-detections cannot measure overlap against the {settings.overlap} box: ONNX's "
                         "NonMaxSuppression measures intersection over union only; use --overlap union, or detect "
                         "(which can)")
    if settings.regression and settings.regression == name:
        raise InputError(f"--emit-detections: '{name}' cannot be both the score output and the regression; "
                         "--regression names the output with the box offsets (4 channels), --output-name the scores")
    parts = {}
    for role, wanted in (("scores", name), ("regression", settings.regression)):
        if not wanted:
            continue
        if wanted not in placed:
            raise InputError(f"--emit-detections: '{wanted}' is not an output of a converted head (they are "
                             f"{', '.join(placed)})")
        head, where = placed[wanted]
        if not isinstance(where, Geometry) or len(where.window) != 2:
            why = where.describe() if not isinstance(where, Geometry) else f"its grid is {len(where.window)}-D"
            raise InputError(f"--emit-detections: the cells of '{wanted}' cannot be placed on the input: {why}")
        dims = outputs[wanted].type.tensor_type.shape.dim
        layout = head.output_layouts.get(wanted, head.output_layout)
        channel = dims[-1 if layout == CHANNELS_LAST else 1]
        if len(dims) != 4 or not channel.HasField("dim_value"):
            raise InputError(f"--emit-detections: output '{wanted}' is not a [N, K, h, w] map with a fixed K")
        parts[role] = (wanted, layout, channel.dim_value, where, outputs[wanted].type.tensor_type.elem_type)
    scores, layout, classes, geometry, scores_type = parts["scores"]
    names = free_output_names(model)
    if "regression" not in parts:
        return DetectorParts(scores, layout, classes, geometry, outputs=names, scores_type=scores_type,
                             transpose=transpose)
    regression, regression_layout, channels, where, regression_type = parts["regression"]
    if where != geometry:
        raise InputError(f"--emit-detections: the regression output '{regression}' is not on the grid of "
                         f"'{scores}' (their geometries differ)")
    if channels != 4:
        raise InputError(f"--emit-detections: the regression output '{regression}' has {channels} channels; it "
                         "needs 4 (x1, y1, x2, y2)")
    return DetectorParts(scores, layout, classes, geometry, regression, regression_layout, names, scores_type,
                         regression_type, transpose)

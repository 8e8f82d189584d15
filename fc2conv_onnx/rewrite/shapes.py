"""Give the rewritten graph its new shapes: symbolic batch and spatial input dims, re-inferred shapes,
a checker pass, and a metadata entry that marks the model as converted and holds each head's geometry."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import onnx
import onnx_graphsurgeon as gs

from ..errors import ValidationError, first_line
from ..model.geometry import HeadGeometry
from ..model.graphs import BATCH_NAME, clear_inferred_shapes, export_like, free_input_dims, infer_shapes, spatial_names
from ..model.layout import CHANNELS_LAST
from ..model.marker import CONVERTED_KEY, marker_json
from ..model.scores import made_by_score_op
from ..model.weights import Weights, check_model
from ..plan.plan import Plan
from ..read.trunk_sizes import observed_at_two_sizes


def finish(graph: gs.Graph, original: onnx.ModelProto, plan: Plan, geometry: Sequence[HeadGeometry],
           sized: Optional[onnx.ModelProto] = None, weights: Optional[Weights] = None) -> onnx.ModelProto:
    """Export the rewritten graph with symbolic input dims, fresh shapes, and the converted marker. With
    `sized` (the model as planned, its image inputs at the training size) the model is run on `weights` to
    give a shape to each output whose shape shape inference loses (see `_observe_lost_outputs`)."""
    free_input_dims(graph, plan.trunk_inputs, layouts=plan.input_layouts)
    ranks = {name: len(tensor.shape) for name, tensor in graph.tensors().items()
             if isinstance(tensor, gs.Variable) and tensor.shape is not None}
    clear_inferred_shapes(graph)
    model = export_like(graph, original)
    scores = [name for head in plan.heads for name in head.outputs if made_by_score_op(model, name)]
    model.metadata_props.add(key=CONVERTED_KEY, value=marker_json(plan, geometry, scores))
    try:
        model = infer_shapes(model, strict_mode=True, data_prop=True)
        _give_lost_shapes_their_rank(model, ranks)
        if sized is not None:
            _observe_lost_outputs(model, sized, plan, weights)
        name_output_dims(model, plan)
        check_model(model, full_check=True)
    except Exception as error:
        raise ValidationError(f"the converted model does not pass the ONNX checker: {first_line(error)}") from None
    return model


def _observe_lost_outputs(model: onnx.ModelProto, sized: onnx.ModelProto, plan: Plan,
                          weights: Optional[Weights]) -> None:
    """Give each output whose shape shape inference lost (before opset 13 it does not follow a Reshape whose
    target is computed, as a trunk made to follow the input's size has) the shape runs show: the dims
    that are the same at the training size and at twice it are static, the others (and the batch) symbolic,
    named by `name_output_dims`. Left as they are when a run fails (the checker then refuses the model)."""
    lost = {v.name: v for v in model.graph.output if v.type.HasField("tensor_type")
            and not v.type.tensor_type.HasField("shape")}
    seen = _at_two_sizes(model, sized, plan, list(lost), weights) if lost else None
    if seen is None:
        return
    for name, value in lost.items():
        at_one, at_two = seen[0][name], seen[1][name]
        shape = value.type.tensor_type.shape
        for axis, (one, two) in enumerate(zip(at_one, at_two)):
            dim = shape.dim.add()
            if axis > 0 and one == two:
                dim.dim_value = one


def _at_two_sizes(model: onnx.ModelProto, sized: onnx.ModelProto, plan: Plan, names: Sequence[str],
                  weights: Optional[Weights]):
    """The shapes of `names` when the converted `model` runs with its image inputs at the training size they
    have in `sized`, and at twice it (see `trunk_sizes.observed_at_two_sizes`)."""
    training = {value.name: value for value in sized.graph.input}
    layouts = {name: plan.input_layout(name) for name in plan.trunk_inputs}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for value in probe.graph.input:
        if value.name in layouts and value.name in training:
            value.type.CopyFrom(training[value.name].type)
    return observed_at_two_sizes(probe, layouts, names, weights)


def _give_lost_shapes_their_rank(model: onnx.ModelProto, ranks: Mapping[str, int]) -> None:
    """Give the value_info entries that shape inference left without a shape (before opset 13 it does not
    follow the shape arithmetic of a trunk made to follow the input's size) their rank, every dim unknown
    (the checker wants a shape; tools that cut the model want the type); drop those of unknown rank."""
    kept = []
    for value in model.graph.value_info:
        tensor = value.type.tensor_type if value.type.HasField("tensor_type") else None
        if tensor is not None and not tensor.HasField("shape"):
            if value.name not in ranks:
                continue
            tensor.shape.SetInParent()  # a scalar's shape has no dim, but it is there
            for _ in range(ranks[value.name]):
                tensor.shape.dim.add()
        kept.append(value)
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


#: The suffix of an output's spatial dim names: an input's `H` becomes `H_out` on the outputs' grid
#: (`H_out2`, `H_out3`, ... for heads on other grids).
OUTPUT_SUFFIX = "_out"


def name_output_dims(model: onnx.ModelProto, plan: Plan) -> None:
    """Give the converted outputs' symbolic dims names people can read, instead of shape inference's
    `unk__N`: the batch keeps the input's name, and the outputs of heads on one grid (the same feature map,
    window and sliding) share one set of spatial names, the input's with `OUTPUT_SUFFIX` (`H_out`, `W_out`).
    Static dims (a kept global pool's 1x1) stay numbers."""
    inputs = {value.name: value for value in model.graph.input}
    batch = next((d.dim_param for name in plan.trunk_inputs if name in inputs
                  for d in inputs[name].type.tensor_type.shape.dim[:1] if d.dim_param), BATCH_NAME)
    grids: Dict[Tuple, str] = {}
    outputs = {value.name: value for value in model.graph.output}
    for head in plan.heads:
        key = (head.source, head.window, head.slides)
        suffix = grids.setdefault(key, OUTPUT_SUFFIX + (str(len(grids) + 1) if grids else ""))
        for name in head.outputs:
            if name not in outputs or not outputs[name].type.HasField("tensor_type"):
                continue
            dims = outputs[name].type.tensor_type.shape.dim
            rank = len(dims)
            if rank < 3:
                continue
            spatial = range(1, rank - 1) if head.output_layouts.get(name) == CHANNELS_LAST else range(2, rank)
            if not dims[0].HasField("dim_value"):
                dims[0].dim_param = batch
            for axis, base in zip(spatial, spatial_names(rank - 2)):
                if not dims[axis].HasField("dim_value"):
                    dims[axis].dim_param = base + suffix

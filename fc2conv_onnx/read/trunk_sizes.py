"""Trunks that bake the training size: find them before anything runs, and make them follow the input.

A converted model takes inputs of any size, so every trunk op must compute its output shape from its input,
not from the training size. Some exporters write literal sizes: the dynamo exporter turns ShuffleNet's
channel shuffle `x.view(N, g, C // g, H, W)` into Reshape [1, 2, 4, 16, 16]. Such a node is found by shape
inference with the image inputs' spatial dims made symbolic: its input's shape follows the image, its
output's does not.

A Reshape that keeps the batch and a trailing block of the input's dims (the spatial ones among them) and
only regroups the dims in between (static, the channels) is exact at every size when the kept dims are read
from the input's shape: its target becomes Concat(Shape(x)[:1], middle, Shape(x)[-k:]). Any other node that
bakes the size (a Resize to fixed `sizes`, an Expand, a Slice at literal ends, ...) is refused with its name.

Shape inference cannot follow every trunk: TorchScript exports ShuffleNet's `x.chunk(2, dim=1)` as a Slice
whose ends are computed (Shape -> Gather -> Add -> Div -> Mul), and every dim after it is unknown, the
channels too. When such unknown dims keep a Reshape from being rewritten, the trunk up to the Reshape is
run at the training size and at twice it, and the dims that did not change are taken as static.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import InputError, first_line
from ..model.graphs import cut, infer_shapes, skeleton
from ..model.layout import spatial_axes
from ..model.registry import fact, is_op
from ..model.runtime import observed_shapes
from ..model.walks import trunk_nodes
from ..model.weights import Weights

logger = logging.getLogger(__name__)

#: Rounds of (find the first baked node, rewrite it); each round re-infers shapes below the rewrite.
MAX_ROUNDS = 256


def size_dependence(model: onnx.ModelProto, layouts: Mapping[str, str]) -> Dict[str, Tuple[bool, ...]]:
    """Tensor name -> for each dim, whether it follows the size of the image inputs (named in `layouts`,
    with their layout): shape inference on a copy of the (weightless) model whose image inputs have
    symbolic spatial dims. Tensors shape inference cannot follow are left out."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    for value in probe.graph.input:
        if value.name in layouts:
            dims = value.type.tensor_type.shape.dim
            for axis in spatial_axes(len(dims), layouts[value.name]):
                dims[axis].Clear()
                dims[axis].dim_param = f"{value.name}_spatial_{axis}"
    for value in probe.graph.output:
        value.type.tensor_type.ClearField("shape")
    try:
        inferred = infer_shapes(probe, data_prop=True)
    except Exception as error:
        logger.debug("shape inference at a symbolic size failed: %s", first_line(error))
        return {}
    found = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if value.type.tensor_type.HasField("shape"):
            found[value.name] = tuple(not d.HasField("dim_value") for d in value.type.tensor_type.shape.dim)
    return found


def _kept_suffix(data: Sequence, target: Sequence, follows: Sequence[bool]) -> Optional[int]:
    """How many trailing dims a Reshape keeps (the batch, axis 0, is kept apart), if it keeps every
    size-following dim among them; else None. Shapes are at the training size; only the batch may be symbolic."""
    if len(data) < 2 or len(target) < 2 or not all(isinstance(d, int) for d in list(data[1:]) + list(target[1:])):
        return None
    if isinstance(data[0], int) and isinstance(target[0], int) and data[0] != target[0]:
        return None
    k = 0
    while k < min(len(data), len(target)) - 1 and data[len(data) - 1 - k] == target[len(target) - 1 - k]:
        k += 1
    if k == 0 or any(follows[axis] for axis in range(1, len(data) - k)):
        return None
    return k


def _dims(graph: gs.Graph, shape: gs.Tensor, start: int, end: int, base: str) -> gs.Variable:
    """shape[start:end] of a Shape output, as a new int64 tensor: a Gather of those positions, which every
    opset has and onnx's shape inference follows (it does not follow the attribute form of Slice, before
    opset 10: the shapes after it were lost, and the next baked Reshape with them)."""
    part = gs.Variable(f"{base}/dims_{start}_{end}_value", dtype=np.int64)
    positions = gs.Constant(f"{base}/positions_{start}_{end}", np.arange(start, end, dtype=np.int64))
    graph.nodes.append(gs.Node("Gather", f"{base}/gather_{start}_{end}", attrs={"axis": 0},
                               inputs=[shape, positions], outputs=[part]))
    return part


def _follow_reshape(graph: gs.Graph, node: gs.Node, follows: Sequence[bool]) -> Optional[str]:
    """Give a baked Reshape a target read from its input's shape, if the rule in the module docstring
    applies; a note on what was done, or None."""
    data, result = node.inputs[0], node.outputs[0]
    before, after = data.shape, result.shape
    if not is_op(node, "Reshape") or len(node.inputs) < 2 or before is None or after is None \
            or len(follows) != len(before):
        return None  # (before opset 5, a Reshape's shape was an attribute)
    k = _kept_suffix(before, after, follows)
    if k is None:
        return None
    base = f"{node.name}/follow_input_size"
    shape = gs.Variable(f"{base}/shape_value", dtype=np.int64)
    graph.nodes.append(gs.Node("Shape", f"{base}/shape", inputs=[data], outputs=[shape]))
    middle = list(after[1:len(after) - k])
    parts = [_dims(graph, shape, 0, 1, base)] + \
        ([gs.Constant(f"{base}/middle", np.array(middle, dtype=np.int64))] if middle else []) + \
        [_dims(graph, shape, len(before) - k, len(before), base)]
    target = gs.Variable(f"{base}/target_value", dtype=np.int64)
    graph.nodes.append(gs.Node("Concat", f"{base}/concat", attrs={"axis": 0}, inputs=parts, outputs=[target]))
    literal = node.inputs[1].values.tolist() if isinstance(node.inputs[1], gs.Constant) else None
    node.inputs[1] = target
    node.attrs.pop("allowzero", None)  # 0, the default, where it exists (opset 14 on): the target has no zero
    return (f"Reshape '{node.name}' in the trunk had the training size in its shape {literal or list(after)}; it "
            f"now reads the batch and its last {k} dims from its input, so the trunk runs at any size")


def _baked(trunk: Sequence[gs.Node], dependence: Mapping[str, Tuple[bool, ...]],
           passed: Set[str]) -> Optional[Tuple[gs.Node, Optional[Tuple[bool, ...]]]]:
    """The first trunk node that bakes the training size, or may, besides those `passed` (rewritten, or run
    and seen not to): the node and which dims of its input follow the image by shape inference, or None
    for a Reshape whose input shape inference lost (before opset 13 it does not follow shape arithmetic:
    not even the Reshapes this module rewrites) while its output has fixed dims."""
    for node in trunk:
        # Only ops whose output shape an input gives (the registry's `shaped_by_inputs`: a shape, sizes,
        # repeats, ends, pads) can write the training size in; others compute it from their input's shape.
        if not fact(node, "shaped_by_inputs") or not node.outputs or not node.inputs or node.name in passed:
            continue
        data = dependence.get(node.inputs[0].name)
        out = dependence.get(node.outputs[0].name)
        if out is None or len(out) < 2:
            continue
        # Fewer dims follow the image after the node than before: it wrote sizes of the training input in
        # (a -1 that absorbs the rest does not follow the spatial dims, it mixes them).
        if data and sum(out) < sum(data):
            return node, data
        if not data and is_op(node, "Reshape") and not all(out):
            return node, None
    return None


def observed_at_two_sizes(model: onnx.ModelProto, layouts: Mapping[str, str], names: Sequence[str],
                          weights: Optional[Weights] = None
                          ) -> Optional[Tuple[Dict[str, Tuple[int, ...]], Dict[str, Tuple[int, ...]]]]:
    """The shapes of tensors `names` when `model`, cut to compute just them, runs at the size its image
    inputs (named in `layouts`) declare and at twice it; None when either run fails."""
    seen = []
    for factor in (1, 2):
        probe = cut(model, names)
        for value in probe.graph.input:
            if value.name in layouts:
                dims = value.type.tensor_type.shape.dim
                for axis in spatial_axes(len(dims), layouts[value.name]):
                    dims[axis].dim_value *= factor
        shapes = observed_shapes(probe, names, weights)
        if any(name not in shapes for name in names):
            return None
        seen.append(shapes)
    return seen[0], seen[1]


def observed_dependence(model: onnx.ModelProto, layouts: Mapping[str, str], name: str,
                        weights: Optional[Weights]) -> Optional[Tuple[bool, ...]]:
    """For each dim of tensor `name`, whether it changed between runs of `model` at the training size and at
    twice it (the image inputs' spatial dims doubled); None when either run fails."""
    seen = observed_at_two_sizes(model, layouts, [name], weights)
    if seen is None or len(seen[0][name]) != len(seen[1][name]):
        return None
    return tuple(a != b for a, b in zip(seen[0][name], seen[1][name]))


def follow_input_size(graph: gs.Graph, like: onnx.ModelProto, weights: Weights, sources: Sequence[str],
                      layouts: Mapping[str, str]) -> List[str]:
    """Make every trunk node that bakes the training size follow the input's size, or raise InputError
    naming the first that cannot. `like` is the model the graph was imported from, `weights` hold its large
    tensors; `sources` are the heads' source tensors; `layouts` the image inputs and their layouts. Shapes
    that shape inference cannot follow are observed by running the model (see the module docstring).
    Returns a note per rewrite."""
    notes: List[str] = []
    passed: Set[str] = set()
    for _ in range(MAX_ROUNDS):
        model = skeleton(graph, like, weights)
        dependence = size_dependence(model, layouts)
        found = _baked(trunk_nodes(graph, sources), dependence, passed)
        if found is None:
            return notes
        node, follows = found
        note = _follow_reshape(graph, node, follows) if follows is not None else None
        if note is None and is_op(node, "Reshape") and (follows is None or any(follows)):
            # Unknown dims count as following the image, and a lost shape may; a run tells which do.
            seen = observed_dependence(model, layouts, node.inputs[0].name, weights)
            logger.debug("dims of '%s' that follow the image: %s by shape inference, %s by running",
                         node.inputs[0].name, follows, seen)
            if seen is not None and follows is None and sum(seen) <= sum(dependence[node.outputs[0].name]):
                passed.add(node.name)  # it keeps every dim that follows the image: nothing baked
                continue
            if seen is not None and seen != follows:
                note = _follow_reshape(graph, node, seen)
        if note is None:
            shape = list(node.outputs[0].shape or [])
            raise InputError(f"{node.op} '{node.name}' in the trunk fixes the size of its output to {shape} (the "
                             "training size), so the converted model could not run at other sizes; re-export the model "
                             "so that this op follows its input's size")
        notes.append(note)
        passed.add(node.name)
        graph.toposort()
    raise InputError(f"more than {MAX_ROUNDS} trunk nodes bake the training size")


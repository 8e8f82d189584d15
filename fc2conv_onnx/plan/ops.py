"""What each op becomes in a head, read in context: the head handlers attached to the registry's entries.

- In a head, an entry's handler gets the node, the index of the input that carries head features and a
  `HeadContext` (how many features, and the tensor's form: FLAT [N, K], or a pooled MAP / MAP_LAST), and
  answers with what the node becomes when the head runs at every location (a `PassThrough` or a
  `LinearLayer` step), or a `Decline` with the reason. An op without a head handler has no per-location
  form: a head cannot pass through it.
- In the trunk, an entry's kind says how the op moves the geometry (`read.trunk_kinds`).

Adding an op is adding its entry to `registry` (and a handler here if a head may pass through it); `heads`
(matching and plan), `rewrite`, `geometry` and `atrous` all read the same entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, FrozenSet, Mapping, Optional, Union

import numpy as np
import onnx_graphsurgeon as gs

from ..model.layout import is_transpose, to_channels_first, to_channels_last
from ..model.registry import attach, is_op, ops_with
from ..read.constants import axes_of, constant_ints, constant_values, per_feature_vector, per_location_constant
from ..read.trunk_kinds import varies_over_space
from .flattenings import reshape_flattens
from .linear import match_linear
from .plan import (
    AXIS_LAST,
    FLAT,
    KEEP,
    MAP,
    MAP_LAST,
    REMOVE,
    TO_CHANNELS_FIRST,
    Decline,
    LinearLayer,
    PassThrough,
    Step,
)
from .values import constant_float_values


@dataclass(frozen=True)
class HeadContext:
    features: int  # K of the head tensor the node reads
    spatial_rank: int
    opset: int
    graph_outputs: FrozenSet[str]
    #: The form of the head tensor the node reads (FLAT, MAP or MAP_LAST).
    form: str = FLAT
    #: Every tensor of the head found so far -> its number of features.
    head_features: Mapping[str, int] = field(default_factory=dict)
    #: Every tensor of the head found so far -> its form.
    head_forms: Mapping[str, str] = field(default_factory=dict)

    def in_use(self, tensor: gs.Tensor) -> bool:
        return bool(tensor.outputs) or tensor.name in self.graph_outputs

    @property
    def rank(self) -> int:
        """The rank of the head tensor as a map ([N, K, *spatial])."""
        return self.spatial_rank + 2


Handler = Callable[[gs.Node, int, HeadContext], Union[Step, Decline]]


# ----------------------------------------------------------------------------------------- head handlers

def _pass(node: gs.Node, index: int, action: str, becomes: str, ctx: HeadContext, **extra) -> PassThrough:
    extra.setdefault("form", ctx.form)
    return PassThrough(node=node.name, op=node.op, input=node.inputs[index].name, output=node.outputs[0].name,
                       action=action, becomes=becomes, **extra)


def _unchanged(node: gs.Node, index: int, ctx: HeadContext, why: str = "per location") -> PassThrough:
    return _pass(node, index, KEEP, f"unchanged ({why})", ctx)


def _other_inputs_are_scalars(node: gs.Node, index: int) -> Optional[Decline]:
    for i, tensor in enumerate(node.inputs):
        if i == index or not tensor.name:
            continue
        values = constant_values(tensor)
        if values is None or values.size != 1:
            return Decline(f"input '{tensor.name}' of {node.op} '{node.name}' is not a constant scalar")
    return None


def elementwise(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """Unary elementwise ops (Relu, Sigmoid, Clip with scalar bounds, ...): unchanged."""
    return _other_inputs_are_scalars(node, index) or _unchanged(node, index, ctx, "elementwise")


def _constant_on_map(node: gs.Node, index: int, ctx: HeadContext, values: Optional[np.ndarray],
                     other: gs.Tensor) -> Union[PassThrough, Decline]:
    """On a pooled map, a constant operand keeps the op per location unless it varies over space."""
    if values is None or varies_over_space(values.shape, ctx.spatial_rank, ctx.form):
        return Decline(f"{node.op} '{node.name}' combines the pooled map with '{other.name}', which is not a "
                       "constant that is the same at every location")
    return _unchanged(node, index, ctx)


def prelu(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """PRelu: a per-feature slope [K] must become [K, 1, ...] on [N, K, *spatial] (unidirectional
    broadcasting); on a pooled map it already is what it must be."""
    slope = constant_values(node.inputs[1]) if index == 0 else None
    if ctx.form != FLAT:
        return _constant_on_map(node, index, ctx, slope, node.inputs[1])
    reshaped = None if slope is None else per_location_constant(slope, ctx.features, ctx.spatial_rank)
    if reshaped is None:
        return Decline(f"slope of PRelu '{node.name}' is not a constant with one value per feature")
    return _pass(node, index, KEEP, f"PRelu with slope shape {list(reshaped.shape)}", ctx, constants={1: reshaped})


def binary_with_constant(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """Add/Sub/Mul/Div by a per-feature constant (either side), reshaped to [K, 1, ...]; or of two head
    tensors (swish: x * Sigmoid(x); a LayerNorm spelled out: x - ReduceMean(x)), one of them maybe of one
    feature, which broadcasts per location as it stands."""
    other_index = 1 - index
    other = node.inputs[other_index]
    if other.name in ctx.head_features:
        k = ctx.head_features[other.name]
        if ctx.head_forms.get(other.name) != ctx.form or (k != ctx.features and 1 not in (k, ctx.features)):
            return Decline(f"{node.op} '{node.name}' combines head tensors of {ctx.features} and {k} features")
        return _pass(node, index, KEEP, "unchanged (elementwise on two head tensors)", ctx,
                     out_features=max(k, ctx.features))
    values = constant_float_values(other)
    if ctx.form != FLAT:
        return _constant_on_map(node, index, ctx, values, other)
    vector = None if values is None else per_feature_vector(values, values.shape[-1] if values.ndim else 1)
    if values is None or vector is None:
        return Decline(f"{node.op} '{node.name}' combines the head with '{other.name}', which is not a constant "
                       "of one value per feature")
    features = 1 if values.size == 1 else int(values.shape[-1])
    if features not in (1, ctx.features) and ctx.features != 1:
        return Decline(f"{node.op} '{node.name}' combines the head with '{other.name}', which is not a constant "
                       "of one value per feature")
    reshaped = values if values.size == 1 else vector.reshape((features,) + (1,) * ctx.spatial_rank)
    changed = {} if reshaped is values else {other_index: reshaped}
    return _pass(node, index, KEEP, f"{node.op} by constant of shape {list(reshaped.shape)}", ctx,
                 constants=changed, out_features=max(features, ctx.features))


def larger_or_smaller(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """Max / Min of the head and one other operand, elementwise with broadcasting as Add is (jax2onnx's LayerNorm
    clamps its variance so: Max(variance, 0)): read as `binary_with_constant` reads Add."""
    if len(node.inputs) != 2:
        return Decline(f"{node.op} '{node.name}' takes {len(node.inputs)} inputs, not the head and one other")
    return binary_with_constant(node, index, ctx)


def reduce_over_features(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """A reduction over the features alone, keeping the axis (a LayerNorm spelled out by tf2onnx: the mean
    and variance over [N, C]): on [N, K, *spatial] it reduces axis 1, per location, to one feature."""
    feature_axis = {FLAT: 1, MAP: 1, MAP_LAST: ctx.rank - 1}[ctx.form]
    rank = 2 if ctx.form == FLAT else ctx.rank
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        given = constant_values(node.inputs[1])
        axes = None if given is None else given.reshape(-1).tolist()
    if axes is None or {int(a) % rank for a in axes} != {feature_axis} or not node.attrs.get("keepdims", 1):
        return Decline(f"{node.op} '{node.name}' does not reduce the features alone, keeping the axis")
    if ctx.form != FLAT:
        return _pass(node, index, KEEP, "unchanged (over the channels)", ctx, out_features=1)
    if "axes" in node.attrs:
        return _pass(node, index, KEEP, f"{node.op} over axis 1", ctx, attrs={"axes": [1]}, out_features=1)
    return _pass(node, index, KEEP, f"{node.op} over axis 1", ctx, out_features=1,
                 constants={1: np.array([1], dtype=np.int64)})


def batch_normalization(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """BatchNormalization normalises axis 1, which stays the feature axis: unchanged."""
    if ctx.form == MAP_LAST:
        return Decline(f"BatchNormalization '{node.name}' reads a channels-last map; its axis 1 is not the features")
    if node.attrs.get("training_mode", 0):
        return Decline(f"BatchNormalization '{node.name}' is in training mode")
    if any(ctx.in_use(out) for out in node.outputs[1:]):
        return Decline(f"BatchNormalization '{node.name}' has its running statistics outputs in use")
    for tensor in node.inputs[1:]:
        values = constant_float_values(tensor)
        if values is None or values.shape != (ctx.features,):
            return Decline(f"BatchNormalization '{node.name}' parameter '{tensor.name}' is not a constant [K]")
    return _unchanged(node, index, ctx, "normalises axis 1")


def dropout(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """Dropout is the identity at inference; the mask output must be unused."""
    if len(node.outputs) > 1 and ctx.in_use(node.outputs[1]):
        return Decline(f"the mask of Dropout '{node.name}' is used")
    if len(node.inputs) > 2 and node.inputs[2].name:
        mode = constant_values(node.inputs[2])
        if mode is None or bool(mode.reshape(-1)[0]):
            return Decline(f"Dropout '{node.name}' may run in training mode")
    return _pass(node, index, REMOVE, "removed (identity at inference)", ctx)


def _over_last_axis(node: gs.Node, index: int, ctx: HeadContext, axis: int) -> Union[PassThrough, Decline]:
    """An op that normalises over the last axis: on a channels-last map that is the features, so it stays;
    on FLAT features it runs with the features moved last (Transpose, the op, Transpose back)."""
    if ctx.form == MAP_LAST and axis in (-1, ctx.rank - 1):
        return _unchanged(node, index, ctx, "over the channels of a channels-last map")
    if ctx.form == FLAT and axis in (1, -1):
        return _pass(node, index, AXIS_LAST, f"Transpose, {node.op} over the last axis, Transpose back", ctx,
                     attrs={"axis": -1})
    read = "pooled map" if ctx.form != FLAT else "vector"
    return Decline(f"{node.op} '{node.name}' runs over axis {axis} of a {read}, not over the features alone: on a "
                   "larger map it would mix locations")


def softmax_family(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """Softmax / LogSoftmax / Hardmax over the features, kept per location.

    Opset 13 changed the meaning: before, the input is coerced to 2-D at `axis` (default 1) and
    normalised over everything after it — on [N, K, h, w], axis 1 would normalise over K*h*w. From 13,
    the op runs along `axis` alone (default -1). So from 13 the axis becomes 1; before 13 the features
    are moved last, where the old coercion gives one row per location.
    """
    default = -1 if ctx.opset >= 13 else 1
    axis = node.attrs.get("axis", default)
    if ctx.form == MAP and ctx.opset >= 13 and axis in (1, 1 - ctx.rank):
        return _unchanged(node, index, ctx, "over the channels")
    if ctx.form != FLAT:
        return _over_last_axis(node, index, ctx, axis)
    if axis not in (1, -1):
        return Decline(f"{node.op} '{node.name}' runs over axis {axis}, not over the features")
    if ctx.opset >= 13:
        return _pass(node, index, KEEP, f"{node.op} over axis 1", ctx, attrs={"axis": 1})
    return _pass(node, index, AXIS_LAST, f"Transpose, {node.op} over the last axis, Transpose back "
                 f"(opset {ctx.opset} semantics)", ctx, attrs={"axis": ctx.spatial_rank + 1})


def layer_normalization(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """LayerNormalization over the features (ConvNeXt's head norm: over [N, C] after the pool, or over the
    channels of a channels-last pooled map): per location, over the channel axis alone."""
    if index != 0:
        return Decline(f"LayerNormalization '{node.name}' reads the head as its scale or bias")
    for tensor in node.inputs[1:]:
        values = constant_float_values(tensor) if tensor.name else np.zeros(ctx.features)
        if values is None or values.size != ctx.features:
            return Decline(f"LayerNormalization '{node.name}' parameter '{tensor.name}' is not a constant [K]")
    if any(ctx.in_use(out) for out in node.outputs[1:]):
        return Decline(f"LayerNormalization '{node.name}' has its mean or inverse deviation outputs in use")
    return _over_last_axis(node, index, ctx, int(node.attrs.get("axis", -1)))


def quantize_family(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """QuantizeLinear / DequantizeLinear of activations (QDQ models): per-tensor, elementwise and unchanged;
    per-channel along the features (axis 1 or -1 of [N, K]), which is axis 1 of [N, K, *spatial]."""
    if index != 0:
        return Decline(f"{node.op} '{node.name}' reads the head as its scale or zero point")
    scale = constant_values(node.inputs[1])
    zero = constant_values(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if scale is None or (len(node.inputs) > 2 and node.inputs[2].name and zero is None):
        return Decline(f"{node.op} '{node.name}' has a scale or zero point that is not a constant")
    if scale.size == 1:
        return _unchanged(node, index, ctx, "per-tensor quantization")
    axis = int(node.attrs.get("axis", 1))
    feature_axis = {FLAT: (1, -1), MAP: (1, 1 - ctx.rank), MAP_LAST: (-1, ctx.rank - 1)}[ctx.form]
    if scale.size == ctx.features and axis in feature_axis:
        if ctx.form != FLAT:
            return _unchanged(node, index, ctx, "per-channel quantization")
        return _pass(node, index, KEEP, "per-feature quantization on axis 1", ctx, attrs={"axis": 1})
    return Decline(f"{node.op} '{node.name}' quantizes with {scale.size} scales, not one or one per feature")


def linear(node: gs.Node, index: int, ctx: HeadContext) -> Union[LinearLayer, Decline]:
    """Gemm / MatMul (+ Add) on FLAT features: a pointwise Conv."""
    if ctx.form != FLAT:
        return Decline(f"{node.op} '{node.name}' reads a pooled map that is not flattened")
    return match_linear(node, node.inputs[index], ctx.features, ctx.graph_outputs) or \
        Decline(f"{node.op} '{node.name}' is not a linear layer")


def pointwise_conv(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """A 1x1 Conv on a pooled map (MobileNetV3's and GhostNet's conv_head, Keras MobileNetV3's logits) acts
    on each location alone: on a larger map it is the same Conv, unchanged."""
    if ctx.form != MAP or index != 0:
        return Decline(f"Conv '{node.name}' reads the head {'as a weight' if index else 'in a channels-last form'}")
    weight = node.inputs[1].shape if len(node.inputs) > 1 else None
    kernel = node.attrs.get("kernel_shape") or (weight[2:] if weight is not None else None)
    if kernel is None or any(k != 1 for k in kernel) or len(kernel) != ctx.spatial_rank:
        return Decline(f"Conv '{node.name}' after the global pool has kernel {list(kernel or [])}, not 1x1")
    if any(int(s) != 1 for s in node.attrs.get("strides", [])) or any(int(p) for p in node.attrs.get("pads", [])):
        return Decline(f"Conv '{node.name}' after the global pool has strides or pads")
    out = weight[0] if weight is not None and isinstance(weight[0], int) else None
    if out is None:
        return Decline(f"Conv '{node.name}' has a weight of unknown shape")
    return _pass(node, index, KEEP, "unchanged (1x1 Conv, per location)", ctx, out_features=int(out))


def transpose(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """A Transpose of a pooled map that only moves the channels last, or back (tf2onnx around Keras
    layers, timm's LayerNorm2d)."""
    if ctx.form == MAP and is_transpose(node, to_channels_last(ctx.rank)):
        return _pass(node, index, KEEP, "unchanged (moves the channels last)", ctx, form=MAP_LAST)
    if ctx.form == MAP_LAST and is_transpose(node, to_channels_first(ctx.rank)):
        return _pass(node, index, KEEP, "unchanged (moves the channels back to axis 1)", ctx, form=MAP)
    return Decline(f"Transpose '{node.name}' with perm {list(node.attrs.get('perm', []))} does more than move "
                   "the channels of the head's map last or back")


def _reshape_keeps_map(node: gs.Node, index: int, ctx: HeadContext) -> Optional[PassThrough]:
    """A Reshape of a pooled map to [N, K, 1, ...] (any batch): tf2onnx's spelling of the move of a pooled
    [N, 1, ..., K] map to channels first (Keras MobileNet's top), or of nothing at all on [N, K, 1, ...].
    On a larger map it is that Transpose, or goes."""
    target = constant_values(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None or node.attrs.get("allowzero", 0):
        return None
    dims = [int(v) for v in target.reshape(-1)]
    if len(dims) != ctx.rank or dims[0] not in (-1, 0) or dims[1:] != [ctx.features] + [1] * ctx.spatial_rank:
        return None
    if ctx.form == MAP_LAST:
        return _pass(node, index, TO_CHANNELS_FIRST, "Transpose to [N, K, *spatial] (a Reshape that moves the pooled "
                     "map's unit axes)", ctx, form=MAP)
    return _pass(node, index, REMOVE, "removed (a Reshape of the pooled map to its own shape)", ctx)


def _keeps_flat(node: gs.Node, ctx: HeadContext) -> bool:
    """A Flatten or Reshape of features that are flat already ([N, K] to [N, K]: dlib's classifiers exported
    to ONNX flatten the output of a linear layer)."""
    shape = node.inputs[0].shape
    if shape is None or len(shape) != 2:
        return False
    if is_op(node, "Flatten"):
        return int(node.attrs.get("axis", 1)) in (1, -1)
    dims = constant_ints(node.inputs[1]) if is_op(node, "Reshape") and len(node.inputs) > 1 else None
    if dims is None:
        return False
    zero_copies = not node.attrs.get("allowzero", 0)
    return len(dims) == 2 and (dims[0] == -1 or (dims[0] == 0 and zero_copies)) and \
        dims[1] in (ctx.features, -1 if dims[0] != -1 else ctx.features)


def flattening(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """Flatten / Squeeze / Reshape of a pooled map [N, K, 1, ...] (or [N, 1, ..., K]) to [N, K]: on a larger
    map it goes (the map stays a map), or becomes a Transpose to channels first. Of features flat already, to
    the same [N, K]: it goes."""
    if ctx.form == FLAT and index == 0 and _keeps_flat(node, ctx):
        return _pass(node, index, REMOVE, "removed (the features are flat already)", ctx)
    if ctx.form == FLAT or index != 0:
        return Decline(f"{node.op} '{node.name}' reshapes the head's features")
    spatial = frozenset(range(2, ctx.rank)) if ctx.form == MAP else frozenset(range(1, ctx.rank - 1))
    if is_op(node, "Flatten") and int(node.attrs.get("axis", 1)) not in (1, 1 - ctx.rank):
        return Decline(f"Flatten '{node.name}' has axis {node.attrs.get('axis')}, not 1")
    if is_op(node, "Squeeze") and axes_of(node) != spatial:
        return Decline(f"Squeeze '{node.name}' does not squeeze exactly the pooled axes {sorted(spatial)}")
    if is_op(node, "Reshape"):
        kept = _reshape_keeps_map(node, index, ctx)
        if kept is not None:
            return kept
        shape = list(node.inputs[0].shape or [])
        note = reshape_flattens(node, ctx.features, f"the pooled {shape}", ctx.opset)
        if isinstance(note, Decline):
            return note
    if ctx.form == MAP_LAST:
        return _pass(node, index, TO_CHANNELS_FIRST, "Transpose to [N, K, *spatial] (the pooled map flattened)", ctx,
                     form=FLAT)
    return _pass(node, index, REMOVE, "removed (the pooled map flattened)", ctx, form=FLAT)


# ------------------------------------------------------------------------------------------- attached
# The facts (trunk kinds that are plain data, parameters, ...) are in the registry's table.

attach("head", *ops_with("elementwise"), value=elementwise)
attach("head", "Dropout", value=dropout)
attach("head", "PRelu", value=prelu)
attach("head", "Add", "Sub", "Mul", "Div", value=binary_with_constant)
attach("head", "Max", "Min", value=larger_or_smaller)
attach("head", "BatchNormalization", value=batch_normalization)
attach("head", "QuantizeLinear", "DequantizeLinear", value=quantize_family)
attach("head", "Softmax", "LogSoftmax", "Hardmax", value=softmax_family)
attach("head", "LayerNormalization", value=layer_normalization)
attach("head", "Gemm", "MatMul", value=linear)
attach("head", "Conv", value=pointwise_conv)
attach("head", "Transpose", value=transpose)
attach("head", "Flatten", "Squeeze", "Reshape", value=flattening)
attach("head", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceSumSquare",
       value=reduce_over_features)

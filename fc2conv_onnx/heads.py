"""Recognise fully connected heads and plan their conversion.

A head is: a spatial tensor [N, C, *spatial] (static training sizes) -> a *flattening* -> a first
*linear layer* -> a chain (or tree) of further linear layers and *pass-through* ops, ending in graph
outputs. Each exporter spells these differently; the spellings are data, in three vocabularies below.
A matcher returns a record when the node is its spelling, a `Decline` (with a reason a user can act
on) when it is its spelling but cannot be converted, and None when the node is not its spelling.

Every Gemm/MatMul that does not end up in a converted head is reported with a reason.
"""
from __future__ import annotations

import logging
from math import prod
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import onnx_graphsurgeon as gs

from .layout import CHANNELS_FIRST, CHANNELS_LAST, LAYOUTS, input_layout, is_transpose, to_channels_last
from .normalize import in_default_domain
from .shape_values import NotEvaluable, describe_computation, evaluate
from .plan import (AXIS_LAST, KEEP, KEEP_POOL, POOLINGS, REMOVE, Decline, Flattening, GlobalPool, HeadPlan,
                   LinearLayer, PassThrough, Plan, Quantized, Skipped, Step)

logger = logging.getLogger(__name__)

LINEAR_OPS = ("Gemm", "MatMul")


# --------------------------------------------------------------------------------------------- helpers

def constant_values(tensor: gs.Tensor) -> Optional[np.ndarray]:
    """The values of a constant tensor (initializer or folded Constant node), else None."""
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


def producer(tensor: gs.Tensor) -> Optional[gs.Node]:
    return tensor.inputs[0] if tensor.inputs else None


def per_feature_vector(values: np.ndarray, features: int) -> Optional[np.ndarray]:
    """`values` as a [K] vector if it broadcasts onto [N, K] by one value per feature, else None.

    ONNX broadcasting aligns trailing axes, so on [N, K] a constant of shape (), (1,), (1, 1), (K,) or
    (1, K) acts per feature; any shape with a leading axis > 1 would act per batch row instead.
    """
    if values.size == 1:
        return np.broadcast_to(values.reshape(()), (features,))
    if values.shape in ((features,), (1, features)):
        return values.reshape(features)
    return None


def per_location_constant(values: np.ndarray, features: int, spatial_rank: int) -> Optional[np.ndarray]:
    """Re-shape a per-feature constant so it acts on [N, K, *spatial] as it acted on [N, K].

    A single value broadcasts the same either way and is returned unchanged; a [K] or [1, K] constant
    must become [K, 1, ..., 1], or broadcasting would pair it with the last spatial axis.
    """
    if values.size == 1:
        return values
    vector = per_feature_vector(values, features)
    return None if vector is None else vector.reshape((features,) + (1,) * spatial_rank)


def spatial_source_shape(tensor: gs.Tensor) -> Union[Tuple[int, ...], Decline]:
    """(C, *spatial) of a tensor that can be slid over, or why it cannot."""
    if isinstance(tensor, gs.Constant):
        return Decline(f"input '{tensor.name}' is a constant, not a feature map")
    shape = tensor.shape
    if shape is None:
        return Decline(f"the shape of '{tensor.name}' is unknown; run shape inference or export with fixed sizes")
    if len(shape) < 3:
        return Decline(f"input '{tensor.name}' is not a spatial tensor (shape {list(shape)}); "
                       "there is no spatial axis to slide over")
    rest = tuple(shape[1:])
    if not all(isinstance(d, int) and d > 0 for d in rest):
        return Decline(f"'{tensor.name}' has no static size {list(shape)}; export the model with a fixed "
                       "input size (the training size)")
    return rest


# ------------------------------------------------------------------------------ flattening vocabulary

def _read_through_transpose(node: gs.Node) -> Tuple[gs.Tensor, str, str, Tuple[PassThrough, ...]]:
    """The spatial tensor a flattening reads, the order it lists the features in, a note, and the
    elementwise ops (with scalar constants) between a Transpose and the flattening.

    tf2onnx (and keras2onnx) put a Transpose to channels last before a Keras Flatten, so the features come
    in (*spatial, C) order; the source is then the channels-first tensor before the Transpose, and the
    first kernel is permuted to match (never the other way round: the trunk stays as it is). Ops between
    the Transpose and the flattening (a QDQ model's Q/DQ pair) commute with the Transpose: they move to
    the channels-first source.
    """
    data = node.inputs[0]
    start, between = _elementwise_chain(data, 0, frozenset())
    transpose = producer(start)
    rank = len(start.shape) if start.shape is not None else 0
    if transpose is not None and rank >= 3 and is_transpose(transpose, to_channels_last(rank)):
        note = f"reads Transpose '{transpose.name}' to channels last: features in (*spatial, C) order, permuted " \
               "into the kernel"
        return transpose.inputs[0], CHANNELS_LAST, note, between
    return data, CHANNELS_FIRST, "", ()


def _joined(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def match_flatten(node: gs.Node) -> Union[Flattening, Decline, None]:
    """Flatten(axis=1): PyTorch `torch.flatten(x, 1)`, Keras/ONNX Flatten (after a Transpose, keras2onnx)."""
    if node.op != "Flatten":
        return None
    source, order, note, moved = _read_through_transpose(node)
    shape = spatial_source_shape(source)
    if isinstance(shape, Decline):
        return shape
    axis = node.attrs.get("axis", 1)
    if axis < 0:
        axis += len(shape) + 1
    if axis != 1:
        return Decline(f"Flatten '{node.name}' has axis {node.attrs.get('axis')}, not 1: "
                       "it does not keep the batch axis apart")
    return Flattening(node=node.name, op="Flatten", source=source.name, source_shape=shape, order=order, note=note,
                      prelude=moved)


def _flattens(target: Sequence[int], batch: object, data_shape: Sequence, features: int,
              allow_zero: bool) -> Tuple[bool, bool]:
    """Does Reshape(data, target) give [batch, features]? -> (it does, it names the batch as a literal).

    Reshape spec: a 0 copies the input's dimension at that index (unless allowzero=1), a -1 is inferred.
    """
    if len(target) != 2:
        return False, False
    first, second = target
    if second == 0 and not allow_zero:
        second = data_shape[1]
    keeps_batch = (first == 0 and not allow_zero) or (first == -1 and second == features)
    literal = isinstance(batch, int) and first == batch and second in (-1, features)
    return (keeps_batch or literal) and second in (-1, features), literal and not keeps_batch


#: Batch sizes a computed Reshape shape is evaluated at, to tell entries that follow the batch from
#: constants (two, so that a batch baked in as a literal cannot pass for one that follows it).
PROBE_BATCHES = (2, 3)


def match_reshape(node: gs.Node) -> Union[Flattening, Decline, None]:
    """Reshape to [N, C*H*W]: a constant shape ([N, -1], [0, -1], [-1, C*H*W], [N, C*H*W]), or one
    computed from the trunk's shape (TorchScript `view(x.size(0), -1)`: Shape -> Gather -> Unsqueeze ->
    Concat; tf2onnx Flatten: Shape -> Gather -> Cast -> Slice -> Concat -> Cast), which is evaluated at
    the training size and must give [batch, features] at every batch size it is tried with.

    A literal batch size (e.g. `view(1, -1)`) is accepted when it equals the training batch; the
    converted model then takes any batch, and the plan says so.
    """
    if node.op != "Reshape":
        return None
    source, order, transpose_note, moved = _read_through_transpose(node)
    shape = spatial_source_shape(source)
    if isinstance(shape, Decline):
        return shape
    note = _reshape_flattens(node, prod(shape), f"[N, {', '.join(map(str, shape))}]")
    if isinstance(note, Decline):
        return note
    return Flattening(node=node.name, op="Reshape", source=source.name, source_shape=shape, order=order,
                      note=_joined(transpose_note, note), prelude=moved)


def _reshape_flattens(node: gs.Node, features: int, described: str) -> Union[str, Decline]:
    """Whether Reshape `node` gives [batch, features] from its input: a note on how, or why not."""
    data = node.inputs[0]
    if len(node.inputs) < 2:
        return Decline(f"Reshape '{node.name}' has no shape input")
    allow_zero = bool(node.attrs.get("allowzero", 0))
    batch = data.shape[0]
    flattened = f"{described} to [N, {features}]"
    constant = constant_values(node.inputs[1])
    if constant is not None:
        target = [int(v) for v in constant.reshape(-1)]
        flattens, literal = _flattens(target, batch, data.shape, features, allow_zero)
        if not flattens:
            return Decline(f"Reshape '{node.name}' to {target} does not flatten {flattened}")
        note = f"the Reshape fixes batch size {target[0]}; the converted model takes any batch" if literal else ""
    else:
        computation = describe_computation(node.inputs[1])
        for size in (batch,) if isinstance(batch, int) else PROBE_BATCHES:
            try:
                target = [int(v) for v in evaluate(node.inputs[1], size).reshape(-1)]
            except NotEvaluable as why:
                return Decline(f"Reshape '{node.name}' takes its shape from {computation}, which cannot be "
                               f"evaluated at the training size: {why}")
            if not _flattens(target, size, data.shape, features, allow_zero)[0]:
                return Decline(f"Reshape '{node.name}' takes its shape from {computation}, which gives {target} "
                               f"at batch {size}: not a flattening of {flattened}")
        note = f"shape computed by {computation}, evaluated at the training size: [N, {features}]"
    return note


#: Global poolings and their kind.
GLOBAL_POOLS = {"GlobalAveragePool": "average", "GlobalMaxPool": "max", "ReduceMean": "average",
                "ReduceMax": "max"}


def _axes(node: gs.Node) -> Optional[FrozenSet[int]]:
    """The axes a Reduce or Squeeze acts on, counted from 0 on its input (an attribute before opset 13/18,
    a constant input after); None when not given or not constant."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        values = constant_values(node.inputs[1])
        axes = None if values is None else values.reshape(-1).tolist()
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 0
    return None if axes is None else frozenset(int(a) + rank if int(a) < 0 else int(a) for a in axes)


class _Pooling(NamedTuple):
    pool: GlobalPool
    #: The channels-first feature map that is pooled.
    source: gs.Tensor
    #: Whether the pooled axes are kept (as 1s), and which axes of the pool's own input they are.
    keeps: bool
    axes: FrozenSet[int]


def _global_pool(node: Optional[gs.Node]) -> Optional[_Pooling]:
    """The pooling if `node` pools over every spatial axis: GlobalAveragePool/GlobalMaxPool, or ReduceMean/
    ReduceMax over the spatial axes of a channels-first map or of a Transpose of one to channels last
    (Keras GlobalAveragePooling2D)."""
    if node is None or node.op not in GLOBAL_POOLS or not in_default_domain(node) or not node.inputs:
        return None
    pool, data = GlobalPool(node.name, node.op, GLOBAL_POOLS[node.op]), node.inputs[0]
    rank = len(data.shape) if data.shape is not None else 0
    if rank < 3:
        return None
    channels_first = frozenset(range(2, rank))
    if node.op.startswith("Global"):
        return _Pooling(pool, data, True, channels_first)
    axes = _axes(node)
    if axes is None:
        return None
    keeps = bool(node.attrs.get("keepdims", 1))
    if axes == channels_first:
        return _Pooling(pool, data, keeps, axes)
    transpose = producer(data)
    if axes == frozenset(range(1, rank - 1)) and transpose is not None \
            and is_transpose(transpose, to_channels_last(rank)):
        return _Pooling(pool, transpose.inputs[0], keeps, axes)
    return None


def match_global_pool(node: gs.Node) -> Union[Flattening, Decline, None]:
    """A global pooling and a flattening of what it gives: GlobalAveragePool/GlobalMaxPool or ReduceMean/
    ReduceMax (keepdims=1) followed by Flatten, Squeeze or Reshape to [N, C]; or a ReduceMean/ReduceMax over
    the spatial axes with keepdims=0, which is its own flattening (PyTorch `x.mean((2, 3))`, Keras
    GlobalAveragePooling2D through tf2onnx)."""
    note = ""
    found = _global_pool(node)
    if found is not None and not found.keeps:
        spelled = node.op
    elif node.op in ("Flatten", "Squeeze", "Reshape"):
        found = _global_pool(producer(node.inputs[0]))
        if found is None or not found.keeps:
            return None
        spelled = f"{found.pool.op} + {node.op}"
        pooled = node.inputs[0]
        if node.op == "Flatten" and node.attrs.get("axis", 1) != 1:
            return Decline(f"Flatten '{node.name}' has axis {node.attrs.get('axis')}, not 1")
        if node.op == "Squeeze" and _axes(node) != found.axes:
            return Decline(f"Squeeze '{node.name}' does not squeeze exactly the pooled axes {sorted(found.axes)}")
        if node.op == "Reshape":
            channels = spatial_source_shape(found.source)
            if isinstance(channels, Decline):
                return channels
            note = _reshape_flattens(node, channels[0], f"the pooled {list(pooled.shape or [])}")
            if isinstance(note, Decline):
                return note
    else:
        return None
    shape = spatial_source_shape(found.source)
    if isinstance(shape, Decline):
        return shape
    return Flattening(node=node.name, op=spelled, source=found.source.name, source_shape=shape, note=note,
                      pool=found.pool)


FLATTENINGS: Tuple[Callable[[gs.Node], Union[Flattening, Decline, None]], ...] = (
    match_global_pool,
    match_flatten,
    match_reshape,
)


# ---------------------------------------------------------------------------- linear-layer vocabulary

def dequantized_constant(tensor: gs.Tensor) -> Union[Quantized, Decline, None]:
    """The constant behind DequantizeLinear(values, scale[, zero_point]) with constant inputs (QDQ models),
    a Decline for a form that cannot be kept exactly (blocked quantization), or None if it is not one."""
    node = producer(tensor)
    if node is None or node.op != "DequantizeLinear" or not in_default_domain(node):
        return None
    operands = [constant_values(t) if t.name else None for t in node.inputs]
    given = [i for i, t in enumerate(node.inputs) if t.name]
    if any(operands[i] is None for i in given) or len(given) < 2:
        return None
    values, scale = operands[0], operands[1]
    zero_point = operands[2] if len(operands) > 2 else None
    if node.attrs.get("block_size", 0):
        return Decline(f"DequantizeLinear '{node.name}' uses blocked quantization, which is not kept")
    if scale.size == 1:
        return Quantized(values, scale, zero_point, axis=None)
    axis = int(node.attrs.get("axis", 1)) % values.ndim
    return Quantized(values, scale.reshape(-1), None if zero_point is None else zero_point.reshape(-1), axis)


def constant_or_dequantized(tensor: gs.Tensor) -> Union[np.ndarray, Quantized, Decline, None]:
    values = constant_values(tensor)
    return values if values is not None else dequantized_constant(tensor)


def constant_float_values(tensor: gs.Tensor) -> Optional[np.ndarray]:
    """The values of a constant, or of a dequantized constant (for checks that only read them)."""
    found = constant_or_dequantized(tensor)
    if isinstance(found, Quantized):
        return found.dequantized()
    return found if isinstance(found, np.ndarray) else None


def _weight(node: gs.Node, index: int, label: str) -> Union[Tuple[np.ndarray, Optional[Quantized]], Decline]:
    """A 2-D weight, as float values plus its quantized form when it comes through DequantizeLinear."""
    found = constant_or_dequantized(node.inputs[index])
    if isinstance(found, Decline):
        return found
    if found is None:
        return Decline(f"weight {label} '{node.inputs[index].name}' is not a constant")
    values = found.values if isinstance(found, Quantized) else found
    if values.ndim != 2:
        return Decline(f"weight {label} '{node.inputs[index].name}' has shape {list(values.shape)}, not 2-D")
    if isinstance(found, Quantized):
        return found.dequantized(), found
    return found, None


def _by_output_feature(quantized: Optional[Quantized], transposed: bool,
                       node: gs.Node) -> Union[Optional[Quantized], Decline]:
    """A quantized weight laid out as [K, in]; per-channel scales must run along K (the Conv's axis 0)."""
    if quantized is None:
        return None
    values, axis = (quantized.values.T, None if quantized.axis is None else 1 - quantized.axis) if transposed \
        else (quantized.values, quantized.axis)
    if axis not in (None, 0):
        return Decline(f"{node.op} '{node.name}' has a weight quantized per input feature, which a Conv weight "
                       "cannot keep (its per-channel axis is the output feature)")
    return quantized.relaid(values, axis)


def match_gemm(node: gs.Node, data: gs.Tensor) -> Union[LinearLayer, Decline, None]:
    """Gemm: Y = alpha * A' * B' + beta * C, with A the features.

    Spec: "A' = transpose(A) if transA else A", "B' = transpose(B) if transB else B", and C "should be
    unidirectional broadcastable to (M, N)" (here (batch, K)). transA=1 would mix the batch into the
    product, so it is declined. B and C may come through DequantizeLinear (QDQ models); they stay quantized.
    """
    if node.op != "Gemm":
        return None
    if node.inputs[0] is not data:
        return Decline(f"Gemm '{node.name}' reads the features as its weight B, not as A")
    if node.attrs.get("transA", 0):
        return Decline(f"Gemm '{node.name}' has transA=1, which mixes the batch axis into the product")
    found = _weight(node, 1, "B")
    if isinstance(found, Decline):
        return found
    b, b_quantized = found
    trans_b = bool(node.attrs.get("transB", 0))
    weight = b if trans_b else b.T
    weight_quantized = _by_output_feature(b_quantized, not trans_b, node)
    if isinstance(weight_quantized, Decline):
        return weight_quantized
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    if alpha != 1.0:
        if weight_quantized is not None:
            return Decline(f"Gemm '{node.name}' scales a quantized weight by alpha={alpha:g}; the product would "
                           "not stay quantized exactly")
        weight = (weight * alpha).astype(b.dtype)
    bias, bias_quantized = None, None
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = constant_or_dequantized(node.inputs[2])
        if isinstance(c, Decline):
            return c
        if c is None:
            return Decline(f"bias C '{node.inputs[2].name}' of Gemm '{node.name}' is not a constant")
        c_values = c.values if isinstance(c, Quantized) else c
        if per_feature_vector(c_values, weight.shape[0]) is None or (isinstance(c, Quantized) and c_values.ndim != 1):
            return Decline(f"bias C of Gemm '{node.name}' has shape {list(c_values.shape)}, which is not one value "
                           "per output feature")
        if isinstance(c, Quantized):
            if beta != 1.0:
                return Decline(f"Gemm '{node.name}' scales a quantized bias by beta={beta:g}; it would not stay "
                               "quantized exactly")
            bias_quantized, c = c, c.dequantized()
        bias = per_feature_vector(c, weight.shape[0])
        bias = (bias * beta).astype(c.dtype) if beta != 1.0 else np.array(bias)
    unusual = ([] if trans_b else ["transB=0"]) + \
        [f"{name}={value:g}" for name, value in (("alpha", alpha), ("beta", beta)) if value != 1.0]
    spelling = " ".join(["Gemm"] + unusual)
    return LinearLayer(nodes=(node.name,), spelling=spelling, input=data.name, output=node.outputs[0].name,
                       weight=weight, bias=bias, weight_quantized=weight_quantized, bias_quantized=bias_quantized)


def _bias_add(matmul: gs.Node, features: int, graph_outputs: FrozenSet[str]) -> Optional[Tuple[gs.Node, np.ndarray]]:
    """The Add right after a MatMul that adds a constant per-feature bias, if there is one."""
    out = matmul.outputs[0]
    if out.name in graph_outputs or len(out.outputs) != 1 or out.outputs[0].op != "Add":
        return None
    add = out.outputs[0]
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    values = constant_float_values(other)
    bias = None if values is None else per_feature_vector(values, features)
    return None if bias is None else (add, np.array(bias))


def match_matmul(node: gs.Node, data: gs.Tensor, graph_outputs: FrozenSet[str]) -> Union[LinearLayer, Decline, None]:
    """MatMul (+ Add of a constant bias): PyTorch dynamo, tf2onnx Dense, Paddle."""
    if node.op != "MatMul":
        return None
    if node.inputs[0] is not data:
        return Decline(f"MatMul '{node.name}' has the features as its right operand")
    found = _weight(node, 1, "B")
    if isinstance(found, Decline):
        return found
    b, b_quantized = found
    weight = b.T
    weight_quantized = _by_output_feature(b_quantized, True, node)
    if isinstance(weight_quantized, Decline):
        return weight_quantized
    fused = _bias_add(node, weight.shape[0], graph_outputs)
    if fused is None:
        return LinearLayer(nodes=(node.name,), spelling="MatMul", input=data.name, output=node.outputs[0].name,
                           weight=weight, bias=None, weight_quantized=weight_quantized)
    add, bias = fused
    return LinearLayer(nodes=(node.name, add.name), spelling="MatMul + Add", input=data.name,
                       output=add.outputs[0].name, weight=weight, bias=bias, weight_quantized=weight_quantized)


def match_linear(node: gs.Node, data: gs.Tensor, in_features: int,
                 graph_outputs: FrozenSet[str]) -> Union[LinearLayer, Decline, None]:
    """Try every linear-layer spelling; check the layer reads exactly `in_features` values."""
    for result in (match_gemm(node, data), match_matmul(node, data, graph_outputs)):
        if isinstance(result, LinearLayer) and result.weight.shape[1] != in_features:
            return Decline(f"{node.op} '{node.name}' expects {result.weight.shape[1]} input features, "
                           f"its input has {in_features}")
        if result is not None:
            return result
    return None


# ------------------------------------------------------------------------------ pass-through vocabulary
# A handler gets the node, the index of its input that carries head features and a `HeadContext`, and
# says what the node becomes on [N, K, *spatial].

@dataclass(frozen=True)
class HeadContext:
    features: int  # K of the head tensor the node reads
    spatial_rank: int
    opset: int
    graph_outputs: FrozenSet[str]
    #: Every tensor of the head found so far -> its number of features.
    head_features: Mapping[str, int] = field(default_factory=dict)

    def in_use(self, tensor: gs.Tensor) -> bool:
        return bool(tensor.outputs) or tensor.name in self.graph_outputs


PassThroughHandler = Callable[[gs.Node, int, HeadContext], Union[PassThrough, Decline]]


def _pass(node: gs.Node, index: int, action: str, becomes: str, **extra) -> PassThrough:
    return PassThrough(node=node.name, op=node.op, input=node.inputs[index].name, output=node.outputs[0].name,
                       action=action, becomes=becomes, **extra)


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
    return _other_inputs_are_scalars(node, index) or _pass(node, index, KEEP, "unchanged (elementwise)")


def prelu(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """PRelu: a per-feature slope [K] must become [K, 1, ...] (unidirectional broadcasting)."""
    slope = constant_values(node.inputs[1]) if index == 0 else None
    reshaped = None if slope is None else per_location_constant(slope, ctx.features, ctx.spatial_rank)
    if reshaped is None:
        return Decline(f"slope of PRelu '{node.name}' is not a constant with one value per feature")
    return _pass(node, index, KEEP, f"PRelu with slope shape {list(reshaped.shape)}", constants={1: reshaped})


def binary_with_constant(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """Add/Sub/Mul/Div by a per-feature constant (either side), reshaped to [K, 1, ...]; or of two head
    tensors with the same K (swish: x * Sigmoid(x)), which is elementwise per location as it stands."""
    other_index = 1 - index
    if ctx.head_features.get(node.inputs[other_index].name) == ctx.features:
        return _pass(node, index, KEEP, "unchanged (elementwise on two head tensors)")
    values = constant_float_values(node.inputs[other_index])
    reshaped = None if values is None else per_location_constant(values, ctx.features, ctx.spatial_rank)
    if reshaped is None:
        return Decline(f"{node.op} '{node.name}' combines the head with '{node.inputs[other_index].name}', "
                       "which is not a constant of one value per feature")
    changed = {} if reshaped is values else {other_index: reshaped}
    return _pass(node, index, KEEP, f"{node.op} by constant of shape {list(reshaped.shape)}", constants=changed)


def batch_normalization(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """BatchNormalization normalises axis 1, which stays the feature axis: unchanged."""
    if node.attrs.get("training_mode", 0):
        return Decline(f"BatchNormalization '{node.name}' is in training mode")
    if any(ctx.in_use(out) for out in node.outputs[1:]):
        return Decline(f"BatchNormalization '{node.name}' has its running statistics outputs in use")
    for tensor in node.inputs[1:]:
        values = constant_float_values(tensor)
        if values is None or values.shape != (ctx.features,):
            return Decline(f"BatchNormalization '{node.name}' parameter '{tensor.name}' is not a constant [K]")
    return _pass(node, index, KEEP, "unchanged (normalises axis 1)")


def dropout(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """Dropout is the identity at inference; the mask output must be unused."""
    if len(node.outputs) > 1 and ctx.in_use(node.outputs[1]):
        return Decline(f"the mask of Dropout '{node.name}' is used")
    if len(node.inputs) > 2 and node.inputs[2].name:
        mode = constant_values(node.inputs[2])
        if mode is None or bool(mode.reshape(-1)[0]):
            return Decline(f"Dropout '{node.name}' may run in training mode")
    return _pass(node, index, REMOVE, "removed (identity at inference)")


def softmax_family(node: gs.Node, index: int, ctx: HeadContext) -> Union[PassThrough, Decline]:
    """Softmax / LogSoftmax / Hardmax over the features, kept per location.

    Opset 13 changed the meaning: before, the input is coerced to 2-D at `axis` (default 1) and
    normalised over everything after it — on [N, K, h, w], axis 1 would normalise over K*h*w. From 13,
    the op runs along `axis` alone (default -1). So from 13 the axis becomes 1; before 13 the features
    are moved last, where the old coercion gives one row per location.
    """
    default = -1 if ctx.opset >= 13 else 1
    axis = node.attrs.get("axis", default)
    if axis not in (1, -1):
        return Decline(f"{node.op} '{node.name}' runs over axis {axis}, not over the features")
    if ctx.opset >= 13:
        return _pass(node, index, KEEP, f"{node.op} over axis 1", attrs={"axis": 1})
    return _pass(node, index, AXIS_LAST, f"Transpose, {node.op} over the last axis, Transpose back "
                 f"(opset {ctx.opset} semantics)", attrs={"axis": ctx.spatial_rank + 1})


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
        return _pass(node, index, KEEP, "unchanged (per-tensor quantization)")
    if scale.size == ctx.features and int(node.attrs.get("axis", 1)) in (1, -1):
        return _pass(node, index, KEEP, "per-feature quantization on axis 1", attrs={"axis": 1})
    return Decline(f"{node.op} '{node.name}' quantizes with {scale.size} scales, not one or one per feature")


ELEMENTWISE_OPS = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Clip", "HardSigmoid",
                   "HardSwish", "Softplus", "Softsign", "Gelu", "Identity", "Abs", "Neg", "Exp", "Erf",
                   "ThresholdedRelu", "Mish", "Sqrt")

PASS_THROUGH: Dict[str, PassThroughHandler] = {
    **{op: elementwise for op in ELEMENTWISE_OPS},
    "PRelu": prelu,
    **{op: binary_with_constant for op in ("Add", "Sub", "Mul", "Div")},
    "BatchNormalization": batch_normalization,
    "Dropout": dropout,
    **{op: softmax_family for op in ("Softmax", "LogSoftmax", "Hardmax")},
    **{op: quantize_family for op in ("QuantizeLinear", "DequantizeLinear")},
}


# --------------------------------------------------------------------------------------- head search

class _Decline(Exception):
    """Internal: a head cannot be converted, for `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _elementwise_chain(data: gs.Tensor, opset: int,
                       graph_outputs: FrozenSet[str]) -> Tuple[gs.Tensor, Tuple[PassThrough, ...]]:
    """Walk back from `data` over a chain of ops that act on each element alone with scalar constants (the
    Q/DQ pair a QDQ model puts after its Flatten, Dropout, Relu...): they commute with flattenings and
    transposes. Returns the tensor the chain starts from and its ops in graph order."""
    steps: List[PassThrough] = []
    context = HeadContext(features=0, spatial_rank=0, opset=opset, graph_outputs=graph_outputs)
    while True:
        node = producer(data)
        if node is None or node.op not in PASS_THROUGH or not in_default_domain(node) or len(data.outputs) != 1 \
                or data.name in graph_outputs or len(node.inputs) == 0 or node.inputs[0].name == "":
            break
        step = PASS_THROUGH[node.op](node, 0, context)
        if isinstance(step, Decline) or step.constants or step.attrs or step.action == AXIS_LAST:
            break
        steps.append(step)
        data = node.inputs[0]
    return data, tuple(reversed(steps))


def _first_layer(node: gs.Node, opset: int, graph_outputs: FrozenSet[str],
                 pooling: str = KEEP_POOL) -> Tuple[Flattening, Tuple[PassThrough, ...], LinearLayer]:
    data = node.inputs[0]
    flat, prelude = _elementwise_chain(data, opset, graph_outputs)
    source = producer(flat)
    if source is None:
        raise _Decline(f"input '{data.name}' is not a flattened spatial tensor (it is a graph input or a constant)")
    flattening = None
    for matcher in FLATTENINGS:
        flattening = matcher(source)
        if flattening is not None:
            break
    if flattening is None:
        raise _Decline(f"input '{data.name}' is not a flattened spatial tensor "
                       f"(it comes from {source.op} '{source.name}')")
    if isinstance(flattening, Decline):
        raise _Decline(flattening.reason)
    if flattening.pool is not None:
        flattening = replace(flattening, pool=replace(flattening.pool, mode=pooling))
    first = match_linear(node, data, flattening.features, graph_outputs)
    if not isinstance(first, LinearLayer):
        raise _Decline(first.reason if first else f"{node.op} '{node.name}' is not a linear layer")
    return flattening, flattening.prelude + prelude, first


def _follow(graph: gs.Graph, first: LinearLayer, base: HeadContext) -> Tuple[Step, ...]:
    """Every node downstream of the first layer, converted in graph (topological) order."""
    features: Dict[str, int] = {first.output: first.features}  # head tensors -> K
    members = set(first.nodes)
    steps: List[Step] = []
    for node in graph.nodes:
        if node.name in members:
            continue
        head_inputs = [i for i, t in enumerate(node.inputs) if t.name in features]
        if not head_inputs:
            continue
        index = head_inputs[0]
        k = features[node.inputs[index].name]
        ctx = replace(base, features=k, head_features=features)
        step: Union[Step, Decline, None]
        if node.op in LINEAR_OPS:
            step = match_linear(node, node.inputs[index], k, ctx.graph_outputs)
        elif node.op in PASS_THROUGH and in_default_domain(node):
            step = PASS_THROUGH[node.op](node, index, ctx)
        else:
            step = None
        if step is None:
            raise _Decline(f"'{node.inputs[index].name}' feeds {node.op} '{node.name}', which has no "
                           "per-location form; the head would change shape there")
        if isinstance(step, Decline):
            raise _Decline(step.reason)
        steps.append(step)
        features[step.output] = step.features if isinstance(step, LinearLayer) else k
        members.update(step.nodes if isinstance(step, LinearLayer) else (step.node,))
    return tuple(steps)


def _downstream_linears(tensor: gs.Tensor) -> List[str]:
    """Names of the Gemm/MatMul nodes that depend on `tensor`."""
    found, seen, stack = [], set(), [tensor]
    while stack:
        for node in stack.pop().outputs:
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op in LINEAR_OPS:
                found.append(node.name)
            stack.extend(node.outputs)
    return found


def upstream_inputs(graph: gs.Graph, sources: Sequence[str]) -> Tuple[str, ...]:
    """Graph inputs upstream of the given tensors, in graph-input order."""
    tensors = graph.tensors()
    seen, stack, found = set(), [tensors[s] for s in sources], set()
    input_names = {t.name for t in graph.inputs}
    while stack:
        tensor = stack.pop()
        if tensor.name in seen:
            continue
        seen.add(tensor.name)
        if tensor.name in input_names:
            found.add(tensor.name)
        for node in tensor.inputs:
            stack.extend(node.inputs)
    return tuple(t.name for t in graph.inputs if t.name in found)


#: `output_layout` choices: AUTO gives each head's outputs the layout of the image input it reads.
AUTO = "auto"


def find_heads(graph: gs.Graph, output_layout: str = AUTO, pooling: str = KEEP_POOL) -> Plan:
    """Plan the conversion of every fully connected head in `graph` (which is sorted, not otherwise changed).

    `output_layout` is CHANNELS_FIRST ([N, K, *spatial]), CHANNELS_LAST ([N, *spatial, K]) or AUTO: channels
    last for heads on an NHWC image input (tf2onnx), channels first otherwise. `pooling` says what becomes
    of a global pooling before a head (see `plan.POOLINGS`).
    """
    if output_layout not in (AUTO,) + LAYOUTS:
        raise ValueError(f"output_layout must be one of {', '.join((AUTO,) + LAYOUTS)}, not {output_layout!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    graph.toposort()
    tensors = graph.tensors()
    opset = int(graph.opset or 1)
    graph_outputs = frozenset(t.name for t in graph.outputs)
    heads: List[HeadPlan] = []
    claimed: Dict[str, str] = {}  # linear node -> why it is not a head's first layer
    skipped: List[Skipped] = []
    for node in graph.nodes:
        if node.op not in LINEAR_OPS or node.name in claimed:
            continue
        first = None
        try:
            flattening, prelude, first = _first_layer(node, opset, graph_outputs, pooling)
            context = HeadContext(first.features, len(flattening.spatial_shape), opset, graph_outputs)
            steps = _follow(graph, first, context)
        except _Decline as declined:
            skipped.append(Skipped(node.name, node.op, declined.reason))
            if first is not None:  # the later layers of this head are not heads of their own
                for later in _downstream_linears(graph.tensors()[first.output]):
                    claimed.setdefault(later, f"part of the head starting at '{node.name}', which was not "
                                              f"converted: {declined.reason}")
            continue
        produced = {first.output, *(s.output for s in steps)}
        outputs = tuple(t.name for t in graph.outputs if t.name in produced)
        if not outputs:
            skipped.append(Skipped(node.name, node.op, "its result reaches no graph output"))
            continue
        layout = output_layout
        if layout == AUTO:
            feeding = {input_layout(tensors[name]) for name in upstream_inputs(graph, [flattening.source])}
            layout = CHANNELS_LAST if feeding == {CHANNELS_LAST} else CHANNELS_FIRST
        head = HeadPlan(flattening=flattening, first=first, steps=steps, outputs=outputs, output_layout=layout,
                        prelude=prelude)
        heads.append(head)
        claimed.update({name: "" for name in head.nodes})
    # Later layers of a declined head are reported with that head's reason, not their own.
    for node in graph.nodes:
        reason = claimed.get(node.name)
        if node.op in LINEAR_OPS and reason:
            skipped.append(Skipped(node.name, node.op, reason))
    sources = [h.flattening.source for h in heads]
    trunk_inputs = upstream_inputs(graph, sources)
    plan = Plan(heads=tuple(heads), skipped=tuple(skipped), trunk_inputs=trunk_inputs, opset=opset,
                input_layouts={name: input_layout(tensors[name]) for name in trunk_inputs})
    logger.debug("plan: %d heads, %d skipped", len(plan.heads), len(plan.skipped))
    return plan

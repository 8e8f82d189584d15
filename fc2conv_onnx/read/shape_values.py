"""Evaluate the small integer sub-graphs that exporters use to compute a Reshape's target shape.

`x.view(x.size(0), -1)` exports (TorchScript) as Shape -> Gather -> Unsqueeze -> Concat -> Reshape, and a
Keras Flatten (tf2onnx) as Shape -> Gather -> Cast -> Slice -> Concat -> Cast -> Reshape. Their values
follow from the static shapes of the trunk's tensors at the training size, except for the batch, which is
often symbolic: `evaluate` takes the batch size to put in its place, so a caller can evaluate at two
batch sizes and see which entries follow the batch. Folding such a shape into a constant is *not* done
for the trunk: there it would bake in the training size.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Set

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..model.registry import attach, entry, fact


#: The operands of a node, one per input: an array, or None for an omitted optional input and for Shape's
#: input, which is never read. (Any: each evaluator knows which of its operands may be None.)
Operands = List[Any]


#: Batch sizes a computed shape is evaluated at, to tell entries that follow the batch from constants (two, so
#: that a batch baked in as a literal cannot pass for one that follows it).
PROBE_BATCHES = (2, 3)


class NotEvaluable(Exception):
    """The shape sub-graph uses an op or a tensor whose value is not known at the training size."""


def _attr_or_input(node: gs.Node, index: int, attr: str, values: Operands) -> Any:
    """An operand that moved from an attribute to an input over the opsets (Unsqueeze axes, Slice starts...)."""
    if len(values) > index and values[index] is not None:
        return values[index]
    return np.array(node.attrs[attr], dtype=np.int64) if attr in node.attrs else None


def _shape(node: gs.Node, values: Operands, batch: int) -> np.ndarray:
    shape = node.inputs[0].shape
    if shape is None:
        raise NotEvaluable(f"the shape of '{node.inputs[0].name}' is unknown")
    dims = []
    for axis, dim in enumerate(shape):
        if isinstance(dim, int):
            dims.append(dim)
        elif axis == 0:
            dims.append(batch)  # a symbolic leading dim is the batch
        else:
            raise NotEvaluable(f"'{node.inputs[0].name}' has the symbolic dim {dim!r} at axis {axis}")
    full = np.array(dims, dtype=np.int64)
    start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
    return full[start:end]


def _unsqueeze(node: gs.Node, values: Operands, batch: int) -> np.ndarray:
    data, axes = values[0], _attr_or_input(node, 1, "axes", values)
    rank = data.ndim + len(axes)
    return np.expand_dims(data, tuple(int(a) % rank for a in axes))


def _squeeze(node: gs.Node, values: Operands, batch: int) -> np.ndarray:
    data, axes = values[0], _attr_or_input(node, 1, "axes", values)
    return np.squeeze(data) if axes is None else np.squeeze(data, tuple(int(a) % data.ndim for a in axes))


def _slice(node: gs.Node, values: Operands, batch: int) -> np.ndarray:
    data = values[0]
    starts, ends = _attr_or_input(node, 1, "starts", values), _attr_or_input(node, 2, "ends", values)
    axes = _attr_or_input(node, 3, "axes", values)
    steps = values[4] if len(values) > 4 and values[4] is not None else np.ones(len(starts), dtype=np.int64)
    axes = range(len(starts)) if axes is None else axes
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return data[tuple(index)]


def _cast(node: gs.Node, values: Operands, batch: int) -> np.ndarray:
    return values[0].astype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))


def _binary(function: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    return lambda node, values, batch: function(values[0], values[1])


Evaluator = Callable[[gs.Node, Operands, int], np.ndarray]

# Each op the evaluator knows, attached to its registry entry.
attach("shape_value", "Shape", value=_shape)
attach("shape_value", "Gather",
       value=lambda node, values, batch: np.take(values[0], values[1], axis=int(node.attrs.get("axis", 0))))
attach("shape_value", "Unsqueeze", value=_unsqueeze)
attach("shape_value", "Squeeze", value=_squeeze)
attach("shape_value", "Concat", value=lambda node, values, batch: np.concatenate([np.atleast_1d(v) for v in values],
                                                                                 axis=int(node.attrs.get("axis", 0))))
attach("shape_value", "Slice", value=_slice)
attach("shape_value", "Cast", value=_cast)
attach("shape_value", "Identity", value=lambda node, values, batch: values[0])
attach("shape_value", "Add", value=_binary(np.add))
attach("shape_value", "Sub", value=_binary(np.subtract))
attach("shape_value", "Mul", value=_binary(np.multiply))
attach("shape_value", "Div", value=_binary(lambda a, b: a // b if a.dtype.kind in "iu" else a / b))
attach("shape_value", "Range", value=lambda node, values, batch: np.arange(values[0], values[1], values[2]))
attach("shape_value", "ReduceProd",
       value=lambda node, values, batch: np.prod(values[0], keepdims=bool(node.attrs.get("keepdims", 1))))


def evaluate(tensor: gs.Tensor, batch: int) -> np.ndarray:
    """The value of `tensor` at the training size with the batch size `batch`; raises NotEvaluable."""
    cache: Dict[str, np.ndarray] = {}

    def value(t: gs.Tensor) -> np.ndarray:
        if isinstance(t, gs.Constant):
            return np.asarray(t.values)
        if t.name in cache:
            return cache[t.name]
        if not t.inputs:
            raise NotEvaluable(f"it depends on the graph input '{t.name}'")
        node = t.inputs[0]
        found = entry(node)
        if found is None or found.shape_value is None or len(node.outputs) != 1:
            raise NotEvaluable(f"it is computed by {node.op} '{node.name}', which the shape evaluator does not know")
        # Shape only reads its input's static shape: that input is not evaluated.
        operands = [None if found.reads_shape_only or not i.name else value(i) for i in node.inputs]
        cache[t.name] = np.asarray(found.shape_value(node, operands, batch))
        return cache[t.name]

    return value(tensor)


def describe_computation(tensor: gs.Tensor, limit: int = 8) -> str:
    """'Shape -> Gather -> Unsqueeze -> Concat': the ops that compute `tensor`, producers first."""
    ops: List[str] = []
    seen: Set[int] = set()
    stack = [tensor]
    while stack and len(ops) < limit:
        t = stack.pop()
        if isinstance(t, gs.Constant) or not t.inputs or id(t) in seen:
            continue
        seen.add(id(t))
        node = t.inputs[0]
        ops.append(node.op)
        if not fact(node, "reads_shape_only"):
            stack.extend(node.inputs)
    return " -> ".join(reversed(ops))

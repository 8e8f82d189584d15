"""Evaluate the small integer sub-graphs that exporters use to compute a Reshape's target shape.

`x.view(x.size(0), -1)` exports (TorchScript) as Shape -> Gather -> Unsqueeze -> Concat -> Reshape, and a
Keras Flatten (tf2onnx) as Shape -> Gather -> Cast -> Slice -> Concat -> Cast -> Reshape. Their values
follow from the static shapes of the trunk's tensors at the training size, except for the batch, which is
often symbolic: `evaluate` takes the batch sizes to put in its place, so a caller can evaluate at two
batch sizes and see which entries follow the batch. Folding such a shape into a constant is *not* done
for the trunk: there it would bake in the training size.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Set

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import first_line
from ..model.registry import fact, in_default_domain
from .reference import evaluator

#: Batch sizes a computed shape is evaluated at, to tell entries that follow the batch from constants (two, so
#: that a batch baked in as a literal cannot pass for one that follows it).
PROBE_BATCHES = (2, 3)


class NotEvaluable(Exception):
    """The shape sub-graph uses an op or a tensor whose value is not known at the training size."""


def evaluate(tensor: gs.Tensor, batches: Sequence[int], opset: int) -> List[np.ndarray]:
    """The value of `tensor` at the training size, once for each batch size of `batches`; raises
    NotEvaluable.

    The sub-graph that computes it is run by onnx's reference evaluator (`reference`), as onnx defines each op
    at `opset`. What it reads of the trunk is shapes only (Shape nodes): each such tensor is fed as zeros of
    its static shape, its symbolic leading dim (the batch) set to each batch size in turn.
    """
    nodes: List[gs.Node] = []
    shaped: Dict[str, gs.Tensor] = {}  # the tensors Shape nodes read: fed, not computed
    seen: Set[int] = set()

    def visit(t: gs.Tensor) -> None:
        if isinstance(t, gs.Constant) or not t.name or id(t) in seen:
            return
        seen.add(id(t))
        if not t.inputs:
            raise NotEvaluable(f"it depends on the graph input '{t.name}'")
        node = t.inputs[0]
        if not in_default_domain(node) or any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            raise NotEvaluable(f"it is computed by {node.op} '{node.name}', which onnx's evaluator does not run "
                               "(another domain, or a sub-graph)")
        for i in node.inputs:
            if fact(node, "reads_shape_only"):
                shaped.setdefault(i.name, i)
            else:
                visit(i)
        nodes.append(node)  # after its producers: graph order

    visit(tensor)
    for name, t in shaped.items():
        if t.shape is None:
            raise NotEvaluable(f"the shape of '{name}' is unknown")
        symbolic = [(axis, d) for axis, d in enumerate(t.shape) if not isinstance(d, int) and axis > 0]
        if symbolic:
            raise NotEvaluable(f"'{name}' has the symbolic dim {symbolic[0][1]!r} at axis {symbolic[0][0]}")
    if isinstance(tensor, gs.Constant):
        return [np.asarray(tensor.values)] * len(batches)
    if not nodes:  # an omitted optional input: nothing to evaluate, so nothing may pass for a value
        raise NotEvaluable(f"'{tensor.name}' is not computed by any node")
    try:
        run = evaluator(nodes, opset, {}, inputs=list(shaped.values()), outputs=[tensor])
        return [np.asarray(run.run(None, {name: _zeros(t, batch) for name, t in shaped.items()})[0])
                for batch in batches]
    except Exception as error:  # an op onnx's evaluator does not implement, or a value it refuses
        raise NotEvaluable(first_line(error)) from None


def _zeros(tensor: gs.Tensor, batch: int) -> np.ndarray:
    """Zeros of `tensor`'s static shape, its symbolic leading dim set to `batch`: one zero seen through every
    index (the Shape reading it sees only the shape, so no feature map's worth of memory is filled)."""
    shape = [d if isinstance(d, int) else batch for d in tensor.shape]
    dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
    return np.broadcast_to(np.zeros((), dtype), shape)


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

"""onnx's reference evaluator, run on graphsurgeon nodes: the constants `normalize` folds and the shape
arithmetic exporters write before a Reshape or a Gather (`shape_values`) are computed by one evaluator, as
onnx defines each op at the graph's opset."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from ..model import work


def evaluator(nodes: Sequence[gs.Node], opset: int, known: Mapping[int, Optional[np.ndarray]],
              inputs: Sequence[gs.Tensor] = (), outputs: Optional[Sequence[gs.Tensor]] = None):
    """A ReferenceEvaluator on copies of `nodes` (in graph order), which read constants, the values `known`
    (id(tensor) -> value), the graph inputs `inputs` (fed by name at each run) and one another; it gives
    `outputs` (default: every node's outputs). The weights of a model read from a file stay in the file
    until read (weights.py), which the evaluator cannot do by itself: its copies hold their values."""
    from onnx.reference import ReferenceEvaluator

    copies: Dict[int, gs.Tensor] = {}

    def copy(tensor: gs.Tensor) -> gs.Tensor:
        if id(tensor) not in copies:
            value = known.get(id(tensor))
            if isinstance(tensor, gs.Constant):
                copies[id(tensor)] = gs.Constant(tensor.name, np.asarray(tensor.values))
            elif value is not None:
                copies[id(tensor)] = gs.Constant(tensor.name, np.asarray(value))
            else:
                copies[id(tensor)] = gs.Variable(tensor.name, dtype=tensor.dtype, shape=tensor.shape)
        return copies[id(tensor)]

    graph_inputs = [copy(t) for t in inputs]
    copied = [gs.Node(n.op, n.name, dict(n.attrs), [copy(t) if t.name else gs.Variable("") for t in n.inputs],
                      [copy(t) for t in n.outputs]) for n in nodes]
    wanted = [copy(t) for t in (outputs if outputs is not None else [t for n in nodes for t in n.outputs])]
    work.count(work.EXPORTS)
    model = gs.export_onnx(gs.Graph(nodes=copied, inputs=graph_inputs, outputs=wanted, opset=opset),
                           do_type_check=False)
    return ReferenceEvaluator(model)


def evaluate(nodes: Sequence[gs.Node], opset: int, known: Mapping[int, Optional[np.ndarray]]) -> Dict[int, np.ndarray]:
    """id(tensor) -> value for the outputs of `nodes` (which read only constants, `known` values and one
    another), computed in one run."""
    results: List = evaluator(nodes, opset, known).run(None, {})
    return {id(t): np.asarray(v) for t, v in zip((t for n in nodes for t in n.outputs), results)}

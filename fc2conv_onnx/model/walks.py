"""Walks over a graph: what a tensor is computed from (the trunk's nodes, the graph inputs it reads)."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import onnx_graphsurgeon as gs

from .layout import parameter_inputs


def upstream_inputs(graph: gs.Graph, sources: Sequence[str], parameters: bool = False) -> Tuple[str, ...]:
    """Image inputs upstream of the given tensors, in graph-input order; with `parameters`, the inputs that
    hold per-channel parameters instead (see `layout.is_parameter_shape`)."""
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
    held = parameter_inputs([(t.name, t.shape) for t in graph.inputs])
    return tuple(t.name for t in graph.inputs if t.name in found and (t.name in held) == parameters)


def trunk_nodes(graph: gs.Graph, sources: Sequence[str]) -> List[gs.Node]:
    """The nodes the tensors `sources` are computed from, in graph order."""
    tensors = graph.tensors()
    wanted, stack = set(), [tensors[s] for s in sources if s in tensors]
    while stack:
        for node in stack.pop().inputs:
            if id(node) not in wanted:
                wanted.add(id(node))
                stack.extend(node.inputs)
    return [node for node in graph.nodes if id(node) in wanted]

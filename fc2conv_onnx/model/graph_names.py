"""Names for what a stage adds to a graph: never one that a node or tensor of it already has (ONNX models
name tensors freely, and a collision would wire a new node to the wrong tensor)."""
from __future__ import annotations

from typing import Set

import onnx_graphsurgeon as gs


def taken_names(graph: gs.Graph) -> Set[str]:
    """Every node and tensor name of `graph`."""
    return {node.name for node in graph.nodes if node.name} | set(graph.tensors())


def free_name(taken: Set[str], base: str) -> str:
    """`base`, or `base_2`, `base_3`, ... : the first not in `taken`, which it joins."""
    name, suffix = base, 1
    while name in taken:
        suffix += 1
        name = f"{base}_{suffix}"
    taken.add(name)
    return name

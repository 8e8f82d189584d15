"""Make the graph readable for head matching without changing what it computes.

Exporters hand weights over in several ways; the matchers only want to ask "is this input a constant,
and what are its values?". Here, Constant nodes (Caffe2-era and tf2onnx models use them for weights and
Reshape shapes), Identity nodes of constants (TorchScript) and ConstantOfShape of a constant shape become
graphsurgeon Constants, so one question (`isinstance(t, gs.Constant)`) serves all.
Unnamed and same-named nodes get unique names, since the plan refers to nodes by name. Initializers listed
as graph inputs (IR < 4) are already kept out of the inputs by the graphsurgeon importer.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

logger = logging.getLogger(__name__)

def in_default_domain(node: gs.Node) -> bool:
    """True for standard ONNX ops (graphsurgeon reports the default domain as None)."""
    return node.domain in (None, "", "ai.onnx")


def constant_node_value(node: gs.Node) -> Optional[np.ndarray]:
    """The tensor a Constant node produces, or None for forms we do not read (sparse, strings)."""
    attrs = node.attrs
    if isinstance(attrs.get("value"), gs.Constant):
        return np.asarray(attrs["value"].values)
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    return None


def produced_constant(node: gs.Node) -> Optional[np.ndarray]:
    """The value of a node that produces a constant: Constant, Identity of a constant (the TorchScript
    exporter shares equal initializers that way, e.g. a fresh BatchNorm's weight and running_var),
    ConstantOfShape of a constant shape (Caffe2-era zoo models). None for anything else."""
    if not in_default_domain(node) or len(node.outputs) != 1:
        return None
    if node.op == "Constant":
        return constant_node_value(node)
    if node.op == "Identity" and isinstance(node.inputs[0], gs.Constant):
        return np.asarray(node.inputs[0].values)
    if node.op == "ConstantOfShape" and isinstance(node.inputs[0], gs.Constant):
        fill = node.attrs.get("value")
        fill = np.asarray(fill.values).reshape(-1) if isinstance(fill, gs.Constant) else np.zeros(1, np.float32)
        return np.full(np.asarray(node.inputs[0].values).astype(np.int64), fill[0], dtype=fill.dtype)
    return None


def fold_constant_nodes(graph: gs.Graph) -> int:
    """Turn the outputs of constant-producing nodes into graphsurgeon Constants (in graph order, so
    chains fold too); return how many were folded."""
    folded = 0
    graph_outputs = {id(t) for t in graph.outputs}
    graph.toposort()
    for node in graph.nodes:
        output = node.outputs[0] if len(node.outputs) == 1 else None
        if output is None or id(output) in graph_outputs:
            continue  # a graph output must stay a produced tensor
        values = produced_constant(node)
        if values is None:
            continue
        node.outputs.clear()
        output.to_constant(values)
        folded += 1
    if folded:
        graph.cleanup()
        logger.debug("folded %d Constant nodes into constant tensors", folded)
    return folded


def make_node_names_unique(graph: gs.Graph) -> None:
    """Give every node a unique name: the plan refers to nodes by name, and ONNX allows empty or
    repeated ones."""
    taken = {node.name for node in graph.nodes if node.name}
    seen = set()
    for index, node in enumerate(graph.nodes):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        name = f"{node.name or node.op}_{index}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
        seen.add(name)


def normalize(graph: gs.Graph) -> gs.Graph:
    """Apply every normalization in place and return the graph (for chaining)."""
    fold_constant_nodes(graph)
    make_node_names_unique(graph)
    return graph

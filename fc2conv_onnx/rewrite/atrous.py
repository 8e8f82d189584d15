"""A finer output stride (`--stride`) carried out: the strides, dilations and pads that `plan/stride.py`
planned, set on the trunk's window ops. Why that is exact: `plan/stride.py`."""
from __future__ import annotations

from typing import Optional

import onnx_graphsurgeon as gs

from ..plan.plan import Densify


def apply(graph: gs.Graph, densify: Optional[Densify]) -> None:
    """Set the planned strides, dilations and pads on the trunk's window ops."""
    if densify is None:
        return
    nodes = {node.name: node for node in graph.nodes}
    for change in densify.changes:
        node = nodes[change.node]
        node.attrs["strides"] = list(change.strides)
        if any(d != 1 for d in change.dilations) or "dilations" in node.attrs:  # pools before opset 10/18/19
            node.attrs["dilations"] = list(change.dilations)                  # have no such attribute
        node.attrs["pads"] = list(change.pads)

"""Where the channels of each feature map are, followed through the graph from the image inputs.

ONNX's Conv and pools read and write channels first; exporters of channels-last frameworks (tf2onnx, jax2onnx,
Keras 3 on torch) move each map to channels last after a Conv and back before the next, and do the rest of the
block there: activations, Q/DQ pairs, casts, normalisations and residual joins. A tensor's layout is therefore
not the first Transpose's guess but what its producer makes of its inputs' layouts:

    image (NHWC) ─▶ Transpose to NCHW ─▶ Conv ─▶ Transpose to NHWC ─▶ Add ◀─ (an NHWC map) ─▶ Relu ─▶ ReduceMean
                                          CF                          CL                       CL      over [1, 2]
"""
from __future__ import annotations

from typing import Dict, Optional

import onnx_graphsurgeon as gs

from ..model.layout import (
    CHANNELS_FIRST,
    CHANNELS_LAST,
    input_layout,
    is_transpose,
    to_channels_first,
    to_channels_last,
)
from ..model.registry import LAST_AXIS, LOCAL, PAD, WINDOW
from .trunk_kinds import trunk_kind


def _rank(tensor: gs.Tensor) -> int:
    return len(tensor.shape) if tensor.shape is not None else 0


def _produced_layout(node: gs.Node, layouts: Dict[str, str]) -> Optional[str]:
    """The layout of `node`'s map output, given its inputs' layouts; None when it is not a map or unknown."""
    data = node.inputs[0] if node.inputs else None
    if data is None or _rank(data) < 3:
        return None
    rank, source = _rank(data), layouts.get(data.name)
    if is_transpose(node, to_channels_last(rank)):
        return CHANNELS_LAST if source == CHANNELS_FIRST else None
    if is_transpose(node, to_channels_first(rank)):
        return CHANNELS_FIRST if source == CHANNELS_LAST else None
    kind = trunk_kind(node)
    if kind == WINDOW:  # ONNX convolutions and pools read and write [N, C, *spatial]
        return CHANNELS_FIRST
    if kind in (LOCAL, LAST_AXIS, PAD):  # the map keeps its layout; a join needs its maps to agree
        maps = {layouts.get(t.name) for t in node.inputs if not isinstance(t, gs.Constant) and _rank(t) == rank}
        return maps.pop() if len(maps) == 1 else None
    return None


def map_layouts(graph: gs.Graph) -> Dict[str, str]:
    """Tensor name -> CHANNELS_FIRST or CHANNELS_LAST, for every map (rank 3 or more) whose layout follows
    from the image inputs' (see `layout.input_layout`); the graph is in topological order."""
    layouts = {t.name: input_layout(t) for t in graph.inputs if _rank(t) >= 3}
    for node in graph.nodes:
        layout = _produced_layout(node, layouts)
        if layout is not None:
            layouts.update({t.name: layout for t in node.outputs if _rank(t) == _rank(node.inputs[0])})
    return layouts

"""Global poolings: the ops that collapse every spatial axis, where a pooled head starts."""
from __future__ import annotations

from typing import Optional

import onnx_graphsurgeon as gs

from ..model.registry import fact
from ..read.constants import axes_of
from ..read.pool_views import channels_last_region, pools_every_axis
from .plan import FLAT, KEEP_POOL, MAP, MAP_LAST, MODES, GlobalPool, PoolMode


def global_pool(node: Optional[gs.Node], mode: PoolMode = MODES[KEEP_POOL]) -> Optional[GlobalPool]:
    """The pooling if `node` pools over every spatial axis: GlobalAveragePool/GlobalMaxPool, or ReduceMean/
    ReduceMax over the spatial axes of a channels-first map or of a channels-last one computed from a
    Transpose of one (Keras GlobalAveragePooling2D through tf2onnx), keeping the pooled axes or not."""
    kind = fact(node, "global_pool") if node is not None else None
    if node is None or kind is None or not node.inputs:
        return None
    data, output = node.inputs[0], node.outputs[0]
    rank = len(data.shape) if data.shape is not None else 0
    if rank < 3:
        return None
    channels_first = frozenset(range(2, rank))
    if pools_every_axis(node):
        return GlobalPool(node.name, node.op, kind, data.name, output.name, MAP, mode, data.name)
    axes = axes_of(node)
    if axes is None:
        return None
    keeps = bool(node.attrs.get("keepdims", 1))
    if axes == channels_first:
        return GlobalPool(node.name, node.op, kind, data.name, output.name, MAP if keeps else FLAT, mode, data.name)
    if axes != frozenset(range(1, rank - 1)):
        return None
    found = channels_last_region(data, node)
    if found is None:
        return None
    source, between = found
    # A lone Transpose is bypassed by the rewrite (it reads `source`); ops after it stay and are the head's.
    return GlobalPool(node.name, node.op, kind, source.name, output.name, MAP_LAST if keeps else FLAT, mode,
                      data.name, input_last=True, between=() if len(between) == 1 else tuple(n.name for n in between))

"""Global poolings: the ops that collapse every spatial axis, where a pooled head starts."""
from __future__ import annotations

from typing import Optional

import onnx_graphsurgeon as gs

from .layout import is_transpose, to_channels_last
from .normalize import in_default_domain
from .plan import FLAT, KEEP_POOL, MAP, MAP_LAST, MODES, GlobalPool, PoolMode
from .values import axes_of, producer

#: Global poolings and their kind.
GLOBAL_POOLS = {"GlobalAveragePool": "average", "GlobalMaxPool": "max", "ReduceMean": "average",
                "ReduceMax": "max"}


def global_pool(node: Optional[gs.Node], mode: PoolMode = MODES[KEEP_POOL]) -> Optional[GlobalPool]:
    """The pooling if `node` pools over every spatial axis: GlobalAveragePool/GlobalMaxPool, or ReduceMean/
    ReduceMax over the spatial axes of a channels-first map or of a Transpose of one to channels last
    (Keras GlobalAveragePooling2D), keeping the pooled axes or not."""
    if node is None or node.op not in GLOBAL_POOLS or not in_default_domain(node) or not node.inputs:
        return None
    data, output = node.inputs[0], node.outputs[0]
    rank = len(data.shape) if data.shape is not None else 0
    if rank < 3:
        return None
    kind = GLOBAL_POOLS[node.op]
    channels_first = frozenset(range(2, rank))
    if node.op.startswith("Global"):
        return GlobalPool(node.name, node.op, kind, data.name, output.name, MAP, mode)
    axes = axes_of(node)
    if axes is None:
        return None
    keeps = bool(node.attrs.get("keepdims", 1))
    if axes == channels_first:
        return GlobalPool(node.name, node.op, kind, data.name, output.name, MAP if keeps else FLAT, mode)
    transpose = producer(data)
    if axes == frozenset(range(1, rank - 1)) and transpose is not None \
            and is_transpose(transpose, to_channels_last(rank)):
        return GlobalPool(node.name, node.op, kind, transpose.inputs[0].name, output.name,
                          MAP_LAST if keeps else FLAT, mode)
    return None

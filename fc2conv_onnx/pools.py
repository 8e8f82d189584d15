"""Global poolings: the ops that collapse every spatial axis, where a pooled head starts."""
from __future__ import annotations

from typing import List, Optional, Tuple

import onnx_graphsurgeon as gs

from .layout import is_transpose, to_channels_last
from .normalize import in_default_domain
from .ops import LOCAL, entry, trunk_kind, varies_over_space
from .plan import FLAT, MAP, MAP_LAST, MODES, KEEP_POOL, GlobalPool, PoolMode
from .values import axes_of, producer

#: Global poolings and their kind.
GLOBAL_POOLS = {"GlobalAveragePool": "average", "GlobalMaxPool": "max", "ReduceMean": "average",
                "ReduceMax": "max"}


def _channels_last_region(data: gs.Tensor, pool: gs.Node) -> Optional[Tuple[gs.Tensor, Tuple[gs.Node, ...]]]:
    """The channels-first map a channels-last tensor is computed from, and the nodes between: one Transpose
    to channels last, then only per-location ops with constants that are the same at every location (tf2onnx
    moves a Keras activation after the Transpose: Conv -> Transpose -> Add -> Clip -> Mul -> Mul -> pool).
    Every tensor between must be read inside the region only. None if `data` is not computed so."""
    rank = len(data.shape)
    region: List[gs.Node] = []
    sources: List[gs.Tensor] = []
    stack, seen = [data], set()
    while stack:
        tensor = stack.pop()
        node = producer(tensor)
        if node is None or id(node) in seen:
            if node is None:
                return None
            continue
        seen.add(id(node))
        region.append(node)
        if is_transpose(node, to_channels_last(rank)):
            if all(source is not node.inputs[0] for source in sources):
                sources.append(node.inputs[0])
            continue
        found = entry(node)
        if found is None or trunk_kind(node) != LOCAL or (found.parameters and node.op != "Clip"):
            return None
        constants = [t for t in node.inputs if isinstance(t, gs.Constant)]
        if node.op != "Clip" and any(varies_over_space(c.shape, rank - 2, MAP_LAST) for c in constants):
            return None
        stack.extend(t for t in node.inputs if t.name and not isinstance(t, gs.Constant))
    inside = {id(n) for n in region} | {id(pool)}
    leaks = [reader for n in region for out in n.outputs for reader in out.outputs if id(reader) not in inside]
    if len(sources) != 1 or leaks:
        return None
    return sources[0], tuple(region)


def global_pool(node: Optional[gs.Node], mode: PoolMode = MODES[KEEP_POOL]) -> Optional[GlobalPool]:
    """The pooling if `node` pools over every spatial axis: GlobalAveragePool/GlobalMaxPool, or ReduceMean/
    ReduceMax over the spatial axes of a channels-first map or of a channels-last one computed from a
    Transpose of one (Keras GlobalAveragePooling2D through tf2onnx), keeping the pooled axes or not."""
    if node is None or node.op not in GLOBAL_POOLS or not in_default_domain(node) or not node.inputs:
        return None
    data, output = node.inputs[0], node.outputs[0]
    rank = len(data.shape) if data.shape is not None else 0
    if rank < 3:
        return None
    kind = GLOBAL_POOLS[node.op]
    channels_first = frozenset(range(2, rank))
    if node.op.startswith("Global"):
        return GlobalPool(node.name, node.op, kind, data.name, output.name, MAP, mode, data.name)
    axes = axes_of(node)
    if axes is None:
        return None
    keeps = bool(node.attrs.get("keepdims", 1))
    if axes == channels_first:
        return GlobalPool(node.name, node.op, kind, data.name, output.name, MAP if keeps else FLAT, mode, data.name)
    if axes != frozenset(range(1, rank - 1)):
        return None
    found = _channels_last_region(data, node)
    if found is None:
        return None
    source, between = found
    # A lone Transpose is bypassed by the rewrite (it reads `source`); ops after it stay and are the head's.
    return GlobalPool(node.name, node.op, kind, source.name, output.name, MAP_LAST if keeps else FLAT, mode,
                      data.name, input_last=True, between=() if len(between) == 1 else tuple(n.name for n in between))

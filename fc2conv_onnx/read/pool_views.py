"""Pools and flattenings of channels-last maps: where the channels-first map a pool reads is (one Transpose
back, through per-location ops), and, when there is none (a residual net done in NHWC), a channels-first view
to start the head at."""
from __future__ import annotations

from typing import List, Optional, Tuple

import onnx_graphsurgeon as gs

from ..model.graph_names import free_name, taken_names
from ..model.layout import CHANNELS_LAST, MAP_LAST, is_transpose, to_channels_first, to_channels_last
from ..model.registry import LOCAL, entry, fact, is_op
from .constants import axes_of, producer
from .map_layouts import map_layouts
from .trunk_kinds import trunk_kind, varies_over_space


def channels_last_region(data: gs.Tensor, pool: gs.Node) -> Optional[Tuple[gs.Tensor, Tuple[gs.Node, ...]]]:
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
        if found is None or trunk_kind(node) != LOCAL or (found.parameters and not is_op(node, "Clip")):
            return None
        constants = [t for t in node.inputs if isinstance(t, gs.Constant)]
        if not is_op(node, "Clip") and any(varies_over_space(c.shape, rank - 2, MAP_LAST) for c in constants):
            return None
        stack.extend(t for t in node.inputs if t.name and not isinstance(t, gs.Constant))
    inside = {id(n) for n in region} | {id(pool)}
    leaks = [reader for n in region for out in n.outputs for reader in out.outputs if id(reader) not in inside]
    if len(sources) != 1 or leaks:
        return None
    return sources[0], tuple(region)


def pools_every_axis(node: gs.Node) -> bool:
    """GlobalAveragePool / GlobalMaxPool, as opposed to a reduction over the axes it is given."""
    return is_op(node, "GlobalAveragePool", "GlobalMaxPool")


def _flattens_a_map(node: gs.Node) -> bool:
    """A Flatten (axis 1) or a Reshape to two axes: what a flattening head may start at (the matcher decides)."""
    if is_op(node, "Flatten"):
        return int(node.attrs.get("axis", 1)) == 1
    target = node.outputs[0].shape if is_op(node, "Reshape") else None
    return target is not None and len(target) == 2


def channels_first_views_before_heads(graph: gs.Graph) -> List[str]:
    """Give a pool or a flattening of a channels-last map that cannot be traced to one Transpose (a residual net
    done in NHWC by jax2onnx or Keras 3: the map is an Add of NHWC maps) a channels-first view to start at:

        map (NHWC) ──▶ ReduceMean(axes [1, 2])    becomes    map ──▶ Transpose to NCHW ──▶ Transpose back ──▶ ReduceMean

    (likewise before a Flatten or a Reshape to [N, H*W*C]). The pair is the identity; the head then starts at
    the NCHW tensor, where the trunk can be cut, cropped and slid like any other, and a flattening reads it in
    (*spatial, C) order as after tf2onnx's Transpose. Returns a note per reader.
    """
    notes: List[str] = []
    layouts = None
    for node in list(graph.nodes):
        if not node.inputs or node.inputs[0].shape is None:
            continue
        data = node.inputs[0]
        rank = len(data.shape)
        if rank < 3 or channels_last_region(data, node) is not None:
            continue
        pools = fact(node, "global_pool") and not pools_every_axis(node) and \
            axes_of(node) == frozenset(range(1, rank - 1))
        if not pools and not _flattens_a_map(node):
            continue
        layouts = layouts if layouts is not None else map_layouts(graph)
        if layouts.get(data.name) != CHANNELS_LAST:
            continue
        shape = list(data.shape)
        taken = taken_names(graph)
        first = gs.Variable(free_name(taken, f"{data.name}/channels_first"), dtype=data.dtype,
                            shape=[shape[0], shape[-1]] + shape[1:-1])
        last = gs.Variable(free_name(taken, f"{data.name}/channels_last"), dtype=data.dtype, shape=shape)
        for step, perm, source, target in (("first", to_channels_first(rank), data, first),
                                           ("last", to_channels_last(rank), first, last)):
            graph.nodes.append(gs.Node("Transpose", free_name(taken, f"{node.name}/to_channels_{step}"),
                                       {"perm": list(perm)}, [source], [target]))
        node.inputs[0] = last
        what = "pools" if pools else "flattens"
        notes.append(f"{node.op} '{node.name}' {what} the channels-last map '{data.name}' (a join of channels-last "
                     "maps); it now reads it through a Transpose to channels first and back, the identity, so the "
                     "head starts at a channels-first map")
    if notes:
        graph.toposort()
    return notes

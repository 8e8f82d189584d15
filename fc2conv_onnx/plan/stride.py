"""Planning a finer output stride (`--stride`): which of the trunk's strides are removed, and how every later
window is dilated (`rewrite/atrous.py` carries the plan out).

The "à trous" / shift-and-stitch identity: if a layer of stride s runs with stride 1 instead, its output
is s times denser, and the original output is every s-th cell of it. A later window op (Conv, pool) that
reads it with its kernel dilated by s and its pads multiplied by s computes, at every s-th cell, exactly
what it computed before - padding included, since its padded positions land on padded positions - and
the cells in between are the same computation for the input shifted by whole pixels of the finer grid.
Carried through to the head, whose first kernel is dilated by the total factor r, output cell i reads the
feature window at i of the r-times denser feature map, sampled every r cells, and equals the original
head on that window; the cells are the trunk's stride / r input pixels apart.

Strides are removed from the stages nearest the head first (the fewest layers then run at the denser
resolution). A stage is every strided window op whose input has the same total stride (a ResNet block's
strided conv and its strided shortcut); all of its ops must share the stride being removed.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import onnx_graphsurgeon as gs

from ..errors import InputError
from ..model.geometry import Geometry, HeadGeometry
from ..model.registry import (
    CHANNEL_SLICE,
    JOIN,
    LAST_AXIS,
    LOCAL,
    MOVE_CHANNELS,
    PAD,
    REGISTRY,
    REGROUP,
    SHAPE_OF,
    WINDOW,
    fact,
    is_op,
)
from ..model.sizes import parse_stride_values
from ..model.walks import trunk_nodes
from ..read.trunk_kinds import has_parameters, trunk_kind
from .geometry_walk import window_layer
from .plan import Densify, LayerChange, Plan, window_op


def parse_stride(value: Union[int, str, Sequence[int]], rank: int) -> Tuple[int, ...]:
    """16, "16" or "16x8" (one number: every axis) -> a stride per spatial axis."""
    parts = parse_stride_values(value)
    if len(parts) == 1:
        parts = parts * rank
    if len(parts) != rank:
        raise InputError(f"stride '{value}' needs {rank} positive value(s), one per spatial axis")
    return parts


def _power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


def plan_densify(graph: gs.Graph, plan: Plan, geometry: Sequence[HeadGeometry],
                 stride: Union[int, str, Sequence[int]]) -> Densify:
    """Which strides to lower and which windows to dilate for output stride `stride`, or InputError saying
    why it cannot be made exact."""
    if not plan.heads:
        raise InputError("--stride needs a head to convert")
    for head, where in zip(plan.heads, geometry):
        pool = head.pool
        if pool is not None and not pool.mode.slides:
            raise InputError("--stride needs --pooling window or none: a kept global pool gives one prediction "
                             "per image, which has no stride")
        if pool is not None and pool.mode.replacement(pool.kind, head.spatial_shape, None) is not None:
            op = window_op(pool.kind)
            since = REGISTRY[op].dilations_since or 1
            if plan.opset < since:
                raise InputError(f"--stride with --pooling window needs a dilated {op}, which ONNX has from opset "
                                 f"{since} (the model has {plan.opset}): upgrade the model with onnx's version "
                                 f"converter (python -c \"import onnx, onnx.version_converter as v; onnx.save("
                                 f"v.convert_version(onnx.load('IN.onnx'), {since}), 'IN{since}.onnx')\") and "
                                 "convert that, or use --pooling none")
        if not isinstance(where, Geometry):
            raise InputError(f"--stride needs the trunk's geometry, which is unknown for "
                             f"{', '.join(head.outputs)}: {where.reason}")
    known = [g for g in geometry if isinstance(g, Geometry)]
    if len({(g.input, g.stride) for g in known}) != 1:
        raise InputError("--stride needs every head to read one image input at one stride")
    total = known[0].stride
    wanted = parse_stride(stride, len(total))
    factor = []
    for axis, (t, s) in enumerate(zip(total, wanted)):
        if t % s or not _power_of_two(t // s):
            exact = ", ".join(str(t // (1 << i)) for i in range(t.bit_length()) if t % (1 << i) == 0)
            raise InputError(f"stride {s} on axis {axis}: the trunk's stride is {t}, and only it divided by a "
                             f"power of two ({exact}) can be made exact")
        factor.append(t // s)
    trunk = trunk_nodes(graph, [h.source for h in plan.heads])
    lowered = _choose_lowered(trunk, tuple(factor), len(total))
    changes, density = _changes(trunk, lowered, len(total), int(plan.opset))
    for head in plan.heads:
        if density.get(head.source) != tuple(factor):
            raise InputError(f"'{head.source}' would be {density.get(head.source)} times "
                             f"denser, not {factor}; --stride cannot be exact")
    return Densify(wanted, tuple(factor), tuple(changes), tuple(n.name for n in trunk if n.name in lowered))


def _total_strides(trunk: Sequence[gs.Node], rank: int) -> Dict[str, Tuple[int, ...]]:
    """The total stride of every trunk tensor (1 for the image and constants)."""
    strides: Dict[str, Tuple[int, ...]] = {}
    for node in trunk:
        inputs = [strides.get(t.name, (1,) * rank) for t in node.inputs[:1]]
        stride = inputs[0] if inputs else (1,) * rank
        if trunk_kind(node) == WINDOW:
            stride = tuple(a * b for a, b in zip(stride, window_layer(node, rank).stride))
        for out in node.outputs:
            strides[out.name] = stride
    return strides


def _choose_lowered(trunk: Sequence[gs.Node], factor: Tuple[int, ...], rank: int) -> Dict[str, List[int]]:
    """Node name -> how much its stride is lowered on each axis (stages nearest the head first)."""
    strides = _total_strides(trunk, rank)
    strided = [n for n in trunk if trunk_kind(n) == WINDOW and any(s > 1 for s in window_layer(n, rank).stride)]
    lowered: Dict[str, List[int]] = {}
    for axis in range(rank):
        remaining = factor[axis]
        stages = sorted({strides.get(n.inputs[0].name, (1,) * rank)[axis] for n in strided}, reverse=True)
        for stage in stages:
            if remaining == 1:
                break
            members = [n for n in strided if strides.get(n.inputs[0].name, (1,) * rank)[axis] == stage
                       and window_layer(n, rank).stride[axis] > 1]
            own = {window_layer(n, rank).stride[axis] for n in members}
            if not members:
                continue
            if len(own) != 1:
                names = ", ".join(f"'{n.name}'" for n in members)
                raise InputError(f"the ops {names} take the trunk's stride from {stage} on axis {axis} with different "
                                 f"strides ({sorted(own)}); --stride cannot lower them together")
            s = own.pop()
            step = s if remaining % s == 0 else remaining if s % remaining == 0 else 0
            if step == 0:
                raise InputError(f"the stride {s} of '{members[0].name}' cannot be lowered by {remaining} exactly")
            for n in members:
                lowered.setdefault(n.name, [1] * rank)[axis] = step
            remaining //= step
        if remaining != 1:
            raise InputError(f"the trunk's strides on axis {axis} cannot be lowered {factor[axis]} times")
    return lowered


def _changes(trunk: Sequence[gs.Node], lowered: Dict[str, List[int]], rank: int,
             opset: int) -> Tuple[List[LayerChange], Dict[str, Tuple[int, ...]]]:
    """Walk the trunk: each window op after a lowered stride is dilated (and its pads scaled) by how much
    denser its input is; a lowered op's output is that much denser again."""
    density: Dict[str, Tuple[int, ...]] = {}
    changes: List[LayerChange] = []
    ones = (1,) * rank
    for node in trunk:
        kind = trunk_kind(node)
        # A Reshape's shape input and a channel Slice's bounds are not maps (their bounds may be computed)
        read = node.inputs[:1] if kind in (REGROUP, CHANNEL_SLICE) else node.inputs
        incoming = {density[t.name] for t in read if t.name in density}
        if kind == SHAPE_OF or (kind != WINDOW and incoming <= {ones}):  # nothing denser reaches it: unchanged
            out = ones
        elif kind in (LOCAL, CHANNEL_SLICE, JOIN, LAST_AXIS, MOVE_CHANNELS, REGROUP):
            if not has_parameters(node) and len(incoming) > 1:
                raise InputError(f"{node.op} '{node.name}' joins branches of different densities; --stride "
                                 "cannot be exact")
            out = incoming.pop() if incoming else ones
        elif kind == WINDOW:
            r = density.get(node.inputs[0].name, ones)
            layer = window_layer(node, rank)
            step = tuple(lowered.get(node.name, ones))
            out = tuple(a * b for a, b in zip(r, step))
            if r != ones or step != ones:
                if layer.auto_pad != "NOTSET" or layer.ceil_mode:
                    raise InputError(f"{node.op} '{node.name}' uses auto_pad or ceil_mode, whose padding depends on "
                                     "the stride; --stride cannot be exact there")
                since = fact(node, "dilations_since")
                if r != ones and since and opset < since:
                    raise InputError(f"{node.op} '{node.name}' would need dilations, which {node.op} takes from "
                                     f"opset {since} (the model has {opset})")
                pads = tuple(p * f for p, f in zip(layer.pads_begin + layer.pads_end, r + r))
                if not is_op(node, "Conv") and any(p >= k for p, k in zip(pads, layer.kernel * 2)):
                    raise InputError(f"{node.op} '{node.name}' would need pads {list(pads)} as large as its kernel "
                                     f"{list(layer.kernel)} after a lowered stride, which pools may not have; --stride "
                                     "cannot lower the strides before it")
                changes.append(LayerChange(
                    node.name, node.op, tuple(s // d for s, d in zip(layer.stride, step)),
                    tuple(d * f for d, f in zip(layer.dilation, r)), pads, out))
        elif kind == PAD:
            out = incoming.pop() if incoming else ones
            if out != ones:
                raise InputError(f"Pad '{node.name}' comes after a lowered stride; --stride does not handle it")
        else:
            raise InputError(f"{node.op} '{node.name}' is on the trunk; --stride does not know it")
        for tensor in node.outputs:
            density[tensor.name] = out
    return changes, density

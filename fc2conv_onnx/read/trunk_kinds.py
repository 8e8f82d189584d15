"""How a trunk op moves the geometry: its kind, read in context.

LOCAL ops act on each location alone, WINDOW ops (Conv, pools) read a window, PAD pads, JOIN concatenates
branches, GLOBAL ops read every location (global pools); LAST_AXIS, CHANNEL_SLICE, MOVE_CHANNELS and REGROUP
say how an op treats the axes of a map. Geometry, layouts and `--stride` read these kinds; an op without one
stops them. Most kinds are data in the registry's table; the ones that depend on the node's attributes are
functions here, attached to the registry's entries.
"""
from __future__ import annotations

from typing import Optional, Set

import numpy as np
import onnx_graphsurgeon as gs

from ..model.layout import MAP, is_transpose, to_channels_first, to_channels_last
from ..model.registry import (
    CHANNEL_SLICE,
    GLOBAL,
    JOIN,
    LAST_AXIS,
    LOCAL,
    MOVE_CHANNELS,
    REGROUP,
    OpEntry,
    attach,
    entry,
    is_op,
)
from .constants import axes_of


def has_parameters(node: gs.Node) -> bool:
    """Whether the node's registry entry says its other inputs are parameters (weights, not features)."""
    found = entry(node)
    return found is not None and bool(found.parameters)


def trunk_kind(node: gs.Node) -> Optional[str]:
    found: Optional[OpEntry] = entry(node)
    if found is None or found.trunk is None:
        return None
    return found.trunk(node) if callable(found.trunk) else found.trunk


def varies_over_space(shape, spatial_rank: int, form: str) -> bool:
    """Whether a constant of `shape` varies along a spatial axis of a map of the given form. Broadcasting
    aligns trailing axes: a channels-first map's spatial axes are its last ones, a channels-last map's
    the ones before the last."""
    dims = list(shape)
    trailing = dims[len(dims) - spatial_rank:] if form == MAP else dims[len(dims) - spatial_rank - 1:-1]
    return any(d != 1 for d in trailing)


def _reduce_kind(node: gs.Node) -> Optional[str]:
    """A reduction over a spatial axis reads every location; over the channels alone it is local: axis 1, or the
    last axis of a channels-last map (a LayerNorm spelled out on one: jax2onnx's ConvNeXt blocks)."""
    axes, rank = axes_of(node), len(node.inputs[0].shape) if node.inputs[0].shape is not None else 0
    if not node.attrs.get("keepdims", 1):
        return GLOBAL
    if axes == frozenset((1,)):
        return LOCAL
    return LAST_AXIS if rank >= 3 and axes == frozenset((rank - 1,)) else GLOBAL


def _transpose_kind(node: gs.Node) -> Optional[str]:
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 0
    moves = rank >= 3 and (is_transpose(node, to_channels_last(rank)) or is_transpose(node, to_channels_first(rank)))
    return MOVE_CHANNELS if moves else REGROUP


def _matmul_kind(node: gs.Node) -> Optional[str]:
    """x @ W with a constant 2-D W: a Linear on the last axis (ConvNeXt's blocks on a channels-last map).
    A product of two computed tensors (attention) mixes locations."""
    weight = node.inputs[1]
    return LAST_AXIS if isinstance(weight, gs.Constant) and len(weight.shape) == 2 else None


def _normalization_kind(node: gs.Node) -> Optional[str]:
    """LayerNormalization / Softmax along the last axis alone; Softmax along axis 1 (opset 13 on, a rank 3+
    input) is over the channels of a channels-first map."""
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 0
    axis = int(node.attrs.get("axis", -1))
    if axis in (-1, rank - 1):
        return LAST_AXIS
    return LOCAL if is_op(node, "Softmax") and axis in (1, 1 - rank) and "axis" in node.attrs else None


def _slice_kind(node: gs.Node) -> Optional[str]:
    """A Slice or Split along constant axes: per location if they are the channel axis alone (GhostNet's
    `x[:, :C]`; ShuffleNet's `x.chunk(2, dim=1)`, a Split, or a Slice whose bounds TorchScript computes from
    the shape), which depends on the map's layout (see `sliced_axes`)."""
    return CHANNEL_SLICE if sliced_axes(node) is not None else None


def sliced_axes(node: gs.Node) -> Optional[Set[int]]:
    """The axes a Slice or Split cuts (from 0), when they are constants and its input's rank is known."""
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 0
    if is_op(node, "Split"):
        axes = [node.attrs.get("axis", 0)]
    elif len(node.inputs) >= 4 and isinstance(node.inputs[3], gs.Constant):
        axes = np.asarray(node.inputs[3].values).reshape(-1).tolist()
    elif len(node.inputs) == 1 and "axes" in node.attrs:  # before opset 10, bounds and axes were attributes
        axes = list(node.attrs["axes"])
    else:  # no axes: the first len(starts) axes, which a computed `starts` hides
        return None
    return {int(a) % rank for a in axes} if rank else None


def _concat_kind(node: gs.Node) -> Optional[str]:
    rank = len(node.outputs[0].shape) if node.outputs[0].shape is not None else 0
    return JOIN if int(node.attrs.get("axis", 0)) in (1, 1 - rank) else None


# The kinds that are plain data are in the registry's table; these depend on the node's attributes.

attach("trunk", "Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", value=_normalization_kind)
attach("trunk", "MatMul", value=_matmul_kind)
attach("trunk", "Slice", "Split", value=_slice_kind)
attach("trunk", "Concat", value=_concat_kind)
attach("trunk", "Transpose", value=_transpose_kind)
attach("trunk", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceSumSquare", value=_reduce_kind)

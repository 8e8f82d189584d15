"""Where the channels are: axis 1 (channels first, NCHW) or the last axis (channels last, NHWC).

PyTorch models are channels first throughout. tf2onnx keeps a Keras model's NHWC graph input and output
and works inside in NCHW, with a Transpose after the input and one before a Flatten; a Keras Flatten
therefore lists the features in (H, W, C) order. These helpers are 1, 2 and 3-D alike.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import onnx_graphsurgeon as gs

CHANNELS_FIRST = "channels_first"
CHANNELS_LAST = "channels_last"
LAYOUTS = (CHANNELS_FIRST, CHANNELS_LAST)


def to_channels_last(rank: int) -> Tuple[int, ...]:
    """Transpose perm [N, C, *spatial] -> [N, *spatial, C]."""
    return (0,) + tuple(range(2, rank)) + (1,)


def to_channels_first(rank: int) -> Tuple[int, ...]:
    """Transpose perm [N, *spatial, C] -> [N, C, *spatial]."""
    return (0, rank - 1) + tuple(range(1, rank - 1))


def spatial_axes(rank: int, layout: str) -> Tuple[int, ...]:
    """The spatial axes of a rank-`rank` tensor in `layout`."""
    return tuple(range(2, rank)) if layout == CHANNELS_FIRST else tuple(range(1, rank - 1))


def spatial_dims(shape: Sequence, layout: str) -> Tuple:
    return tuple(shape[a] for a in spatial_axes(len(shape), layout))


def with_spatial(shape: Sequence, layout: str, spatial: Sequence) -> Tuple:
    """`shape` with its spatial dims replaced by `spatial`."""
    result = list(shape)
    for axis, value in zip(spatial_axes(len(shape), layout), spatial):
        result[axis] = value
    return tuple(result)


def is_transpose(node: gs.Node, perm: Sequence[int]) -> bool:
    return node.op == "Transpose" and node.domain in (None, "", "ai.onnx") and \
        tuple(node.attrs.get("perm", ())) == tuple(perm)


def input_layout(tensor: gs.Tensor) -> str:
    """Channels last when every reader of the graph input `tensor` moves its last axis to axis 1 (as
    tf2onnx does with a Keras model's NHWC input); channels first otherwise."""
    shape = tensor.shape
    if shape is None or len(shape) < 3 or not tensor.outputs:
        return CHANNELS_FIRST
    perm = to_channels_first(len(shape))
    return CHANNELS_LAST if all(is_transpose(node, perm) for node in tensor.outputs) else CHANNELS_FIRST

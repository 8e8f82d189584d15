"""Where the channels are: axis 1 (channels first, NCHW) or the last axis (channels last, NHWC).

PyTorch models are channels first throughout. tf2onnx keeps a Keras model's NHWC graph input and output
and works inside in NCHW, with a Transpose after the input and one before a Flatten; a Keras Flatten
therefore lists the features in (H, W, C) order. These helpers are 1, 2 and 3-D alike.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence, Set, Tuple

from .registry import fact, is_op

if TYPE_CHECKING:  # the names are read by the CLI's parser and the apps, which start without onnx
    import onnx_graphsurgeon as gs

CHANNELS_FIRST = "channels_first"
CHANNELS_LAST = "channels_last"
LAYOUTS = (CHANNELS_FIRST, CHANNELS_LAST)
#: `output_layout`: "auto" (the layout of the image input: [N, *spatial, K] for tf2onnx's NHWC models,
#: [N, K, *spatial] otherwise), "channels_first" or "channels_last".
AUTO = "auto"
OUTPUT_LAYOUTS = (AUTO, CHANNELS_FIRST, CHANNELS_LAST)
#: The form of a head tensor. FLAT: [N, K], re-expressed as [N, K, *spatial] by the rewrite. MAP and
#: MAP_LAST: a pooled map, [N, K, 1, ...] or [N, 1, ..., K], whose per-location ops stay as they are.
FLAT = "flat"
MAP = "map"
MAP_LAST = "map_last"


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
    return is_op(node, "Transpose") and tuple(node.attrs.get("perm", ())) == tuple(perm)


def is_parameter_shape(shape: Optional[Sequence]) -> bool:
    """A static shape with at most one dim above 1 ([1, 1, 1, 3], [3]): a per-channel parameter, not an image.
    tf2onnx leaves Keras Normalization's mean and variance as graph inputs of this shape."""
    return shape is not None and len(shape) > 0 and all(isinstance(d, int) for d in shape) and \
        sum(1 for d in shape if d != 1) <= 1


def parameter_inputs(inputs: Sequence[Tuple[str, Optional[Sequence]]]) -> Set[str]:
    """The names, among graph inputs (name, shape), of those that hold per-channel parameters: shaped so
    (`is_parameter_shape`) beside an input that is not - a lone [1, 1, 5] input is a 1-D image."""
    shaped = {name for name, shape in inputs if is_parameter_shape(shape)}
    return shaped if len(shaped) < len(inputs) else set()


def _per_channel_operand(tensor: gs.Tensor) -> bool:
    """A constant, or a parameter graph input, that broadcasts along the last (channel) axis alone."""
    import onnx_graphsurgeon as gs

    static = isinstance(tensor, gs.Constant) or (not tensor.inputs and is_parameter_shape(tensor.shape))
    return static and tensor.shape is not None and all(d == 1 for d in tensor.shape[:-1])


def _quantizes_per_channel(node: gs.Node, rank: int) -> bool:
    """A (De)QuantizeLinear of the NHWC image with one scale, or one per channel along the last axis (its
    `axis` defaults to 1, which is a spatial axis there); any other op: True."""
    if not fact(node, "quantization"):
        return True
    scale = node.inputs[1].shape if len(node.inputs) > 1 else None
    return scale is not None and (all(d == 1 for d in scale) or int(node.attrs.get("axis", 1)) in (-1, rank - 1))


def pad_widths(node: gs.Node, full_rank: int) -> Tuple[List[int], List[int]]:
    """A Pad's widths (begin, end) on each of the `full_rank` axes, from its attribute (opset < 11) or its
    constant inputs (and opset 18's `axes`); ValueError (the reason) when they come from a computed tensor."""
    import numpy as np
    import onnx_graphsurgeon as gs

    if "pads" in node.attrs:  # opset < 11
        pads = [int(v) for v in node.attrs["pads"]]
    elif len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        pads = [int(v) for v in np.asarray(node.inputs[1].values).reshape(-1)]
    else:
        raise ValueError(f"Pad '{node.name}' takes its pads from a computed tensor")
    if len(node.inputs) > 3 and node.inputs[3].name:  # opset 18 `axes`
        if not isinstance(node.inputs[3], gs.Constant):
            raise ValueError(f"Pad '{node.name}' takes its axes from a computed tensor")
        axes = [int(a) % full_rank for a in np.asarray(node.inputs[3].values).reshape(-1)]
    else:
        axes = list(range(full_rank))
    begin, end = [0] * full_rank, [0] * full_rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[len(axes) + i]
    return begin, end


def _pads_rows_and_columns_only(node: gs.Node, rank: int) -> bool:
    """A Pad of the NHWC image on its spatial axes alone (Keras's ZeroPadding2D before the Transpose to NCHW,
    as Keras 3 exports on the torch backend), with a constant pad value if any."""
    import onnx_graphsurgeon as gs

    try:
        begin, end = pad_widths(node, rank)
    except ValueError:
        return False
    value = node.inputs[2] if len(node.inputs) > 2 else None
    return not (begin[0] or end[0] or begin[-1] or end[-1]) and \
        (value is None or not value.name or isinstance(value, gs.Constant))


def channels_first_views(tensor: gs.Tensor) -> Optional[List[gs.Tensor]]:
    """The tensors where a channels-last graph input `tensor` becomes channels first: the outputs of the
    Transposes that move its last axis to axis 1, reached through nothing but elementwise preprocessing by
    constants that act per channel (or per element) and Pads of the spatial axes; None when some path reaches
    anything else."""
    shape = tensor.shape
    if shape is None or len(shape) < 3 or not tensor.outputs:
        return None
    perm = to_channels_first(len(shape))
    views: List[gs.Tensor] = []
    frontier, seen = [tensor], set()
    while frontier:
        current = frontier.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if not current.outputs:
            return None  # a graph output read straight from the image
        for node in current.outputs:
            if is_transpose(node, perm):
                views.append(node.outputs[0])
                continue
            if is_op(node, "Pad") and node.inputs[0] is current:
                if not _pads_rows_and_columns_only(node, len(shape)):
                    return None
                frontier.extend(node.outputs)
                continue
            others = [t for t in node.inputs if t is not current and t.name]
            # A Keras model's Rescaling and Normalization layers (Mul, Add, Sub, Div by per-channel constants),
            # casts, a full-int8 TFLite file's Q/DQ: they act per element or channel, so the Transpose after
            # them decides the layout (the registry's `preprocessing` ops).
            if not fact(node, "preprocessing") or not all(_per_channel_operand(t) for t in others) or \
                    not _quantizes_per_channel(node, len(shape)):
                return None
            frontier.extend(node.outputs)
    return views


def input_layout(tensor: gs.Tensor) -> str:
    """Channels last when the graph input `tensor` reaches the trunk only through Transposes to channels
    first (as tf2onnx does with a Keras model's NHWC input, maybe after its Rescaling/Normalization
    layers); channels first otherwise."""
    return CHANNELS_LAST if channels_first_views(tensor) else CHANNELS_FIRST


def first_convolution(tensor: gs.Tensor, layout: str) -> Optional[Tuple[gs.Node, int, bool]]:
    """The first Conv that reads the graph input `tensor` through ops that keep every axis where it is (the
    preprocessing ops, Pad, Slice) and Transposes; the axis its channels are on there when `tensor` has them
    where `layout` says (a Conv reads them on axis 1); and whether they are as many as `tensor` has (no Slice or
    Pad on the way, which may cut or add some). None when no Conv is reached so."""
    shape = tensor.shape
    if shape is None or len(shape) < 3:
        return None
    frontier = [(tensor, len(shape) - 1 if layout == CHANNELS_LAST else 1, True)]
    seen = set()
    while frontier:
        current, axis, same_count = frontier.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        for node in current.outputs:
            if not node.inputs or node.inputs[0] is not current:
                continue
            if is_op(node, "Conv"):
                return node, axis, same_count
            if is_op(node, "Transpose") and "perm" in node.attrs:
                frontier.append((node.outputs[0], list(node.attrs["perm"]).index(axis), same_count))
            elif fact(node, "preprocessing") or is_op(node, "Pad", "Slice"):
                frontier.append((node.outputs[0], axis, same_count and not is_op(node, "Pad", "Slice")))
    return None

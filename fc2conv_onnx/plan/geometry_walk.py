"""Computing each head's geometry from the trunk: its stride, window and receptive field (`model.geometry`),
walked from every Conv, pool and Pad between the input and the head, on every branch."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx_graphsurgeon as gs

from ..model.geometry import Geometry, HeadGeometry, Layer, Unknown
from ..model.layout import CHANNELS_FIRST, channels_first_views, input_layout, pad_widths, spatial_dims
from ..model.registry import (
    CHANNEL_SLICE,
    GLOBAL,
    JOIN,
    LAST_AXIS,
    LOCAL,
    MOVE_CHANNELS,
    PAD,
    REGROUP,
    SHAPE_OF,
    WINDOW,
    in_default_domain,
    is_op,
)
from ..model.walks import upstream_inputs
from ..read.trunk_kinds import has_parameters, sliced_axes, trunk_kind, varies_over_space
from .plan import MAP, MAP_LAST, HeadPlan, Plan

# ------------------------------------------------------------------------------------ the trunk walk

@dataclass(frozen=True)
class _Span:
    """Feature cell j of a tensor depends on input pixels [j*stride + start, j*stride + start + extent)."""

    stride: Tuple[int, ...]
    start: Tuple[int, ...]
    extent: Tuple[int, ...]
    layers: Tuple[Layer, ...]
    #: The first op on a path to here that reads every location ('' if none), and whether every path
    #: to here passes one (the map is then one location, whatever the input's size).
    global_op: str = ""
    global_node: str = ""
    collapsed: bool = False
    #: The tensor holds its channels last ([N, *spatial, C]) here (a Transpose in the trunk moved them).
    channels_last: bool = False
    #: Its spatial size for the input size the walk was given, by each layer's size rule.
    size: Tuple[int, ...] = ()


class _NotLocal(Exception):
    pass


class _SizesDisagree(_NotLocal):
    """Branches joined by an op have different sizes at the input size tried."""


def _ints(value, rank: int, default: int) -> Tuple[int, ...]:
    return tuple(int(v) for v in value) if value is not None else (default,) * rank


def window_layer(node: gs.Node, rank: int) -> Layer:
    attrs = node.attrs
    if is_op(node, "Conv") and "kernel_shape" not in attrs:
        weight_shape = node.inputs[1].shape
        if weight_shape is None or not all(isinstance(d, int) for d in weight_shape[2:]):
            raise _NotLocal(f"Conv '{node.name}' has no static kernel shape")
        kernel = tuple(weight_shape[2:])
    else:
        kernel = _ints(attrs.get("kernel_shape"), rank, 1)
    stride = _ints(attrs.get("strides"), rank, 1)
    dilation = _ints(attrs.get("dilations"), rank, 1)
    pads = _ints(attrs.get("pads"), 2 * rank, 0)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    begin, end = pads[:rank], pads[rank:]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # The pads depend on the input size; take them at the training size (exact for T + k*S inputs).
        size = node.inputs[0].shape
        if size is None or not all(isinstance(d, int) for d in size[2:]):
            raise _NotLocal(f"{node.op} '{node.name}' uses auto_pad {auto_pad} on an input of unknown size")
        totals = [max((-(-x // s) - 1) * s + (k - 1) * d + 1 - x, 0)
                  for x, k, s, d in zip(size[2:], kernel, stride, dilation)]
        small = tuple(t // 2 for t in totals)
        large = tuple(t - t // 2 for t in totals)
        begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        begin = end = (0,) * rank
    return Layer(node.op, kernel, stride, dilation, begin, end, bool(attrs.get("ceil_mode", 0)), auto_pad)


def _pad_layer(node: gs.Node, rank: int, channels_last: bool = False) -> Layer:
    """A Pad as a 1-wide window with pads, on a channels-first map or (tf2onnx's ZeroPadding2D) a
    channels-last one. Pads of the channel axis (dlib's residual blocks widen a shortcut so) add channels at
    every location and leave the geometry alone."""
    full_rank = rank + 2
    try:
        begin, end = pad_widths(node, full_rank)
    except ValueError as reason:
        raise _NotLocal(str(reason)) from None
    spatial = list(range(1, rank + 1)) if channels_last else list(range(2, rank + 2))
    if begin[0] or end[0]:
        raise _NotLocal(f"Pad '{node.name}' pads the batch axis")
    ones = (1,) * rank
    return Layer("Pad", ones, ones, ones, tuple(begin[a] for a in spatial), tuple(end[a] for a in spatial))


def _through_layer(span: _Span, layer: Layer) -> _Span:
    s = span.stride
    return replace(
        span,
        stride=tuple(a * b for a, b in zip(s, layer.stride)),
        start=tuple(a - p * b for a, p, b in zip(span.start, layer.pads_begin, s)),
        extent=tuple(e + (k - 1) * d * b for e, k, d, b in zip(span.extent, layer.kernel, layer.dilation, s)),
        layers=span.layers + (layer,),
        size=layer.output_size(span.size) if span.size else (),
    )


def _merge(spans: List[_Span], node: gs.Node) -> _Span:
    """The span of an op that combines branches. A branch that went through a global op (a squeeze-and-
    excitation gate) has no spatial extent of its own; it makes the result not local."""
    reader = next((s for s in spans if s.global_op), spans[0])
    global_op, global_node = reader.global_op, reader.global_node
    spatial = [s for s in spans if not s.collapsed]
    if not spatial:
        return replace(spans[0], global_op=global_op, global_node=global_node)
    spans = spatial
    first = spans[0]
    for other in spans[1:]:
        if other.stride != first.stride:
            raise _NotLocal(f"{node.op} '{node.name}' joins branches of strides {list(first.stride)} and "
                            f"{list(other.stride)}")
        if other.channels_last != first.channels_last:
            raise _NotLocal(f"{node.op} '{node.name}' joins a channels-first and a channels-last map")
        if other.size != first.size:
            raise _SizesDisagree(f"{node.op} '{node.name}' joins maps of sizes {list(first.size)} and "
                                 f"{list(other.size)}")
    start = tuple(min(s.start[a] for s in spans) for a in range(len(first.start)))
    stop = tuple(max(s.start[a] + s.extent[a] for s in spans) for a in range(len(first.start)))
    return _Span(first.stride, start, tuple(b - a for a, b in zip(start, stop)), first.layers, global_op,
                  global_node, channels_last=first.channels_last, size=first.size)


def _constant_is_per_location(tensor: gs.Tensor, rank: int, channels_last: bool) -> bool:
    """A constant operand leaves the geometry alone unless it varies along a spatial axis."""
    return tensor.shape is not None and not varies_over_space(tensor.shape, rank, MAP_LAST if channels_last else MAP)


def _keeps_spatial_axes(node: gs.Node, rank: int) -> bool:
    """Whether a Transpose or Reshape leaves the last `rank` (spatial) axes where they are and only regroups
    the ones before (ShuffleNet's channel shuffle). For a Reshape, row-major order makes that so exactly
    when the trailing `rank` dims and the product of the leading ones are the same on both sides."""
    if is_op(node, "Transpose"):
        perm = list(node.attrs.get("perm", []))
        return bool(perm) and perm[len(perm) - rank:] == list(range(len(perm) - rank, len(perm)))
    before, after = node.inputs[0].shape, node.outputs[0].shape
    if before is None or after is None or not before or not after:
        return False
    if not isinstance(before[0], int) or not isinstance(after[0], int):
        # One batch on both sides: symbolic on both (or -1), or lost by shape inference on one side (behind a
        # Slice with computed bounds) where the Reshape reads it from its input (see trunk_sizes).
        batch = after[0] if isinstance(after[0], int) else before[0] if isinstance(before[0], int) else 1
        before, after = [batch] + list(before[1:]), [batch] + list(after[1:])
    if not all(isinstance(d, int) for d in list(before) + list(after)):
        return False
    return len(before) > rank and len(after) > rank and list(before[-rank:]) == list(after[-rank:]) and \
        int(np.prod(before[:-rank])) == int(np.prod(after[:-rank]))


#: What a span becomes through one op of each trunk kind: step(node, its inputs' spans, every span so far, rank).
SpanStep = Callable[[gs.Node, List[_Span], Dict[str, _Span], int], _Span]


def _window_span(node: gs.Node, inputs: List[_Span], spans: Dict[str, _Span], rank: int) -> _Span:
    if node.inputs[0].name not in spans:
        raise _NotLocal(f"{node.op} '{node.name}' reads the image through its weights")
    if spans[node.inputs[0].name].channels_last:
        raise _NotLocal(f"{node.op} '{node.name}' reads a map whose channels a Transpose moved last")
    return _through_layer(spans[node.inputs[0].name], window_layer(node, rank))


def _pad_span(node: gs.Node, inputs: List[_Span], spans: Dict[str, _Span], rank: int) -> _Span:
    span = spans[node.inputs[0].name]
    return _through_layer(span, _pad_layer(node, rank, span.channels_last))


def _join_span(node: gs.Node, inputs: List[_Span], spans: Dict[str, _Span], rank: int) -> _Span:
    return _merge(inputs, node)


def _local_span(node: gs.Node, inputs: List[_Span], spans: Dict[str, _Span], rank: int) -> _Span:
    others = [t for t in node.inputs if t.name not in spans and t.name]
    span = _merge(inputs, node)
    if not has_parameters(node) and not all(_constant_is_per_location(t, rank, span.channels_last) for t in others):
        raise _NotLocal(f"{node.op} '{node.name}' combines the features with a tensor that varies over the spatial "
                        "axes")
    return span


def _move_channels_span(node: gs.Node, inputs: List[_Span], spans: Dict[str, _Span], rank: int) -> _Span:
    return replace(inputs[0], channels_last=node.attrs["perm"][-1] == 1)


def _regroup_span(node: gs.Node, inputs: List[_Span], spans: Dict[str, _Span], rank: int) -> _Span:
    if node.inputs[0].name not in spans:
        raise _NotLocal(f"{node.op} '{node.name}' reads the image through its shape input")
    span = spans[node.inputs[0].name]
    if span.channels_last or not _keeps_spatial_axes(node, rank):
        raise _NotLocal(f"{node.op} '{node.name}' on the path to the head moves or reshapes the spatial axes")
    return span


def _channel_slice_span(node: gs.Node, inputs: List[_Span], spans: Dict[str, _Span], rank: int) -> _Span:
    if node.inputs[0].name not in spans:
        raise _NotLocal(f"{node.op} '{node.name}' reads the image through its bounds")
    span = spans[node.inputs[0].name]
    channels = len(node.inputs[0].shape) - 1 if span.channels_last else 1
    if sliced_axes(node) != {channels}:
        raise _NotLocal(f"{node.op} '{node.name}' on the path to the head cuts a spatial axis")
    return span


def _last_axis_span(node: gs.Node, inputs: List[_Span], spans: Dict[str, _Span], rank: int) -> _Span:
    span = _merge(inputs, node)
    if not span.channels_last:
        raise _NotLocal(f"{node.op} '{node.name}' acts along the last axis of a channels-first map, which is a "
                        "spatial axis")
    return span


def _global_span(node: gs.Node, inputs: List[_Span], spans: Dict[str, _Span], rank: int) -> _Span:
    span = replace(_merge(inputs, node), collapsed=True)
    return span if span.global_op else replace(span, global_op=f"{node.op} '{node.name}'", global_node=node.name)


_SPAN_BY_KIND: Dict[str, SpanStep] = {
    WINDOW: _window_span, PAD: _pad_span, JOIN: _join_span, LOCAL: _local_span, MOVE_CHANNELS: _move_channels_span,
    REGROUP: _regroup_span, CHANNEL_SLICE: _channel_slice_span, LAST_AXIS: _last_axis_span, GLOBAL: _global_span}


def _span_of(graph: gs.Graph, starts: Sequence[str], source: str, rank: int, size: Tuple[int, ...],
             channels_last: bool = False) -> _Span:
    """The span of `source` over the image, walking from the tensors in `starts` (the image input; its
    channels last if `channels_last`), for an input of spatial size `size`: raises _SizesDisagree if branches
    that are joined have different sizes there."""
    ones = (1,) * rank
    spans: Dict[str, _Span] = {name: _Span(ones, (0,) * rank, ones, (), size=tuple(size), channels_last=channels_last)
                               for name in starts}
    on_path = _computing(graph, source)  # a branch that does not lead to the head (another head) is not its path
    for node in graph.nodes:  # graphsurgeon keeps them in topological order after find_heads
        if id(node) not in on_path:
            continue
        inputs = [spans[t.name] for t in node.inputs if t.name in spans]
        if not inputs:
            continue
        if not in_default_domain(node):
            raise _NotLocal(f"{node.domain}::{node.op} '{node.name}' is an op the geometry does not know")
        kind = trunk_kind(node)
        if kind == SHAPE_OF:
            continue  # a shape computation, not a feature map
        if all(span.collapsed for span in inputs) and kind != GLOBAL:
            # After a global pool (a squeeze-and-excitation gate: Squeeze, Dense, Unsqueeze...) there is no
            # spatial extent left to follow; the branch only makes what it joins not local.
            for out in node.outputs:
                spans[out.name] = inputs[0]
            continue
        step = _SPAN_BY_KIND.get(kind) if kind is not None else None
        if step is None:
            raise _NotLocal(f"{node.op} '{node.name}' on the path to the head is not a convolution, pooling, "
                            "padding or per-location op")
        span = step(node, inputs, spans, rank)
        for out in node.outputs:
            spans[out.name] = span
        if source in spans:
            return spans[source]
    made_by = next((f" (made by {n.op} '{n.name}')" for n in graph.nodes
                    if any(t.name == source for t in n.outputs)), "")
    raise _NotLocal(f"the head's feature map '{source}'{made_by} is not reached from the image "
                    f"'{', '.join(starts)}' through ops whose geometry is known")


def _computing(graph: gs.Graph, source: str) -> Set[int]:
    """The nodes (by id) that `source` is computed from: its producer and theirs, up to the inputs."""
    tensors = graph.tensors()
    seen: Set[int] = set()
    stack = [tensors[source]] if source in tensors else []
    while stack:
        tensor = stack.pop()
        for node in tensor.inputs:  # a tensor's producer (graphsurgeon: its inputs are the nodes making it)
            if id(node) not in seen:
                seen.add(id(node))
                stack.extend(node.inputs)
    return seen


def head_geometry(graph: gs.Graph, head: HeadPlan, dilation: Optional[Tuple[int, ...]] = None) -> HeadGeometry:
    """The geometry of one head's outputs, computed from the trunk in `graph` (before the rewrite of the
    head; with `dilation`, the trunk's strides already lowered for `--stride`). A head that keeps its global
    pool has none, but its trunk's (the input sizes it takes) is kept with the reason."""
    geometry = _sliding_geometry(graph, head, dilation)
    if head.slides:
        return geometry
    if not isinstance(geometry, Geometry):
        return Unknown("the global pool is kept: one prediction per image, at any input size")
    taken = "any input size" if all(p == 1 for p in geometry.size_step) else \
        f"input sizes the trunk takes: {geometry.sizes_taken()}"
    return Unknown(f"the global pool is kept: one prediction per image, at {taken}", trunk=geometry)


def _sliding_geometry(graph: gs.Graph, head: HeadPlan, dilation: Optional[Tuple[int, ...]]) -> HeadGeometry:
    tensors = graph.tensors()
    source = head.source
    feeding = upstream_inputs(graph, [source])
    if len(feeding) != 1:
        return Unknown(f"'{source}' is computed from {len(feeding)} inputs, not one image input")
    image = tensors[feeding[0]]
    rank = head.spatial_rank
    shape, layout = image.shape, input_layout(image)
    if shape is None or len(shape) != rank + 2 or not all(isinstance(d, int) for d in spatial_dims(shape, layout)):
        return Unknown(f"input '{image.name}' is not [N, C, *spatial] or [N, *spatial, C] with a static training "
                       f"size and the head's {rank} spatial axes")
    # A channels-last input is read through Transposes to channels first (after elementwise preprocessing and
    # Pads of its rows and columns, which the walk counts).
    if layout != CHANNELS_FIRST and channels_first_views(image) is None:
        return Unknown(f"input '{image.name}' is channels last, and reaches the trunk through ops other than "
                       "per-channel preprocessing, Pads and a Transpose")
    starts, last = [image.name], layout != CHANNELS_FIRST
    training = tuple(spatial_dims(shape, layout))
    try:
        span = _span_of(graph, starts, source, rank, training, last)
    except _NotLocal as error:
        return Unknown(str(error))
    if span.collapsed:
        return Unknown(f"{span.global_op} in the trunk pools the feature map '{source}' to one location before the "
                       "head, with ops between that the head grammar does not read per location", span.global_node)
    dilation = dilation or (1,) * rank
    # A cell reads `head.window` feature cells (the whole training map, or one when the pool is
    # removed), `dilation` cells apart on a trunk made that much denser: `extent` cells of it.
    extent = tuple((w - 1) * d + 1 for w, d in zip(head.window, dilation))
    trained = Geometry(input=image.name, stride=span.stride, window=training, offset=(0,) * rank,
                       receptive_field=(), receptive_offset=span.start, feature_window=head.spatial_shape,
                       layers=span.layers, layout=layout, local=not span.global_op, not_local=span.global_op,
                       training=training,
                       size_step=_size_step(lambda size: _span_of(graph, starts, source, rank, size, last),
                                            training, span.stride))
    computed = trained.feature_size(training)
    full = tuple((f - 1) * d + 1 for f, d in zip(head.spatial_shape, dilation))
    if any(c < x or c >= x + d for c, x, d in zip(computed, full, dilation)):  # our size rules vs shape inference
        return Unknown(f"the layer sizes computed for '{source}' ({list(computed)}) disagree with its inferred "
                       f"shape {list(head.spatial_shape)}")
    # The input a cell stands for: the training size, less the original strides of the cells it does not read.
    window = tuple(t - (f - w) * s * d for t, f, w, s, d in zip(training, head.spatial_shape, head.window,
                                                                span.stride, dilation))
    geometry = replace(trained, window=window, feature_window=extent,
                       receptive_field=tuple((x - 1) * s + e for x, s, e in zip(extent, span.stride, span.extent)))
    if any(c < x or c >= x + d for c, x, d in zip(geometry.feature_size(window), extent, dilation)):
        return Unknown(f"an input of {list(window)} does not give the {list(extent)} feature cells one output "
                       "reads, by the layers' size rules")
    return geometry


def _size_step(walk, training: Tuple[int, ...], stride: Tuple[int, ...]) -> Tuple[int, ...]:
    """Per axis, the smallest step p (a divisor of the stride) such that every input size training + k*p
    (the other axes at their training size) gives branches that agree wherever they are joined. Training
    size + k * stride always does; a trunk whose pads were fixed at the training size (tf2onnx's "same")
    may take no other size (Xception, NASNet)."""
    steps = []
    for axis, total in enumerate(stride):
        for step in (p for p in range(1, total + 1) if total % p == 0):
            try:
                for k in range(1, 2 * total // step + 1):
                    size = list(training)
                    size[axis] += k * step
                    walk(tuple(size))
            except _SizesDisagree:
                continue
            steps.append(step)
            break
        else:
            steps.append(total)
    return tuple(steps)


def plan_geometry(graph: gs.Graph, plan: Plan) -> Tuple[HeadGeometry, ...]:
    """One geometry per head of `plan`, in order."""
    dilation = plan.densify.factor if plan.densify else None
    return tuple(head_geometry(graph, head, dilation) for head in plan.heads)


def trunk_geometry(geometry: Optional[HeadGeometry]) -> Optional[Geometry]:
    """The geometry of a head's trunk: its own, or the one a head that keeps its pool carries."""
    if isinstance(geometry, Unknown):
        return geometry.trunk
    return geometry


def default_validation_size(geometry: Optional[HeadGeometry], training: Sequence[int]) -> Tuple[int, ...]:
    """A few strides larger than the training size: 2, 3, 4, ... strides on the successive axes, so a grid
    with swapped axes cannot pass for the right one, plus half a stride, so the size rules' rounding is
    exercised too (unless the trunk only takes whole steps). Twice the training size if the stride is unknown."""
    geometry = trunk_geometry(geometry)
    if isinstance(geometry, Geometry):
        size = tuple(t + (2 + axis) * s + s // 2 for axis, (t, s) in enumerate(zip(training, geometry.stride)))
        return size if geometry.accepts(size) or not geometry.size_step else geometry.nearest_taken(size)
    return tuple(2 * t for t in training)

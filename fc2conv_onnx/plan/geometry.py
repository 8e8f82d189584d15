"""Where each output cell of a converted model looks in the input: stride, window and receptive field.

The converted head is a Conv whose kernel is the whole training-size feature map, so output cell i reads
the feature window [i, i + F) (per axis; F = the training feature size). The trunk is translation
equivariant with a total stride S, so that window is the one the original classifier reads on the
training-size input crop that starts at pixel i*S:

    window_of(i)          = [offset + i*S, offset + i*S + T)     T = the training input size, offset 0
    receptive_field_of(i) = [rf_start + i*S, rf_start + i*S + R)  every input pixel that can change cell i

The receptive field is computed from every Conv/Pool/Pad between the input and the head (kernels,
strides, pads, dilations, on every branch). It starts before the window when the trunk pads
(rf_start < 0) and may reach past it; then the map equals crop-and-forward on the *feature map*, which
is not the same as classifying each image crop on its own (that crop would be zero-padded at its own
border instead of seeing its neighbours).

An input of size T + k*S gives k + 1 cells per axis. Other sizes are accepted: `grid` follows each
layer's own size rule (floor, ceil_mode, auto_pad), so trailing pixels that no window reaches are
dropped, and a padded trunk may give one more cell whose window runs past the input's edge.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import InputError
from ..model.walks import upstream_inputs
from ..model.layout import CHANNELS_FIRST, LAYOUTS, channels_first_views, input_layout, spatial_dims
from ..model.registry import in_default_domain, is_op
from .ops import (CHANNEL_SLICE, GLOBAL, JOIN, LAST_AXIS, LOCAL, MOVE_CHANNELS, PAD, REGROUP, SHAPE_OF, WINDOW,
                  has_parameters, sliced_axes, trunk_kind, varies_over_space)
from .plan import MAP, MAP_LAST
from .plan import HeadPlan, Plan


@dataclass(frozen=True)
class Box:
    """A half-open box of input pixels, [start, stop) per spatial axis; may reach outside the input."""

    start: Tuple[int, ...]
    stop: Tuple[int, ...]

    def slices(self) -> Tuple[slice, ...]:
        """Index for the spatial axes of an array (clip the box first if it may reach outside)."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def clipped(self, size: Sequence[int]) -> "Box":
        return Box(tuple(max(a, 0) for a in self.start), tuple(min(b, s) for b, s in zip(self.stop, size)))


@dataclass(frozen=True)
class Layer:
    """One size-changing layer on the path from the input to the head, per spatial axis."""

    op: str
    kernel: Tuple[int, ...]
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    pads_begin: Tuple[int, ...]
    pads_end: Tuple[int, ...]
    ceil_mode: bool = False
    auto_pad: str = "NOTSET"

    def output_size(self, size: Tuple[int, ...]) -> Tuple[int, ...]:
        """The ONNX output-size rule of Conv/Pool (and Pad, a 1-wide window with pads)."""
        out = []
        for x, k, s, d, pb, pe in zip(size, self.kernel, self.stride, self.dilation, self.pads_begin,
                                      self.pads_end):
            extent = (k - 1) * d + 1
            if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out.append(-(-x // s))
            elif self.auto_pad == "VALID":
                out.append((x - extent) // s + 1)
            elif self.ceil_mode:
                n = -(-(x + pb + pe - extent) // s) + 1
                if (n - 1) * s >= x + pb:  # a last window that starts in the end padding is dropped
                    n -= 1
                out.append(n)
            else:
                out.append((x + pb + pe - extent) // s + 1)
        return tuple(out)


@dataclass(frozen=True)
class Geometry:
    """How the cells of one head's outputs map to input pixels (per spatial axis)."""

    input: str
    stride: Tuple[int, ...]
    #: The training input size: the crop the original classifier reads for one cell.
    window: Tuple[int, ...]
    #: Where cell 0's window starts: the training crop sits at the origin.
    offset: Tuple[int, ...]
    receptive_field: Tuple[int, ...]
    #: Where cell 0's receptive field starts; negative when the trunk pads.
    receptive_offset: Tuple[int, ...]
    #: The training-size feature map (the head's window, in feature cells).
    feature_window: Tuple[int, ...]
    #: Size-changing layers along one path input -> head (every path gives the same sizes).
    layers: Tuple[Layer, ...] = ()
    #: Layout of the input: its spatial axes are 2 onwards (channels first) or 1 to the last but one.
    layout: str = CHANNELS_FIRST
    #: False when an op in the trunk (a global pool in a squeeze-and-excitation block, ...) reads every
    #: location: each cell then depends on the whole input, not only on its window. `not_local` names it.
    local: bool = True
    not_local: str = ""
    #: The model's training input size, and the input sizes the trunk takes: the training size + k * size_step
    #: per axis (1: any size); other sizes make joined branches disagree (pads fixed at the training size).
    training: Tuple[int, ...] = ()
    size_step: Tuple[int, ...] = ()

    def accepts(self, size: Sequence[int]) -> bool:
        """Whether the trunk takes an input of this spatial size (not smaller than the training size)."""
        return all(s >= t and (s - t) % p == 0 for s, t, p in zip(size, self.training, self.size_step))

    def smallest_taken(self) -> Tuple[int, ...]:
        """Per axis, the smallest input that gives a cell and that the trunk is known to take (not below the
        training size when the sizes it takes were worked out: see `accepts`)."""
        window = tuple(int(w) for w in self.window)
        return tuple(max(w, t) for w, t in zip(window, self.training)) if self.size_step else window

    def sizes_taken(self) -> str:
        """'any size', or the sizes per axis the trunk takes."""
        if all(p == 1 for p in self.size_step):
            return "any size from the training size up"
        return " x ".join(f"{t} + k*{p}" if p > 1 else f"any from {t}" for t, p in zip(self.training, self.size_step))

    def nearest_taken(self, size: Sequence[int]) -> Tuple[int, ...]:
        """The largest size the trunk takes that is no larger than `size` (at least the training size)."""
        return tuple(max(t, t + (s - t) // p * p) for s, t, p in zip(size, self.training, self.size_step))

    def input_spatial(self, shape: Sequence[int]) -> Tuple[int, ...]:
        """The spatial size of a full input shape."""
        return tuple(spatial_dims(shape, self.layout))

    @property
    def padded(self) -> bool:
        """True when cells see pixels outside their window: the map then differs from image crops."""
        return any(r0 < o or r0 + r > o + w for r0, r, o, w in
                   zip(self.receptive_offset, self.receptive_field, self.offset, self.window))

    def window_of(self, cell: Sequence[int]) -> Box:
        """The training-size input crop whose classification output cell `cell` holds."""
        start = tuple(o + i * s for o, i, s in zip(self.offset, _cell(cell, self.stride), self.stride))
        return Box(start, tuple(a + w for a, w in zip(start, self.window)))

    def receptive_field_of(self, cell: Sequence[int]) -> Box:
        """Every input pixel that can change output cell `cell` (may reach past the input's edges)."""
        start = tuple(o + i * s for o, i, s in zip(self.receptive_offset, _cell(cell, self.stride), self.stride))
        return Box(start, tuple(a + r for a, r in zip(start, self.receptive_field)))

    def feature_size(self, input_size: Sequence[int]) -> Tuple[int, ...]:
        size = tuple(int(v) for v in input_size)
        for layer in self.layers:
            size = layer.output_size(size)
        return size

    def grid(self, input_size: Sequence[int]) -> Tuple[int, ...]:
        """Output cells per axis for a spatial input size. An input that gives no cell on some axis (smaller
        than `smallest_size`, where the model fails to run) raises `InputError`."""
        cells = self._cells(input_size)
        if any(c <= 0 for c in cells):
            smallest = self.smallest_size()
            raise InputError(f"input {'x'.join(map(str, input_size))} gives no output cell: the smallest input the "
                             f"model takes is {'x'.join(map(str, smallest))} (its window is "
                             f"{'x'.join(map(str, self.window))})")
        return cells

    def _cells(self, input_size: Sequence[int]) -> Tuple[int, ...]:
        return tuple(f - w + 1 for f, w in zip(self.feature_size(input_size), self.feature_window))

    def smallest_size(self) -> Tuple[int, ...]:
        """Per axis (the others at the training size), the smallest input that gives a cell: the window, or
        less when the trunk pads (that cell then sees padding where the window's pixels would be)."""
        reference = self.training or self.window
        smallest = []
        for axis, size in enumerate(reference):
            probe = list(reference)
            while size > 1:
                probe[axis] = size - 1
                if self._cells(probe)[axis] < 1:
                    break
                size -= 1
            smallest.append(size)
        return tuple(smallest)

    def describe(self) -> str:
        def axes(values: Sequence[int]) -> str:
            return "x".join(map(str, values))
        text = (f"input '{self.input}': stride {axes(self.stride)}, window {axes(self.window)}, offset "
                f"{axes(self.offset)} (cell i covers [offset + i*stride, offset + i*stride + window) per axis); "
                f"receptive field {axes(self.receptive_field)} starting at {axes(self.receptive_offset)}")
        if self.layout != CHANNELS_FIRST:
            text += f" ({self.layout.replace('_', ' ')} input)"
        if self.size_step and any(p > 1 for p in self.size_step):
            text += f"; input sizes it takes: {self.sizes_taken()}"
        if self.padded:
            text += (" - the trunk pads or reads past the window, so each cell is the head on that window of "
                     "the feature map, not the classifier run on the image crop alone")
        return text

    def locality(self) -> str:
        """One plain line when the cells are not local, else ''."""
        return "" if self.local else (f"cells are not local: {self.not_local} in the trunk reads every location, so "
                                      "each cell depends on the whole input, not only on its window")

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict) -> "Geometry":
        """The geometry a converted model's marker stores, checked against the schema (`_GEOMETRY_SCHEMA`):
        a marker is a file's contents, and a stride of NaN or 0 would give boxes of NaN or none; raises
        ValueError naming the first field that is wrong."""
        if not isinstance(values, dict) or set(values) - set(_GEOMETRY_SCHEMA) - {"layers"}:
            raise ValueError("the geometry is not an object of the fields this tool writes")
        fields = {name: _checked(name, values.get(name), kind) for name, kind in _GEOMETRY_SCHEMA.items()
                  if name in values or kind[1] is _REQUIRED}
        layers = values.get("layers", [])
        if not isinstance(layers, list) or len(layers) > _MAX_ITEMS:
            raise ValueError("'layers' is not a list of layers")
        checked = tuple(Layer(**{name: _checked(f"layers.{name}", layer.get(name) if isinstance(layer, dict) else None,
                                                kind) for name, kind in _LAYER_SCHEMA.items()
                                 if isinstance(layer, dict) and (name in layer or kind[1] is _REQUIRED)})
                        for layer in layers)
        rank = len(fields["stride"])
        spatial = [v for name, v in fields.items() if isinstance(v, tuple)] + \
            [v for layer in checked
             for v in (layer.kernel, layer.stride, layer.dilation, layer.pads_begin, layer.pads_end)]
        if not 1 <= rank <= 3 or any(len(v) != rank for v in spatial if v):
            raise ValueError(f"its spatial fields do not all have one value per axis ({rank})")
        if fields.get("layout", CHANNELS_FIRST) not in LAYOUTS:
            raise ValueError(f"'layout' is {fields.get('layout')!r}")
        return cls(layers=checked, **fields)


_REQUIRED, _OPTIONAL = object(), object()
#: The largest value a size, stride or offset may have in a marker (past it no picture has a cell).
_MAX_VALUE = 1 << 24
_MAX_ITEMS = 4096


def _checked(name: str, value: Any, kind: Tuple[str, object]) -> Any:
    """`value` as the schema's `kind` says: "str", "bool", "ints>=1" (per axis), "ints>=0", "ints"."""
    what = kind[0]
    if what == "str":
        if not isinstance(value, str) or len(value) > 1 << 16:
            raise ValueError(f"'{name}' is not a string")
        return value
    if what == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"'{name}' is not true or false")
        return value
    least = {"ints>=1": 1, "ints>=0": 0, "ints": -_MAX_VALUE}[what]
    if not isinstance(value, list) or len(value) > 8 or \
            not all(isinstance(v, int) and not isinstance(v, bool) and least <= v <= _MAX_VALUE for v in value):
        bound = "whole numbers" if least < 0 else f"whole numbers from {least}"
        raise ValueError(f"'{name}' is not a list of {bound} up to {_MAX_VALUE} (it is {str(value)[:60]})")
    return tuple(value)


_GEOMETRY_SCHEMA = {
    "input": ("str", _REQUIRED), "stride": ("ints>=1", _REQUIRED), "window": ("ints>=1", _REQUIRED),
    "offset": ("ints", _REQUIRED), "receptive_field": ("ints>=1", _REQUIRED), "receptive_offset": ("ints", _REQUIRED),
    "feature_window": ("ints>=1", _REQUIRED), "layout": ("str", _OPTIONAL), "local": ("bool", _OPTIONAL),
    "not_local": ("str", _OPTIONAL), "training": ("ints>=1", _OPTIONAL), "size_step": ("ints>=1", _OPTIONAL),
}
_LAYER_SCHEMA = {
    "op": ("str", _REQUIRED), "kernel": ("ints>=1", _REQUIRED), "stride": ("ints>=1", _REQUIRED),
    "dilation": ("ints>=1", _REQUIRED), "pads_begin": ("ints>=0", _REQUIRED), "pads_end": ("ints>=0", _REQUIRED),
    "ceil_mode": ("bool", _OPTIONAL), "auto_pad": ("str", _OPTIONAL),
}


@dataclass(frozen=True)
class Unknown:
    """Geometry that could not be computed, and why."""

    reason: str
    #: The node (a global pool in the trunk) that makes the head's feature map one location already, if that
    #: is why.
    pooled_by: str = ""
    #: The trunk's geometry when only the head has none (a kept global pool): the input sizes it takes.
    trunk: Optional["Geometry"] = None

    def describe(self) -> str:
        return f"geometry unknown: {self.reason}"

    def to_dict(self) -> Dict:
        return {"unknown": self.reason}


HeadGeometry = Union[Geometry, Unknown]


def _cell(cell: Sequence[int], stride: Tuple[int, ...]) -> Tuple[int, ...]:
    """An output cell's index per axis; InputError (a ValueError too) unless it is whole numbers, one per axis."""
    items = cell if isinstance(cell, (tuple, list)) else (cell,)
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in items):
        raise CellError(f"cell {cell!r} is not whole numbers, one per axis")
    if len(items) != len(stride):
        raise CellError(f"cell {list(items)} has {len(items)} axes; this output has {len(stride)}")
    return tuple(int(i) for i in items)


class CellError(InputError, ValueError):
    """A cell index that is not one whole number per axis (a ValueError, as it was, and the API's InputError)."""


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
    channels-last one."""
    if "pads" in node.attrs:  # opset < 11
        pads = [int(v) for v in node.attrs["pads"]]
    elif len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        pads = [int(v) for v in np.asarray(node.inputs[1].values).reshape(-1)]
    else:
        raise _NotLocal(f"Pad '{node.name}' takes its pads from a computed tensor")
    full_rank = rank + 2
    if len(node.inputs) > 3 and node.inputs[3].name:  # opset 18 `axes`
        if not isinstance(node.inputs[3], gs.Constant):
            raise _NotLocal(f"Pad '{node.name}' takes its axes from a computed tensor")
        axes = [int(a) % full_rank for a in np.asarray(node.inputs[3].values).reshape(-1)]
    else:
        axes = list(range(full_rank))
    begin, end = [0] * full_rank, [0] * full_rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[len(axes) + i]
    spatial = list(range(1, rank + 1)) if channels_last else list(range(2, rank + 2))
    if any(begin[a] or end[a] for a in range(full_rank) if a not in spatial):
        raise _NotLocal(f"Pad '{node.name}' pads the batch or channel axis")
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


def _span_of(graph: gs.Graph, starts: Sequence[str], source: str, rank: int, size: Tuple[int, ...]) -> _Span:
    """The span of `source` over the image, walking from the tensors in `starts` (the image input, or
    what a channels-last input is transposed to), for an input of spatial size `size`: raises _SizesDisagree
    if branches that are joined have different sizes there."""
    ones = (1,) * rank
    spans: Dict[str, _Span] = {name: _Span(ones, (0,) * rank, ones, (), size=tuple(size)) for name in starts}
    for node in graph.nodes:  # graphsurgeon keeps them in topological order after find_heads
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
        if kind == WINDOW:
            if node.inputs[0].name not in spans:
                raise _NotLocal(f"{node.op} '{node.name}' reads the image through its weights")
            if spans[node.inputs[0].name].channels_last:
                raise _NotLocal(f"{node.op} '{node.name}' reads a map whose channels a Transpose moved last")
            span = _through_layer(spans[node.inputs[0].name], window_layer(node, rank))
        elif kind == PAD:
            span = spans[node.inputs[0].name]
            span = _through_layer(span, _pad_layer(node, rank, span.channels_last))
        elif kind == JOIN:
            span = _merge(inputs, node)
        elif kind == LOCAL:
            others = [t for t in node.inputs if t.name not in spans and t.name]
            span = _merge(inputs, node)
            if not has_parameters(node) and not all(_constant_is_per_location(t, rank, span.channels_last)
                                                      for t in others):
                raise _NotLocal(f"{node.op} '{node.name}' combines the features with a tensor that varies "
                                "over the spatial axes")
        elif kind == MOVE_CHANNELS:
            span = replace(inputs[0], channels_last=node.attrs["perm"][-1] == 1)
        elif kind == REGROUP:
            if node.inputs[0].name not in spans:
                raise _NotLocal(f"{node.op} '{node.name}' reads the image through its shape input")
            span = spans[node.inputs[0].name]
            if span.channels_last or not _keeps_spatial_axes(node, rank):
                raise _NotLocal(f"{node.op} '{node.name}' on the path to the head moves or reshapes the spatial axes")
        elif kind == CHANNEL_SLICE:
            if node.inputs[0].name not in spans:
                raise _NotLocal(f"{node.op} '{node.name}' reads the image through its bounds")
            span = spans[node.inputs[0].name]
            channels = len(node.inputs[0].shape) - 1 if span.channels_last else 1
            if sliced_axes(node) != {channels}:
                raise _NotLocal(f"{node.op} '{node.name}' on the path to the head cuts a spatial axis")
        elif kind == LAST_AXIS:
            span = _merge(inputs, node)
            if not span.channels_last:
                raise _NotLocal(f"{node.op} '{node.name}' acts along the last axis of a channels-first map, which "
                                "is a spatial axis")
        elif kind == GLOBAL:
            span = replace(_merge(inputs, node), collapsed=True)
            if not span.global_op:
                span = replace(span, global_op=f"{node.op} '{node.name}'", global_node=node.name)
        else:
            raise _NotLocal(f"{node.op} '{node.name}' on the path to the head is not a convolution, pooling, "
                            "padding or per-location op")
        for out in node.outputs:
            spans[out.name] = span
        if source in spans:
            return spans[source]
    made_by = next((f" (made by {n.op} '{n.name}')" for n in graph.nodes
                    if any(t.name == source for t in n.outputs)), "")
    raise _NotLocal(f"the head's feature map '{source}'{made_by} is not reached from the image "
                    f"'{', '.join(starts)}' through ops whose geometry is known")


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
    # A channels-last input is read through Transposes to channels first (after elementwise preprocessing):
    # the walk starts after them.
    views = [image] if layout == CHANNELS_FIRST else channels_first_views(image)
    if views is None:
        return Unknown(f"input '{image.name}' is channels last, and reaches the trunk through ops other than "
                       "per-channel preprocessing and a Transpose")
    starts = [view.name for view in views]
    training = tuple(spatial_dims(shape, layout))
    try:
        span = _span_of(graph, starts, source, rank, training)
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
                       size_step=_size_step(lambda size: _span_of(graph, starts, source, rank, size), training,
                                            span.stride))
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

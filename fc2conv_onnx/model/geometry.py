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

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from .layout import CHANNELS_FIRST, LAYOUTS, spatial_dims


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

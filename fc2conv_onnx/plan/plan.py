"""The conversion plan: pure data describing what the rewrite will do, with no graph in it.

`heads.find_heads` builds a `Plan`; `rewrite.rewrite` carries it out; `inspect` prints it. Weights are
held as the linear layers define them, `W[K, in]` and `b[K]`; laying them out as convolution kernels is
the rewrite's job, so a plan can be checked against the original model's arithmetic directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from ..errors import printable
from ..model.layout import CHANNELS_FIRST, FLAT, MAP, MAP_LAST  # noqa: F401 (the forms, defined with the layouts)
from .options import KEEP_POOL, NO_POOL, POOLINGS, WINDOW_POOL  # noqa: F401 (named with the options)


@dataclass(frozen=True)
class Decline:
    """A matcher's answer when the node is its spelling but cannot be converted; `reason` says why."""

    reason: str




class PoolMode:
    """What becomes of a global pooling before a head (`--pooling`): its window, whether the converted head
    slides, and the pool node that replaces it. One object per mode, in `MODES`."""

    name = ""
    #: False when the converted head gives one prediction per image.
    slides = True

    def window(self, spatial: Tuple[int, ...]) -> Tuple[int, ...]:
        """The feature window one output cell is computed from."""
        return spatial

    def replacement(self, kind: str, spatial: Tuple[int, ...],
                    dilation: Optional[Tuple[int, ...]]) -> Optional[Tuple[str, Dict[str, Any]]]:
        """(op, attributes) of the pool that replaces the global one on [N, C, *spatial], or None for none."""
        raise NotImplementedError

    def becomes(self, kind: str, spatial: Tuple[int, ...]) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"PoolMode({self.name!r})"


def window_op(kind: str) -> str:
    """The windowed pool of a kind ("average" or "max"); "Global" + it pools the whole map."""
    return "AveragePool" if kind == "average" else "MaxPool"


class KeepPool(PoolMode):
    """The pool stays: one prediction per image, at any input size."""

    name, slides = KEEP_POOL, False

    def replacement(self, kind, spatial, dilation):
        return "Global" + window_op(kind), {}

    def becomes(self, kind, spatial):
        return f"Global{window_op(kind)} (kept: one prediction per image)"


class WindowPool(PoolMode):
    """A pool the size of the training feature map, stride 1: the classifier at every window."""

    name = WINDOW_POOL

    def replacement(self, kind, spatial, dilation):
        attrs: Dict[str, Any] = {"kernel_shape": list(spatial), "strides": [1] * len(spatial)}
        if dilation:
            attrs["dilations"] = list(dilation)
        return window_op(kind), attrs

    def becomes(self, kind, spatial):
        size = "x".join(map(str, spatial))
        return f"{window_op(kind)} {size} stride 1 (the classifier on every {size} window of the feature map)"


class NoPool(PoolMode):
    """The pool goes: the head at every feature location (class activation maps)."""

    name = NO_POOL

    def window(self, spatial):
        return (1,) * len(spatial)

    def replacement(self, kind, spatial, dilation):
        return None

    def becomes(self, kind, spatial):
        return "removed (the head at every feature location)"


MODES: Dict[str, PoolMode] = {mode.name: mode for mode in (KeepPool(), WindowPool(), NoPool())}
assert tuple(MODES) == POOLINGS, "each pooling the options name has its mode here"


@dataclass(frozen=True)
class GlobalPool:
    """A pooling over every spatial axis that starts a head (GlobalAveragePool, ReduceMean over the spatial
    axes, ...), and what the rewrite makes of it."""

    node: str
    op: str
    #: "average" or "max".
    kind: str
    #: The channels-first feature map the head starts from (a channels-last pool reads a Transpose of it,
    #: maybe through per-location ops: `between`).
    source: str
    #: The pool's output, and its form: MAP_LAST for a pool of a channels-last map that keeps the pooled
    #: axes, FLAT when it drops them, MAP otherwise.
    output: str
    form: str
    mode: PoolMode = MODES[KEEP_POOL]
    #: The tensor the pool node reads, and whether it is channels last.
    input: str = ""
    input_last: bool = False
    #: Nodes between the source and the pool (tf2onnx's Transpose to channels last, then activations on
    #: the channels-last map): per location, so they stay as they are in every mode.
    between: Tuple[str, ...] = ()

    def becomes(self, spatial: Tuple[int, ...]) -> str:
        return self.mode.becomes(self.kind, spatial)


#: `Flattening.order` of a flattening that reads through a Transpose other than to channels last.
PERMUTED = "permuted"


@dataclass(frozen=True, eq=False)
class Flattening:
    """Flatten(axis=1) of a spatial tensor, whatever op spelled it, read by a head's first linear layer."""

    node: str
    op: str
    source: str
    #: (C, *spatial) at the training size; the batch axis is not part of it.
    source_shape: Tuple[int, ...]
    #: Element order of the flattened vector: CHANNELS_FIRST is (C, *spatial), as Flatten(axis=1) of the
    #: source lists it; CHANNELS_LAST is (*spatial, C), as after a Transpose to channels last (Keras);
    #: PERMUTED is the order of the source transposed by `perm` (which keeps the batch first).
    order: str = CHANNELS_FIRST
    note: str = ""
    #: Elementwise ops between the Transpose and the flattening; they move onto the source.
    prelude: Tuple["PassThrough", ...] = ()
    #: The Transpose's perm, for order PERMUTED.
    perm: Tuple[int, ...] = ()

    @property
    def spatial_shape(self) -> Tuple[int, ...]:
        return self.source_shape[1:]

    @property
    def features(self) -> int:
        return prod(self.source_shape)


@dataclass(frozen=True, eq=False)
class Quantized:
    """A constant that the model dequantizes: DequantizeLinear(values, scale, zero_point, axis).

    The rewrite keeps it quantized (the values laid out anew, the same scale and zero point), so a
    QDQ model stays a QDQ model that runtimes can fuse into integer convolutions.
    """

    values: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)
    zero_point: Optional[np.ndarray] = field(repr=False)
    #: The axis of `values` that `scale` runs along (per-channel), or None for one scale (per-tensor).
    axis: Optional[int] = None

    def dequantized(self) -> np.ndarray:
        """The float values, computed as DequantizeLinear does: (values - zero_point) * scale."""
        values = self.values.astype(np.int64 if self.values.dtype.kind in "iu" else np.float64)
        zero = np.zeros((), values.dtype) if self.zero_point is None else self.zero_point.astype(values.dtype)
        scale = self.scale
        if self.axis is not None:
            shape = [1] * self.values.ndim
            shape[self.axis] = -1
            scale, zero = scale.reshape(shape), (zero.reshape(shape) if np.ndim(zero) else zero)
        return ((values - zero).astype(self.scale.dtype) * scale).astype(self.scale.dtype)

    def relaid(self, values: np.ndarray, axis: Optional[int]) -> "Quantized":
        """The same quantization for values laid out anew (transposed or reshaped)."""
        return Quantized(values, self.scale, self.zero_point, axis if self.axis is not None else None)


@dataclass(frozen=True, eq=False)
class LinearLayer:
    """y = x @ weight.T + bias, whatever ops spelled it (Gemm, MatMul + Add, MatMul)."""

    nodes: Tuple[str, ...]
    spelling: str
    input: str
    output: str
    weight: np.ndarray = field(repr=False)  # [K, in]
    bias: Optional[np.ndarray] = field(repr=False)  # [K] or None
    #: The weight as the model stores it when it comes through DequantizeLinear: values [K, in], per-channel
    #: along axis 0 (per output feature) or per-tensor. `weight` then holds the dequantized values.
    weight_quantized: Optional[Quantized] = None
    #: Likewise for the bias ([K]).
    bias_quantized: Optional[Quantized] = None

    @property
    def features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def op(self) -> str:
        """The op the layer starts with (Gemm or MatMul)."""
        return self.spelling.split()[0]


#: What a pass-through op becomes on an [N, K, *spatial] tensor.
KEEP = "keep"  # the node stays; constants in `constants` replace its inputs, `attrs` are set
REMOVE = "remove"  # the node goes (Dropout at inference)
AXIS_LAST = "axis_last"  # Transpose K last, the op on the last axis, Transpose back (pre-13 Softmax)
TO_CHANNELS_FIRST = "to_channels_first"  # the node becomes a Transpose to [N, K, *spatial] (a flattening of MAP_LAST)


@dataclass(frozen=True, eq=False)
class PassThrough:
    node: str
    op: str
    input: str
    output: str
    action: str
    becomes: str
    constants: Mapping[int, np.ndarray] = field(default_factory=dict, repr=False)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    #: The form of the output (see FLAT); a Transpose or a flattening changes it.
    form: str = FLAT
    #: Features of the output when the op changes them (a 1x1 Conv on a pooled map), else None.
    out_features: Optional[int] = None

    @property
    def nodes(self) -> Tuple[str, ...]:
        return (self.node,)


Step = Union[LinearLayer, PassThrough]


@dataclass(frozen=True, eq=False)
class HeadPlan:
    """One head, read as the grammar says: a spatial source, then either a global pool or a flattening whose
    first linear layer reads the whole feature map, then per-location ops, flattenings, linear layers and
    pass-through ops in graph order, ending in graph outputs."""

    #: The spatial tensor the head reads, channels first, and its (C, *spatial) at the training size.
    source: str
    source_shape: Tuple[int, ...]
    #: Everything after the pool or the first layer, in graph order.
    steps: Tuple[Step, ...]
    #: Graph outputs the head produces; their names are kept.
    outputs: Tuple[str, ...]
    #: The layout each output is given in: [N, K, *spatial] (CHANNELS_FIRST) or [N, *spatial, K].
    output_layouts: Mapping[str, str] = field(default_factory=dict)
    #: The form each output has in the original graph (FLAT, MAP, MAP_LAST).
    output_forms: Mapping[str, str] = field(default_factory=dict)
    #: A pooled head: the global pool it starts with.
    pool: Optional[GlobalPool] = None
    #: A flattening head: the flattening of the whole feature map and the layer that reads it.
    flattening: Optional[Flattening] = None
    first: Optional[LinearLayer] = None
    #: Elementwise ops with scalar constants around that flattening (a QDQ model's Q/DQ pairs), in graph
    #: order; they run on the source feature map instead, before the first layer.
    prelude: Tuple[PassThrough, ...] = ()
    #: A global pool in the trunk, not read as this head's own, that the source is computed from: the source
    #: is one location already, whatever the input's size.
    pooled_by: str = ""

    @property
    def spatial_shape(self) -> Tuple[int, ...]:
        return self.source_shape[1:]

    @property
    def spatial_rank(self) -> int:
        return len(self.spatial_shape)

    @property
    def window(self) -> Tuple[int, ...]:
        """The feature window one output cell is computed from."""
        return self.pool.mode.window(self.spatial_shape) if self.pool else self.spatial_shape

    @property
    def slides(self) -> bool:
        """False when the converted head gives one prediction per image (a kept global pool)."""
        return self.pool.mode.slides if self.pool else True

    @property
    def output_layout(self) -> str:
        """The layout of the outputs (of the first, when they differ)."""
        return self.output_layouts.get(self.outputs[0], CHANNELS_FIRST) if self.outputs else CHANNELS_FIRST

    @property
    def linears(self) -> Tuple[LinearLayer, ...]:
        return ((self.first,) if self.first else ()) + tuple(s for s in self.steps if isinstance(s, LinearLayer))

    @property
    def nodes(self) -> Tuple[str, ...]:
        """Every original node this head replaces or re-expresses (the flattening is left to cleanup)."""
        names = [step.node for step in self.prelude] + (list(self.pool.between) + [self.pool.node] if self.pool else [])
        for step in ((self.first,) if self.first else ()) + self.steps:
            names.extend(step.nodes)
        return tuple(names)

    def kernel_shape(self, layer: LinearLayer) -> Tuple[int, ...]:
        """The Conv kernel a layer becomes: the source's whole extent for the first, 1x1... after it."""
        if layer is self.first:
            return (layer.features, self.source_shape[0]) + self.spatial_shape
        return (layer.features, int(layer.weight.shape[1])) + (1,) * self.spatial_rank

    @property
    def tensors(self) -> Tuple[str, ...]:
        """Every FLAT tensor, whose shape becomes [N, K, *spatial]."""
        flat = [step.output for step in self.steps if not isinstance(step, PassThrough) or step.form == FLAT]
        return tuple(step.output for step in self.prelude) + ((self.first.output,) if self.first else ()) + \
            ((self.pool.output,) if self.pool and self.pool.form == FLAT else ()) + tuple(flat)

    def describe(self) -> str:
        layouts = sorted(set(self.output_layouts.values())) or [CHANNELS_FIRST]
        layout = " / ".join("[N, K, *spatial]" if x == CHANNELS_FIRST else "[N, *spatial, K]" for x in layouts)
        spatial = ", ".join(map(str, self.spatial_shape))
        lines = [f"head -> {', '.join(self.outputs)} (as {layout})"]
        if self.pool:
            lines.append(f"  source {self.source} [N, {self.source_shape[0]}, {spatial}]")
            if self.pool.between:
                lines.append(f"  {len(self.pool.between)} per-location op(s) on the channels-last map before the "
                             "pool -> unchanged")
            lines.append(f"  {self.pool.op} '{self.pool.node}' -> {self.pool.becomes(self.spatial_shape)}")
        else:
            flat = self.flattening
            assert flat is not None  # a head without a pool starts at a flattening
            lines.append(f"  source {self.source} [N, {self.source_shape[0]}, {spatial}] via {flat.op} '{flat.node}'"
                         + (f" ({flat.note})" if flat.note else ""))
        lines += [f"  {step.op} '{step.node}' -> {step.becomes}, on the feature map" for step in self.prelude]
        if self.first:
            lines.append(f"  {_layer_line(self.first)} -> Conv {'x'.join(map(str, self.spatial_shape))} kernel "
                         f"{list(self.kernel_shape(self.first))}")
        pointwise = "x".join("1" * self.spatial_rank)
        for step in self.steps:
            if isinstance(step, LinearLayer):
                lines.append(f"  {_layer_line(step)} -> Conv {pointwise} kernel {list(self.kernel_shape(step))}")
            else:
                lines.append(f"  {step.op} '{step.node}' -> {step.becomes}")
        return "\n".join(map(printable, lines))

    def to_dict(self) -> Dict[str, Any]:
        flat = self.flattening
        return {
            "outputs": list(self.outputs),
            "output_layout": self.output_layout,
            "output_layouts": dict(self.output_layouts),
            "source": self.source,
            "source_shape": list(self.source_shape),
            "flattening": None if flat is None else {"node": flat.node, "op": flat.op, "order": flat.order,
                                                     "perm": list(flat.perm), "note": flat.note},
            "pooling": None if self.pool is None else {"node": self.pool.node, "op": self.pool.op,
                                                       "mode": self.pool.mode.name,
                                                       "becomes": self.pool.becomes(self.spatial_shape)},
            "prelude": [{"node": s.node, "op": s.op, "becomes": s.becomes} for s in self.prelude],
            "layers": [_layer_dict(s, list(self.kernel_shape(s))) if isinstance(s, LinearLayer)
                       else {"node": s.node, "op": s.op, "becomes": s.becomes}
                       for s in ((self.first,) if self.first else ()) + self.steps],
        }


def _layer_line(layer: LinearLayer) -> str:
    quantized = layer.weight_quantized
    kind = "" if quantized is None else \
        f", {quantized.values.dtype} weight {'per-channel' if quantized.axis is not None else 'per-tensor'}"
    return f"{layer.spelling} '{layer.nodes[0]}' [{layer.features} x {layer.weight.shape[1]}{kind}]"


def _layer_dict(layer: LinearLayer, kernel: list) -> Dict[str, Any]:
    return {"nodes": list(layer.nodes), "spelling": layer.spelling, "weight_shape": list(layer.weight.shape),
            "bias": layer.bias is not None, "becomes": "Conv", "kernel_shape": kernel,
            "quantized_weight": None if layer.weight_quantized is None else {
                "dtype": str(layer.weight_quantized.values.dtype),
                "per_channel": layer.weight_quantized.axis is not None}}


@dataclass(frozen=True)
class LayerChange:
    """New attributes for one window op of the trunk."""

    node: str
    op: str
    strides: Tuple[int, ...]
    dilations: Tuple[int, ...]
    pads: Tuple[int, ...]
    #: How many times denser this op's output is than before (per axis).
    factor: Tuple[int, ...]


@dataclass(frozen=True)
class Densify:
    """Run the trunk `factor` times denser (per axis), so that converted cells are `stride` pixels apart."""

    stride: Tuple[int, ...]
    factor: Tuple[int, ...]
    changes: Tuple[LayerChange, ...]
    #: The ops whose stride was lowered.
    lowered: Tuple[str, ...]

    def describe(self) -> str:
        lowered = ", ".join(f"'{name}'" for name in self.lowered)
        dilated = sum(1 for c in self.changes if c.node not in self.lowered)
        return (f"output stride {'x'.join(map(str, self.stride))}: the stride of {lowered} lowered, "
                f"{dilated} later window op(s) dilated, the head's first window dilated by "
                f"{'x'.join(map(str, self.factor))}")

    def to_dict(self) -> dict:
        return {"stride": list(self.stride), "factor": list(self.factor), "lowered": list(self.lowered),
                "changes": [{"node": c.node, "strides": list(c.strides), "dilations": list(c.dilations),
                             "pads": list(c.pads)} for c in self.changes]}


@dataclass(frozen=True)
class Skipped:
    """A Gemm/MatMul left as it was, and why."""

    node: str
    op: str
    reason: str

    def describe(self) -> str:
        return f"{self.op} '{self.node}': {self.reason}"


#: Rewrites of the trunk listed one by one in the text report; more are counted (the JSON lists them all).
MAX_NOTES_SHOWN = 4


@dataclass(frozen=True, eq=False)
class Plan:
    heads: Tuple[HeadPlan, ...]
    skipped: Tuple[Skipped, ...]
    #: Graph inputs that feed a converted head's source; their batch and spatial dims become symbolic.
    trunk_inputs: Tuple[str, ...]
    opset: int
    #: Layout of each trunk input (channels last for tf2onnx's NHWC inputs); absent means channels first.
    input_layouts: Mapping[str, str] = field(default_factory=dict)
    #: Exact rewrites the normalize step made to the trunk (see `normalize.normalize`).
    normalized: Tuple[str, ...] = ()
    #: A finer output stride: the trunk's changes and the head's dilation (see `atrous`).
    densify: Optional[Densify] = None
    #: Global pools that do not start a head, though linear layers follow them, and why.
    pool_declines: Mapping[str, str] = field(default_factory=dict)
    #: Global pools (op 'name') that feed the outputs with no layer after them: kept, they leave nothing to
    #: convert (the model takes any size already); --pooling window or none makes their outputs maps.
    output_pools: Tuple[str, ...] = ()
    #: With no head and no linear layer: why the model is not read as fully convolutional already (its outputs
    #: maps of one location at the training size; `map_outputs`).
    not_a_map: str = ""
    #: The size a dynamic-size model was read and validated at when no training size was given (its heads
    #: keep their global pools, which need none).
    probe_size: Tuple[int, ...] = ()
    #: Graph inputs the trunk reads that hold per-channel parameters, not images (tf2onnx leaves Keras
    #: Normalization's mean and variance so); validation feeds them positive values.
    parameter_inputs: Tuple[str, ...] = ()

    def input_layout(self, name: str) -> str:
        return self.input_layouts.get(name, CHANNELS_FIRST)

    def describe(self, heads_are: str = "to convert") -> str:
        """The plan in lines; `heads_are` says what the heads are to the reader ("to convert", "checked")."""
        shown = self.normalized if len(self.normalized) <= MAX_NOTES_SHOWN + 1 else self.normalized[:MAX_NOTES_SHOWN]
        lines = [f"normalized: {note}" for note in shown]
        if len(shown) < len(self.normalized):  # ShuffleNetV2 has 32: the report would be mostly these
            lines.append(f"normalized: {len(self.normalized) - len(shown)} more like these (--json lists every one)")
        if self.probe_size:
            lines.append(f"no --input-size: the model takes inputs of any size, and its heads keep their global "
                         f"pools, which need none; read and validated at {'x'.join(map(str, self.probe_size))}")
        if self.parameter_inputs:
            lines.append(f"input(s) {', '.join(repr(n) for n in self.parameter_inputs)}: per-channel parameters, not "
                         "images (an exporter left them as inputs); validated with values in [0.5, 1.5)")
        if self.densify:
            lines.append(self.densify.describe())
        lines.append(f"{len(self.heads)} head(s) {heads_are}" + (":" if self.heads else ""))
        skipped = [f"{len(self.skipped)} node(s) left as they are:"] if self.skipped else []
        skipped += [f"  {s.describe()}" for s in self.skipped]
        # Each line is escaped on its own (a name may hold a newline); a head escapes its own lines.
        return "\n".join([*map(printable, lines), *(head.describe() for head in self.heads),
                          *map(printable, skipped)])

    def to_dict(self) -> Dict[str, Any]:
        return {
            "heads": [head.to_dict() for head in self.heads],
            "skipped": [{"node": s.node, "op": s.op, "reason": s.reason} for s in self.skipped],
            "trunk_inputs": list(self.trunk_inputs),
            "input_layouts": {name: self.input_layout(name) for name in self.trunk_inputs},
            "opset": self.opset,
            "normalized": list(self.normalized),
            "densify": None if self.densify is None else self.densify.to_dict(),
            "parameter_inputs": list(self.parameter_inputs),
            "probe_size": list(self.probe_size),
        }

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

from .layout import CHANNELS_FIRST


@dataclass(frozen=True)
class Decline:
    """A matcher's answer when the node is its spelling but cannot be converted; `reason` says why."""

    reason: str


#: What becomes of a global pooling before the head (`--pooling`).
KEEP_POOL = "keep"  # the pool stays: one prediction per image, at any input size
WINDOW_POOL = "window"  # a pool the size of the training feature map, stride 1: the classifier at every window
NO_POOL = "none"  # the pool goes: the head at every feature location (class activation maps)
POOLINGS = (KEEP_POOL, WINDOW_POOL, NO_POOL)


@dataclass(frozen=True)
class GlobalPool:
    """A pooling over every spatial axis before the head (GlobalAveragePool, ReduceMean over the spatial
    axes, ...), and what the rewrite makes of it."""

    node: str
    op: str
    #: "average" or "max".
    kind: str
    mode: str = KEEP_POOL

    @property
    def window_op(self) -> str:
        """The windowed pool of the same kind ("AveragePool" or "MaxPool"; "Global" + it for the whole map)."""
        return "AveragePool" if self.kind == "average" else "MaxPool"

    def becomes(self, spatial: Tuple[int, ...]) -> str:
        size = "x".join(map(str, spatial))
        op = self.window_op
        return {KEEP_POOL: f"Global{op} (kept: one prediction per image)",
                WINDOW_POOL: f"{op} {size} stride 1 (the classifier on every {size} window of the feature map)",
                NO_POOL: "removed (the head at every feature location)"}[self.mode]


@dataclass(frozen=True, eq=False)
class Flattening:
    """Flatten(axis=1) of a spatial tensor, whatever op spelled it; or, with `pool`, a global pooling of it
    followed by a flattening of the pooled [N, C, 1, ...] tensor."""

    node: str
    op: str
    source: str
    #: (C, *spatial) at the training size; the batch axis is not part of it.
    source_shape: Tuple[int, ...]
    #: Element order of the flattened vector: CHANNELS_FIRST is (C, *spatial), as Flatten(axis=1) of the
    #: source lists it; CHANNELS_LAST is (*spatial, C), as after a Transpose to channels last (Keras).
    order: str = CHANNELS_FIRST
    note: str = ""
    #: Elementwise ops between a Transpose to channels last and the flattening; they move onto the source.
    prelude: Tuple["PassThrough", ...] = ()
    #: The global pooling between `source` and the flattening, if the head pools.
    pool: Optional[GlobalPool] = None

    @property
    def spatial_shape(self) -> Tuple[int, ...]:
        return self.source_shape[1:]

    @property
    def features(self) -> int:
        """Inputs of the first linear layer: C for a pooled head, C * prod(spatial) otherwise."""
        return self.source_shape[0] if self.pool else prod(self.source_shape)

    @property
    def kernel_spatial(self) -> Tuple[int, ...]:
        """The spatial extent of the first layer's kernel: pooled heads are 1x1 from the first layer on."""
        return (1,) * len(self.spatial_shape) if self.pool else self.spatial_shape

    @property
    def window(self) -> Tuple[int, ...]:
        """The feature window one output cell is computed from: the training feature size, or one
        location when the pool is removed."""
        return (1,) * len(self.spatial_shape) if self.pool and self.pool.mode == NO_POOL else self.spatial_shape

    @property
    def slides(self) -> bool:
        """False when the converted head gives one prediction per image (a kept global pool)."""
        return not (self.pool and self.pool.mode == KEEP_POOL)


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
        zero = 0 if self.zero_point is None else self.zero_point.astype(values.dtype)
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


#: What a pass-through op becomes on an [N, K, *spatial] tensor.
KEEP = "keep"  # the node stays; constants in `constants` replace its inputs, `attrs` are set
REMOVE = "remove"  # the node goes (Dropout at inference)
AXIS_LAST = "axis_last"  # Transpose K last, the op on the last axis, Transpose back (pre-13 Softmax)


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


Step = Union[LinearLayer, PassThrough]


@dataclass(frozen=True, eq=False)
class HeadPlan:
    """One fully connected head: a flattening, a first linear layer, and what follows it."""

    flattening: Flattening
    first: LinearLayer
    #: Later linear layers and pass-through ops, in graph order.
    steps: Tuple[Step, ...]
    #: Graph outputs the head produces; their names are kept.
    outputs: Tuple[str, ...]
    #: Layout of the converted outputs: [N, K, *spatial] (CHANNELS_FIRST) or [N, *spatial, K].
    output_layout: str = CHANNELS_FIRST
    #: Elementwise ops with scalar constants around the flattening (a QDQ model's Q/DQ pairs), in graph
    #: order; they run on the source feature map instead, before the first layer.
    prelude: Tuple[PassThrough, ...] = ()

    @property
    def spatial_rank(self) -> int:
        return len(self.flattening.spatial_shape)

    @property
    def nodes(self) -> Tuple[str, ...]:
        """Every original node this head replaces or re-expresses (the flattening is left to cleanup)."""
        names = [step.node for step in self.prelude] + list(self.first.nodes)
        for step in self.steps:
            names.extend(step.nodes if isinstance(step, LinearLayer) else (step.node,))
        return tuple(names)

    def kernel_shape(self, layer: LinearLayer) -> Tuple[int, ...]:
        """The Conv kernel a layer becomes: the source's whole extent for the first, 1x1... after it."""
        if layer is self.first:
            return (layer.features, self.flattening.source_shape[0]) + self.flattening.kernel_spatial
        return (layer.features, int(layer.weight.shape[1])) + (1,) * self.spatial_rank

    @property
    def tensors(self) -> Tuple[str, ...]:
        """Every tensor whose shape becomes [N, K, *spatial]."""
        return tuple(step.output for step in self.prelude) + (self.first.output,) + \
            tuple(step.output for step in self.steps)

    def describe(self) -> str:
        flat = self.flattening
        spatial = "x".join(map(str, flat.kernel_spatial))
        layout = "[N, K, *spatial]" if self.output_layout == CHANNELS_FIRST else "[N, *spatial, K]"
        lines = [
            f"head -> {', '.join(self.outputs)} (as {layout})",
            f"  source {flat.source} [N, {flat.source_shape[0]}, {', '.join(map(str, flat.spatial_shape))}]"
            f" via {flat.op} '{flat.node}'" + (f" ({flat.note})" if flat.note else ""),
            *([f"  {flat.pool.op} '{flat.pool.node}' -> {flat.pool.becomes(flat.spatial_shape)}"] if flat.pool else []),
            *(f"  {step.op} '{step.node}' -> {step.becomes}, on the feature map" for step in self.prelude),
            f"  {_layer_line(self.first)} -> Conv {spatial} kernel {list(self.kernel_shape(self.first))}",
        ]
        pointwise = "x".join("1" * self.spatial_rank)
        for step in self.steps:
            if isinstance(step, LinearLayer):
                lines.append(f"  {_layer_line(step)} -> Conv {pointwise} kernel {list(self.kernel_shape(step))}")
            else:
                lines.append(f"  {step.op} '{step.node}' -> {step.becomes}")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        flat = self.flattening
        return {
            "outputs": list(self.outputs),
            "output_layout": self.output_layout,
            "source": flat.source,
            "source_shape": list(flat.source_shape),
            "flattening": {"node": flat.node, "op": flat.op, "order": flat.order, "note": flat.note},
            "pooling": None if flat.pool is None else {"node": flat.pool.node, "op": flat.pool.op,
                                                       "mode": flat.pool.mode,
                                                       "becomes": flat.pool.becomes(flat.spatial_shape)},
            "prelude": [{"node": s.node, "op": s.op, "becomes": s.becomes} for s in self.prelude],
            "layers": [_layer_dict(self.first, list(self.kernel_shape(self.first)))] + [
                _layer_dict(s, list(self.kernel_shape(s)))
                if isinstance(s, LinearLayer)
                else {"node": s.node, "op": s.op, "becomes": s.becomes}
                for s in self.steps
            ],
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

    def input_layout(self, name: str) -> str:
        return self.input_layouts.get(name, CHANNELS_FIRST)

    def describe(self) -> str:
        lines = [f"normalized: {note}" for note in self.normalized]
        if self.densify:
            lines.append(self.densify.describe())
        lines.append(f"{len(self.heads)} head(s) to convert" + (":" if self.heads else ""))
        lines += [head.describe() for head in self.heads]
        if self.skipped:
            lines.append(f"{len(self.skipped)} node(s) left as they are:")
            lines += [f"  {s.describe()}" for s in self.skipped]
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "heads": [head.to_dict() for head in self.heads],
            "skipped": [{"node": s.node, "op": s.op, "reason": s.reason} for s in self.skipped],
            "trunk_inputs": list(self.trunk_inputs),
            "input_layouts": {name: self.input_layout(name) for name in self.trunk_inputs},
            "opset": self.opset,
            "normalized": list(self.normalized),
            "densify": None if self.densify is None else self.densify.to_dict(),
        }

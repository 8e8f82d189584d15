"""Carry out a plan on a graphsurgeon graph: linear layers become Conv nodes.

The first linear layer of a head becomes a Conv whose kernel is the source tensor's whole training
spatial extent; later ones become pointwise (1x1...) Convs. Pass-through ops are re-expressed for
[N, K, *spatial] tensors as the plan says. Output tensors keep their names, so code that reads the
model's outputs by name keeps working.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
import onnx_graphsurgeon as gs

from ..model.graph_names import free_name
from ..model.layout import CHANNELS_FIRST, CHANNELS_LAST, to_channels_first, to_channels_last
from ..plan.map_outputs import MapOutput
from ..plan.plan import (
    AXIS_LAST,
    KEEP,
    MAP_LAST,
    PERMUTED,
    REMOVE,
    TO_CHANNELS_FIRST,
    Flattening,
    GlobalPool,
    HeadPlan,
    LinearLayer,
    PassThrough,
    Plan,
    Quantized,
)


def first_layer_kernel(weight: np.ndarray, flattening: Flattening) -> np.ndarray:
    """W[K, C*prod(spatial)] as a Conv kernel [K, C, *spatial].

    Flatten(axis=1) of [N, C, *spatial] lists elements in row-major (C, *spatial) order, which is exactly
    the order of a row of W, so a row-major reshape lays each row out as a kernel. A channels-last
    flattening lists them in (*spatial, C) order, and a flattening after another Transpose in that one's
    order: reshape to the transposed shape, then transpose back by the inverse perm.
    """
    k, shape = weight.shape[0], flattening.source_shape
    if flattening.order == CHANNELS_FIRST:
        return weight.reshape((k,) + shape)
    perms = {CHANNELS_LAST: to_channels_last(len(shape) + 1), PERMUTED: flattening.perm}
    if flattening.order in perms:  # the row lists the source transposed by perm: undo it on the kernel
        perm = perms[flattening.order]
        listed = weight.reshape((k,) + tuple(shape[p - 1] for p in perm[1:]))
        return np.transpose(listed, (0,) + tuple(perm.index(axis) for axis in range(1, len(perm))))
    raise ValueError(f"unknown flattening order {flattening.order!r}")


def pointwise_kernel(weight: np.ndarray, spatial_rank: int) -> np.ndarray:
    """W[K, in] as a 1x1... Conv kernel [K, in, 1, ...]."""
    return weight.reshape(weight.shape + (1,) * spatial_rank)


class _Editor:
    """Looks nodes and tensors up by name and hands out names that do not collide."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.nodes: Dict[str, gs.Node] = {node.name: node for node in graph.nodes}
        self.tensors: Dict[str, gs.Tensor] = graph.tensors()
        self.taken = set(self.nodes) | set(self.tensors)
        #: Tensors that went away with a removed node -> the tensor that now stands for them.
        self.replaced: Dict[str, gs.Tensor] = {}

    def tensor(self, name: str) -> gs.Tensor:
        """The tensor the plan calls `name`, following removed nodes (Dropout) to what replaced it."""
        return self.replaced.get(name) or self.tensors[name]

    def name(self, base: str) -> str:
        return free_name(self.taken, base)

    def constant(self, base: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self.name(base), np.ascontiguousarray(values))

    def variable(self, base: str, like: gs.Tensor) -> gs.Variable:
        return gs.Variable(self.name(base), dtype=like.dtype)

    def add_node(self, op: str, base: str, inputs, outputs, attrs: Optional[dict] = None) -> gs.Node:
        node = gs.Node(op=op, name=self.name(base), attrs=attrs or {}, inputs=inputs, outputs=outputs)
        self.graph.nodes.append(node)
        return node


def _constant_input(editor: _Editor, base: str, values: np.ndarray, quantized: Optional[Quantized]) -> gs.Tensor:
    """A Conv weight or bias input: the float values, or the quantized values (laid out like `values`,
    per-channel along axis 0 if at all) behind a DequantizeLinear with the original scale and zero point."""
    if quantized is None:
        return editor.constant(base, values)
    inputs = [editor.constant(f"{base}/quantized", quantized.values),
              editor.constant(f"{base}/scale", quantized.scale)]
    if quantized.zero_point is not None:
        inputs.append(editor.constant(f"{base}/zero_point", quantized.zero_point))
    output = gs.Variable(editor.name(base), dtype=quantized.scale.dtype)
    attrs = {} if quantized.axis is None else {"axis": quantized.axis}
    editor.add_node("DequantizeLinear", f"{base}/dequantize", inputs, [output], attrs)
    return output


def _replace_linear(editor: _Editor, layer: LinearLayer, data: gs.Tensor,
                    layout: Callable[[np.ndarray], np.ndarray], dilation: Optional[Tuple[int, ...]] = None) -> None:
    """Replace a linear layer by a Conv whose kernel is `layout(W[K, in])` (applied to the quantized
    values too, when the weight is quantized), its taps `dilation` feature cells apart."""
    output = editor.tensors[layer.output]
    for name in layer.nodes:
        editor.nodes[name].outputs.clear()  # detached; cleanup() removes them
    base = layer.nodes[0]
    kernel = layout(layer.weight)
    weight_quantized = layer.weight_quantized
    if weight_quantized is not None:
        weight_quantized = weight_quantized.relaid(layout(weight_quantized.values), 0)
    inputs = [data, _constant_input(editor, f"{base}/kernel", kernel, weight_quantized)]
    if layer.bias is not None:
        inputs.append(_constant_input(editor, f"{base}/bias", layer.bias.astype(kernel.dtype), layer.bias_quantized))
    attrs = {"kernel_shape": list(kernel.shape[2:])}
    if dilation and any(d > 1 for d in dilation):
        attrs["dilations"] = list(dilation)
    editor.add_node("Conv", f"{base}/conv", inputs, [output], attrs)


def _rewrite_pass_through(editor: _Editor, step: PassThrough, spatial_rank: int) -> None:
    node = editor.nodes[step.node]
    if step.action == KEEP:
        for index, values in step.constants.items():
            node.inputs[index] = editor.constant(f"{step.node}/per_location_{index}", values)
        node.attrs.update(step.attrs)
    elif step.action == TO_CHANNELS_FIRST:
        node.op, node.attrs = "Transpose", {"perm": list(to_channels_first(spatial_rank + 2))}
        while len(node.inputs) > 1:
            node.inputs.pop()
    elif step.action == REMOVE:
        source, result = node.inputs[0], node.outputs[0]
        if result in editor.graph.outputs:
            # A graph output keeps its name, so the node stays as the cheapest identity.
            node.op, node.attrs = "Identity", {}
            while len(node.inputs) > 1:
                node.inputs.pop()
            while len(node.outputs) > 1:
                node.outputs.pop()
            return
        _redirect(editor, result, source)
        node.outputs.clear()
    elif step.action == AXIS_LAST:
        rank = spatial_rank + 2
        to_last = [0] + list(range(2, rank)) + [1]
        back = [0, rank - 1] + list(range(1, rank - 1))
        source, result = node.inputs[0], node.outputs[0]
        moved_in = editor.variable(f"{step.node}/features_last", source)
        moved_out = editor.variable(f"{step.node}/result_features_last", result)
        editor.add_node("Transpose", f"{step.node}/to_features_last", [source], [moved_in], {"perm": to_last})
        node.inputs[0], node.outputs[0] = moved_in, moved_out
        node.attrs.update(step.attrs)
        editor.add_node("Transpose", f"{step.node}/from_features_last", [moved_out], [result], {"perm": back})
    else:
        raise ValueError(f"unknown pass-through action {step.action!r}")


def _redirect(editor: _Editor, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every node that reads `old` read `new` instead."""
    for consumer in list(old.outputs):
        for index, tensor in enumerate(consumer.inputs):
            if tensor is old:
                consumer.inputs[index] = new  # graphsurgeon lists sync on item assignment only
    editor.replaced[old.name] = new


def _rewrite_pool(editor: _Editor, head: HeadPlan, pool: GlobalPool, dilation: Optional[Tuple[int, ...]]) -> None:
    """Replace the global pool (`head.pool`) as its mode says; what read the pool reads the replacement
    (channels last again when the pool read a channels-last map and kept the pooled axes)."""
    rank = head.spatial_rank + 2
    if pool.between:  # per-location ops on a channels-last map feed the pool: they stay, the pool reads them
        pooled = _transposed(editor, editor.tensors[pool.input], to_channels_first(rank), f"{pool.node}/channels_first")
    else:
        pooled = editor.tensors[pool.source]
    replacement = pool.mode.replacement(pool.kind, head.spatial_shape, dilation)
    if replacement is not None:
        op, attrs = replacement
        result = editor.variable(f"{pool.node}/{pool.mode.name}", pooled)
        editor.add_node(op, f"{pool.node}/{pool.mode.name}", [pooled], [result], attrs)
        pooled = result
    if pool.form == MAP_LAST:
        pooled = _transposed(editor, pooled, to_channels_last(rank), f"{pool.node}/channels_last")
    output = editor.tensors[pool.output]
    editor.nodes[pool.node].outputs.clear()
    if output in editor.graph.outputs:  # a graph output keeps its name (jax2onnx ends a model with the pool)
        editor.add_node("Identity", f"{pool.node}/output", [pooled], [output])
    else:
        _redirect(editor, output, pooled)


def _transposed(editor: _Editor, tensor: gs.Tensor, perm: Tuple[int, ...], base: str) -> gs.Tensor:
    moved = editor.variable(base, tensor)
    editor.add_node("Transpose", base, [tensor], [moved], {"perm": list(perm)})
    return moved


def _rewrite_head(editor: _Editor, head: HeadPlan, dilation: Optional[Tuple[int, ...]] = None) -> None:
    """Rewrite one head; `dilation` spreads its first window over a denser feature map (`--stride`)."""
    if head.pool is not None:
        _rewrite_pool(editor, head, head.pool, dilation)
    else:
        first, flattening = head.first, head.flattening
        assert first is not None and flattening is not None  # a head without a pool starts at a flattening
        # The prelude (elementwise ops around the flattening) and then the first layer read the feature map.
        features = editor.tensors[head.source]
        for elementwise in head.prelude:
            editor.nodes[elementwise.node].inputs[0] = features
            _rewrite_pass_through(editor, elementwise, head.spatial_rank)
            features = editor.tensor(elementwise.output)
        _replace_linear(editor, first, features, lambda weight: first_layer_kernel(weight, flattening), dilation)
    for step in head.steps:
        if isinstance(step, LinearLayer):
            _replace_linear(editor, step, editor.tensor(step.input),
                            lambda weight: pointwise_kernel(weight, head.spatial_rank))
        else:
            _rewrite_pass_through(editor, step, head.spatial_rank)
    for name in head.tensors:
        editor.tensors[name].shape = None  # was [N, K]; shapes are re-inferred later
    rank = head.spatial_rank + 2
    for name in head.outputs:
        natural = CHANNELS_LAST if head.output_forms.get(name) == MAP_LAST else CHANNELS_FIRST
        wanted = head.output_layouts.get(name, natural)
        if wanted != natural:
            perm = to_channels_last(rank) if wanted == CHANNELS_LAST else to_channels_first(rank)
            _relayout(editor, editor.tensors[name], perm, wanted)


def _relayout(editor: _Editor, output: gs.Tensor, perm: Tuple[int, ...], layout: str) -> None:
    """Give the graph output `output` transposed by `perm`; nodes that read it inside the graph keep
    reading the untransposed tensor under a new name."""
    inner = editor.variable(f"{output.name}/before_{layout}", output)
    producer = output.inputs[0]
    producer.outputs[producer.outputs.index(output)] = inner
    for consumer in list(output.outputs):
        for index, tensor in enumerate(consumer.inputs):
            if tensor is output:
                consumer.inputs[index] = inner
    editor.add_node("Transpose", f"{output.name}/to_{layout}", [inner], [output], {"perm": list(perm)})


def rewrite(graph: gs.Graph, plan: Plan) -> gs.Graph:
    """Apply `plan` to `graph` in place; return the cleaned, sorted graph."""
    editor = _Editor(graph)
    for head in plan.heads:
        if not isinstance(head, MapOutput):  # a map already: nothing to rewrite
            _rewrite_head(editor, head, plan.densify.factor if plan.densify else None)
    return graph.cleanup().toposort()

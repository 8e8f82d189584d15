"""A linear layer applied at every location of a map by flattening the map first, read as what it computes.

jax2onnx exports flax's `nnx.Linear` on a channels-last map [N, *spatial, C] (a ConvNeXt block's MLP) as

    x ──▶ Reshape [-1, C] ──▶ Gemm (W, b) ──▶ Reshape back to [N, *spatial, K] ──▶

with the second Reshape's target fixed or read off the shape of the map. Both tie the trunk to the training size
in form only: the three ops are MatMul(x, W) + b on the map itself, which onnxruntime broadcasts over the leading
axes at any size. The pass makes that rewrite (exact: the same products and sums per location).
"""
from __future__ import annotations

from math import prod
from typing import List, Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..model.graph_names import free_name
from ..model.registry import is_op
from .constants import constant_ints, constant_values


def _only_reader(tensor: gs.Tensor) -> Optional[gs.Node]:
    return tensor.outputs[0] if len(tensor.outputs) == 1 else None


def per_location_linears(graph: gs.Graph) -> List[str]:
    """Turn each Reshape [-1, C] -> Gemm -> Reshape-to-[N, *spatial, K] of a channels-last map into MatMul (+ Add)
    on the map. Returns a note per change."""
    notes = []
    taken = set(graph.tensors()) | {node.name for node in graph.nodes}
    for gemm in list(graph.nodes):
        if not is_op(gemm, "Gemm") or gemm.attrs.get("transA", 0) or not gemm.inputs[0].inputs:
            continue
        flatten: gs.Node = gemm.inputs[0].inputs[0]
        back = _only_reader(gemm.outputs[0])
        if back is None or not is_op(back, "Reshape") or not is_op(flatten, "Reshape") or \
                len(gemm.inputs[0].outputs) != 1:  # the flattened map is read by this Gemm alone
            continue
        x, target = flatten.inputs[0], constant_ints(flatten.inputs[1])
        shape = x.shape
        if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape[1:]):
            continue  # the batch may be symbolic, the rest is the training size
        channels = shape[-1]
        if target != [-1, channels] and not (isinstance(shape[0], int) and target == [prod(shape[:-1]), channels]):
            continue
        weight = constant_values(gemm.inputs[1])
        bias = constant_values(gemm.inputs[2]) if len(gemm.inputs) > 2 and gemm.inputs[2].name else None
        if weight is None or weight.ndim != 2 or (len(gemm.inputs) > 2 and gemm.inputs[2].name and bias is None):
            continue
        dtype = weight.dtype  # alpha and beta are Python floats: keep the model's own precision
        weight = ((weight.T if gemm.attrs.get("transB", 0) else weight) * gemm.attrs.get("alpha", 1.0)).astype(dtype)
        features = weight.shape[1]
        result = back.outputs[0]
        if weight.shape[0] != channels or result.shape is None or \
                list(result.shape[1:]) != list(shape[1:-1]) + [features] or \
                (isinstance(shape[0], int) and result.shape[0] != shape[0]):
            continue  # the second Reshape does not give the map back with K channels
        if bias is not None:
            if bias.size not in (1, features):
                continue
            bias = (bias * gemm.attrs.get("beta", 1.0)).reshape(-1).astype(dtype)
        back.outputs.clear()  # the old three ops are left to cleanup
        matmul = gs.Node("MatMul", free_name(taken, f"{gemm.name}/per_location"),
                         inputs=[x, gs.Constant(free_name(taken, f"{gemm.name}/weight"), np.ascontiguousarray(weight))],
                         outputs=[result if bias is None else gs.Variable(free_name(taken, f"{gemm.name}/product"),
                                                                          dtype=result.dtype, shape=result.shape)])
        graph.nodes.append(matmul)
        if bias is not None:
            shift = gs.Constant(free_name(taken, f"{gemm.name}/b"), bias)
            graph.nodes.append(gs.Node("Add", free_name(taken, f"{gemm.name}/bias"), inputs=[matmul.outputs[0], shift],
                                       outputs=[result]))
        notes.append(f"Reshape '{flatten.name}' -> Gemm '{gemm.name}' -> Reshape '{back.name}' (a linear layer at "
                     f"each location of '{x.name}') became MatMul + Add on the map, so the trunk runs at any size")
    if notes:
        graph.cleanup().toposort()
    return notes

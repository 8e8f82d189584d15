"""The linear-layer vocabulary: every spelling of y = x @ W.T + b (Gemm with its attributes, MatMul, MatMul +
Add, weights behind DequantizeLinear) normalized to one `LinearLayer(W[K, in], b[K])` record."""
from __future__ import annotations

from typing import FrozenSet, Optional, Tuple, Union

import numpy as np
import onnx_graphsurgeon as gs

from ..model.registry import is_op
from ..read.constants import per_feature_vector
from .plan import Decline, LinearLayer, Quantized
from .values import constant_float_values, constant_or_dequantized


def _weight(node: gs.Node, index: int, label: str) -> Union[Tuple[np.ndarray, Optional[Quantized]], Decline]:
    """A 2-D weight, as float values plus its quantized form when it comes through DequantizeLinear."""
    found = constant_or_dequantized(node.inputs[index])
    if isinstance(found, Decline):
        return found
    if found is None:
        return Decline(f"weight {label} '{node.inputs[index].name}' is not a constant")
    values = found.values if isinstance(found, Quantized) else found
    if values.ndim != 2:
        return Decline(f"weight {label} '{node.inputs[index].name}' has shape {list(values.shape)}, not 2-D")
    if 0 in values.shape:
        return Decline(f"weight {label} '{node.inputs[index].name}' is empty (shape {list(values.shape)}): a layer "
                       "with no output features (no classes) or no inputs gives an empty map")
    if isinstance(found, Quantized):
        return found.dequantized(), found
    return found, None


def _by_output_feature(quantized: Optional[Quantized], transposed: bool,
                       node: gs.Node) -> Union[Optional[Quantized], Decline]:
    """A quantized weight laid out as [K, in]; per-channel scales must run along K (the Conv's axis 0)."""
    if quantized is None:
        return None
    values, axis = (quantized.values.T, None if quantized.axis is None else 1 - quantized.axis) if transposed \
        else (quantized.values, quantized.axis)
    if axis not in (None, 0):
        return Decline(f"{node.op} '{node.name}' has a weight quantized per input feature, which a Conv weight "
                       "cannot keep (its per-channel axis is the output feature)")
    return quantized.relaid(values, axis)


def match_gemm(node: gs.Node, data: gs.Tensor) -> Union[LinearLayer, Decline, None]:
    """Gemm: Y = alpha * A' * B' + beta * C, with A the features.

    Spec: "A' = transpose(A) if transA else A", "B' = transpose(B) if transB else B", and C "should be
    unidirectional broadcastable to (M, N)" (here (batch, K)). transA=1 would mix the batch into the
    product, so it is declined. B and C may come through DequantizeLinear (QDQ models); they stay quantized.
    """
    if not is_op(node, "Gemm"):
        return None
    if node.inputs[0] is not data:
        return Decline(f"Gemm '{node.name}' reads the features as its weight B, not as A")
    if node.attrs.get("transA", 0):
        return Decline(f"Gemm '{node.name}' has transA=1, which mixes the batch axis into the product")
    found = _weight(node, 1, "B")
    if isinstance(found, Decline):
        return found
    b, b_quantized = found
    trans_b = bool(node.attrs.get("transB", 0))
    weight = b if trans_b else b.T
    weight_quantized = _by_output_feature(b_quantized, not trans_b, node)
    if isinstance(weight_quantized, Decline):
        return weight_quantized
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    if alpha != 1.0:
        if weight_quantized is not None:
            return Decline(f"Gemm '{node.name}' scales a quantized weight by alpha={alpha:g}; the product would "
                           "not stay quantized exactly")
        weight = (weight * alpha).astype(b.dtype)
    bias, bias_quantized = None, None
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = constant_or_dequantized(node.inputs[2])
        if isinstance(c, Decline):
            return c
        if c is None:
            return Decline(f"bias C '{node.inputs[2].name}' of Gemm '{node.name}' is not a constant")
        c_values = c.values if isinstance(c, Quantized) else c
        if per_feature_vector(c_values, weight.shape[0]) is None or (isinstance(c, Quantized) and c_values.ndim != 1):
            return Decline(f"bias C of Gemm '{node.name}' has shape {list(c_values.shape)}, which is not one value "
                           "per output feature")
        if isinstance(c, Quantized):
            if beta != 1.0:
                return Decline(f"Gemm '{node.name}' scales a quantized bias by beta={beta:g}; it would not stay "
                               "quantized exactly")
            bias_quantized, c = c, c.dequantized()
        vector = per_feature_vector(c, weight.shape[0])
        assert vector is not None  # checked above, on the same values
        bias = np.asarray(vector * beta, dtype=c.dtype) if beta != 1.0 else np.array(vector)
    unusual = ([] if trans_b else ["transB=0"]) + \
        [f"{name}={value:g}" for name, value in (("alpha", alpha), ("beta", beta)) if value != 1.0]
    spelling = " ".join(["Gemm"] + unusual)
    return LinearLayer(nodes=(node.name,), spelling=spelling, input=data.name, output=node.outputs[0].name,
                       weight=weight, bias=bias, weight_quantized=weight_quantized, bias_quantized=bias_quantized)


def _bias_add(matmul: gs.Node, features: int, graph_outputs: FrozenSet[str]) -> Optional[Tuple[gs.Node, np.ndarray]]:
    """The Add right after a MatMul that adds a constant per-feature bias, if there is one."""
    out = matmul.outputs[0]
    if out.name in graph_outputs or len(out.outputs) != 1 or not is_op(out.outputs[0], "Add"):
        return None
    add = out.outputs[0]
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    values = constant_float_values(other)
    bias = None if values is None else per_feature_vector(values, features)
    return None if bias is None else (add, np.array(bias))


def match_matmul(node: gs.Node, data: gs.Tensor, graph_outputs: FrozenSet[str]) -> Union[LinearLayer, Decline, None]:
    """MatMul (+ Add of a constant bias): PyTorch dynamo, tf2onnx Dense, Paddle."""
    if not is_op(node, "MatMul"):
        return None
    if node.inputs[0] is not data:
        return Decline(f"MatMul '{node.name}' has the features as its right operand")
    found = _weight(node, 1, "B")
    if isinstance(found, Decline):
        return found
    b, b_quantized = found
    weight = b.T
    weight_quantized = _by_output_feature(b_quantized, True, node)
    if isinstance(weight_quantized, Decline):
        return weight_quantized
    fused = _bias_add(node, weight.shape[0], graph_outputs)
    if fused is None:
        return LinearLayer(nodes=(node.name,), spelling="MatMul", input=data.name, output=node.outputs[0].name,
                           weight=weight, bias=None, weight_quantized=weight_quantized)
    add, bias = fused
    return LinearLayer(nodes=(node.name, add.name), spelling="MatMul + Add", input=data.name,
                       output=add.outputs[0].name, weight=weight, bias=bias, weight_quantized=weight_quantized)


def match_linear(node: gs.Node, data: gs.Tensor, in_features: int,
                 graph_outputs: FrozenSet[str]) -> Union[LinearLayer, Decline, None]:
    """Try every linear-layer spelling; check the layer reads exactly `in_features` values."""
    for result in (match_gemm(node, data), match_matmul(node, data, graph_outputs)):
        if isinstance(result, LinearLayer) and result.weight.shape[1] != in_features:
            return Decline(f"{node.op} '{node.name}' expects {result.weight.shape[1]} input features, "
                           f"its input has {in_features}")
        if result is not None:
            return result
    return None

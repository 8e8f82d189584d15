"""Reading constants in a graph: initializers, folded Constant nodes, and weights behind DequantizeLinear,
and the broadcasting rules a per-feature constant follows when a head's [N, K] becomes [N, K, *spatial]."""
from __future__ import annotations

from typing import FrozenSet, Optional, Union

import numpy as np
import onnx_graphsurgeon as gs

from ..model.registry import is_op
from .plan import Decline, Quantized


def constant_values(tensor: gs.Tensor) -> Optional[np.ndarray]:
    """The values of a constant tensor (initializer or folded Constant node), else None."""
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


def producer(tensor: gs.Tensor) -> Optional[gs.Node]:
    return tensor.inputs[0] if tensor.inputs else None


def per_feature_vector(values: np.ndarray, features: int) -> Optional[np.ndarray]:
    """`values` as a [K] vector if it broadcasts onto [N, K] by one value per feature, else None.

    ONNX broadcasting aligns trailing axes, so on [N, K] a constant of shape (), (1,), (1, 1), (K,) or
    (1, K) acts per feature; any shape with a leading axis > 1 would act per batch row instead.
    """
    if values.size == 1:
        return np.broadcast_to(values.reshape(()), (features,))
    if values.shape in ((features,), (1, features)):
        return values.reshape(features)
    return None


def per_location_constant(values: np.ndarray, features: int, spatial_rank: int) -> Optional[np.ndarray]:
    """Re-shape a per-feature constant so it acts on [N, K, *spatial] as it acted on [N, K].

    A single value broadcasts the same either way and is returned unchanged; a [K] or [1, K] constant
    must become [K, 1, ..., 1], or broadcasting would pair it with the last spatial axis.
    """
    if values.size == 1:
        return values
    vector = per_feature_vector(values, features)
    return None if vector is None else vector.reshape((features,) + (1,) * spatial_rank)


def axes_of(node: gs.Node) -> Optional[FrozenSet[int]]:
    """The axes a Reduce or Squeeze acts on, counted from 0 on its input (an attribute before opset 13/18,
    a constant input after); None when not given or not constant."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        values = constant_values(node.inputs[1])
        axes = None if values is None else values.reshape(-1).tolist()
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 0
    return None if axes is None else frozenset(int(a) + rank if int(a) < 0 else int(a) for a in axes)


def dequantized_constant(tensor: gs.Tensor) -> Union[Quantized, Decline, None]:
    """The constant behind DequantizeLinear(values, scale[, zero_point]) with constant inputs (QDQ models),
    a Decline for a form that cannot be kept exactly (blocked quantization), or None if it is not one."""
    node = producer(tensor)
    if node is None or not is_op(node, "DequantizeLinear"):
        return None
    operands = [constant_values(t) if t.name else None for t in node.inputs]
    given = [i for i, t in enumerate(node.inputs) if t.name]
    if any(operands[i] is None for i in given) or len(given) < 2:
        return None
    values, scale = operands[0], operands[1]
    assert values is not None and scale is not None  # given, and constant (checked above)
    zero_point = operands[2] if len(operands) > 2 else None
    if node.attrs.get("block_size", 0):
        return Decline(f"DequantizeLinear '{node.name}' uses blocked quantization, which is not kept")
    if scale.size == 1:
        return Quantized(values, scale, zero_point, axis=None)
    axis = int(node.attrs.get("axis", 1)) % values.ndim
    return Quantized(values, scale.reshape(-1), None if zero_point is None else zero_point.reshape(-1), axis)


def constant_or_dequantized(tensor: gs.Tensor) -> Union[np.ndarray, Quantized, Decline, None]:
    values = constant_values(tensor)
    return values if values is not None else dequantized_constant(tensor)


def constant_float_values(tensor: gs.Tensor) -> Optional[np.ndarray]:
    """The values of a constant, or of a dequantized constant (for checks that only read them)."""
    found = constant_or_dequantized(tensor)
    if isinstance(found, Quantized):
        return found.dequantized()
    return found if isinstance(found, np.ndarray) else None

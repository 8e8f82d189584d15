"""Weights behind DequantizeLinear (QDQ models), as the plan reads them: a constant, a `Quantized` one, or a
`Decline` with the reason. Plain constants are `read.constants`'."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import onnx_graphsurgeon as gs

from ..model.registry import is_op
from ..read.constants import constant_values, producer
from .plan import Decline, Quantized


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

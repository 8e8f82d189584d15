"""Reading constants in a graph: initializers and folded Constant nodes, the axes a node is given as a constant,
and the broadcasting rules a per-feature constant follows when a head's [N, K] becomes [N, K, *spatial]."""
from __future__ import annotations

from typing import FrozenSet, List, Optional

import numpy as np
import onnx_graphsurgeon as gs


def constant_values(tensor: gs.Tensor) -> Optional[np.ndarray]:
    """The values of a constant tensor (initializer or folded Constant node), else None."""
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


def constant_ints(tensor: gs.Tensor) -> Optional[List[int]]:
    """A constant's values as a flat list of ints (a Reshape's target, a Pad's widths), else None."""
    values = constant_values(tensor)
    return None if values is None else [int(v) for v in values.reshape(-1)]


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

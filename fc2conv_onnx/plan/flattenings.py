"""When a Reshape flattens: the shape arithmetic behind a flattening to [N, features], for a constant target
shape or one an exporter computes from the trunk's shape (evaluated at the training size)."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import onnx_graphsurgeon as gs

from ..read.constants import constant_values
from ..read.shape_values import PROBE_BATCHES, NotEvaluable, describe_computation, evaluate
from .plan import Decline


def _flattens(target: Sequence[int], batch: object, data_shape: Sequence, features: int,
              allow_zero: bool) -> Tuple[bool, bool]:
    """Does Reshape(data, target) give [batch, features]? -> (it does, it names the batch as a literal).

    Reshape spec: a 0 copies the input's dimension at that index (unless allowzero=1), a -1 is inferred.
    """
    if len(target) != 2:
        return False, False
    first, second = target
    if second == 0 and not allow_zero:
        second = data_shape[1]
    keeps_batch = (first == 0 and not allow_zero) or (first == -1 and second == features)
    literal = isinstance(batch, int) and first == batch and second in (-1, features)
    return (keeps_batch or literal) and second in (-1, features), literal and not keeps_batch


def reshape_flattens(node: gs.Node, features: int, described: str, opset: int) -> Union[str, Decline]:
    """Whether Reshape `node` (of a graph at `opset`) gives [batch, features] from its input: a note on how,
    or why not."""
    data = node.inputs[0]
    if len(node.inputs) < 2:
        return Decline(f"Reshape '{node.name}' has no shape input")
    allow_zero = bool(node.attrs.get("allowzero", 0))
    batch = data.shape[0]
    flattened = f"{described} to [N, {features}]"
    constant = constant_values(node.inputs[1])
    if constant is not None:
        target = [int(v) for v in constant.reshape(-1)]
        flattens, literal = _flattens(target, batch, data.shape, features, allow_zero)
        if not flattens:
            return Decline(f"Reshape '{node.name}' to {target} does not flatten {flattened}")
        note = f"the Reshape fixes batch size {target[0]}; the converted model takes any batch" if literal else ""
    else:
        computation = describe_computation(node.inputs[1])
        sizes = (batch,) if isinstance(batch, int) else PROBE_BATCHES
        try:
            targets = evaluate(node.inputs[1], sizes, opset)
        except NotEvaluable as why:
            return Decline(f"Reshape '{node.name}' takes its shape from {computation}, which cannot be "
                           f"evaluated at the training size: {why}")
        for size, value in zip(sizes, targets):
            target = [int(v) for v in value.reshape(-1)]
            if not _flattens(target, size, data.shape, features, allow_zero)[0]:
                return Decline(f"Reshape '{node.name}' takes its shape from {computation}, which gives {target} "
                               f"at batch {size}: not a flattening of {flattened}")
        note = f"shape computed by {computation}, evaluated at the training size: [N, {features}]"
    return note

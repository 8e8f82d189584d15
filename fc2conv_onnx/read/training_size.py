"""The model at its training size, as the read stage needs it: the size given to a model exported with dynamic
spatial dims (`--input-size`), the sizes an exporter's shape arithmetic hid from shape inference (observed by
running the model once), and the value_info a normalized graph keeps from the model it came from."""
from __future__ import annotations

from typing import List, Mapping, Sequence

import onnx

from ..errors import InputError


def has_dynamic_image_input(model: onnx.ModelProto) -> bool:
    """Whether an image input (rank 3 or more) has a symbolic dim besides the batch."""
    initializers = {t.name for t in model.graph.initializer}
    return any(len(i.type.tensor_type.shape.dim) >= 3 and
               any(not d.HasField("dim_value") for d in list(i.type.tensor_type.shape.dim)[1:])
               for i in model.graph.input if i.name not in initializers)


def with_training_size(model: onnx.ModelProto, size: Sequence[int]) -> onnx.ModelProto:
    """A copy of `model` whose image inputs have the static spatial size `size` (`--input-size`; one number
    for every axis): the symbolic dims besides the batch are the spatial ones. An input whose size is
    already fixed must match."""
    initializers = {t.name for t in model.graph.initializer}
    if len(size) == 1:  # one number: every spatial axis
        ranks = {len(i.type.tensor_type.shape.dim) for i in model.graph.input if i.name not in initializers}
        size = tuple(size) * max((r - 2 for r in ranks if r >= 3), default=1)
    images = [i for i in model.graph.input if i.name not in initializers
              and len(i.type.tensor_type.shape.dim) == len(size) + 2]
    if not images:
        raise InputError(f"input size {'x'.join(map(str, size))} has {len(size)} axes; no input of the model has "
                         f"{len(size)} spatial axes")
    fixed = model.__class__()
    fixed.CopyFrom(model)
    targets = {i.name: i for i in fixed.graph.input}
    for image in images:
        dims = targets[image.name].type.tensor_type.shape.dim
        free = [axis for axis in range(1, len(dims)) if not dims[axis].HasField("dim_value")]
        if not free:
            static = [d.dim_value for d in dims]
            if tuple(size) not in (tuple(static[2:]), tuple(static[1:-1])):
                raise InputError(f"input '{image.name}' has the fixed shape {static}, which --input-size "
                                 f"{'x'.join(map(str, size))} does not match; leave --input-size out")
            continue
        if len(free) != len(size):
            raise InputError(f"input '{image.name}' has {len(free)} symbolic dims besides the batch; --input-size "
                             f"can only fix {len(size)} spatial ones when the channel count is static")
        for axis, value in zip(free, size):
            dims[axis].Clear()
            dims[axis].dim_value = int(value)
    return fixed


def unfollowed_shapes(model: onnx.ModelProto) -> List[str]:
    """Tensors of rank 3 or more whose dims beyond the batch shape inference left symbolic although every
    graph input's are static: the sizes an exporter's shape arithmetic hid (see runtime.observed_shapes)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if any(not d.HasField("dim_value") for i in inputs for d in list(i.type.tensor_type.shape.dim)[1:]):
        return []
    return [v.name for v in model.graph.value_info if len(v.type.tensor_type.shape.dim) >= 3
            and any(not d.HasField("dim_value") for d in list(v.type.tensor_type.shape.dim)[1:])]


def with_observed_shapes(model: onnx.ModelProto, observed: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """`model` with the observed dims (all but a symbolic batch) written into its value_info."""
    for value in model.graph.value_info:
        if value.name in observed:
            for dim, size in list(zip(value.type.tensor_type.shape.dim, observed[value.name]))[1:]:
                dim.Clear()
                dim.dim_value = int(size)
    return model


def with_known_value_info(model: onnx.ModelProto, known: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the value_info of `known` for the tensors whose type or shape shape inference did not give
    (before opset 13 it does not follow the shape arithmetic of a trunk made to follow the input's size;
    the rewrite leaves each tensor's type and training-size shape as they were)."""
    have = {v.name for v in model.graph.value_info if v.type.HasField("tensor_type")
            and v.type.tensor_type.HasField("shape") and v.type.tensor_type.elem_type}
    produced = {name for node in model.graph.node for name in node.output}
    add = [v for v in known.graph.value_info if v.name not in have and v.name in produced]
    if not add:
        return model
    kept = [v for v in model.graph.value_info if v.name in have]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept + add)
    return model

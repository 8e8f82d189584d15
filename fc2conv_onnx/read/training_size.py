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
        axes = free if len(free) == len(size) else _spatial_axes(dims, free)
        if len(axes) != len(size):
            shown = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in dims]
            raise InputError(f"input '{image.name}' {shown} has {len(free)} symbolic dims besides the batch, which "
                             f"are not its spatial axes alone; --input-size {'x'.join(map(str, size))} gives "
                             f"{len(size)} spatial sizes: export the model with a static channel count")
        for axis, value in zip(axes, size):
            if dims[axis].HasField("dim_value"):
                if dims[axis].dim_value != int(value):
                    wanted = [dims[a].dim_value if dims[a].HasField("dim_value") else v for a, v in zip(axes, size)]
                    raise InputError(f"input '{image.name}' has spatial axis {axis} fixed at {dims[axis].dim_value}, "
                                     f"which --input-size {'x'.join(map(str, size))} does not match; give "
                                     f"--input-size {'x'.join(map(str, wanted))}")
                continue
            dims[axis].Clear()
            dims[axis].dim_value = int(value)
    return fixed


def _spatial_axes(dims, free: Sequence[int]) -> List[int]:
    """The spatial axes of an image input some of whose spatial dims are static ([1, 1, 64, W]: a text line
    recognizer of fixed height): channels first when its dim 1 is a static channel count (1, 3 or 4) and the
    symbolic dims come after it, channels last when its last dim is one and they come before; else none."""
    rank = len(dims)
    channels = lambda axis: dims[axis].HasField("dim_value") and dims[axis].dim_value in (1, 3, 4)  # noqa: E731
    if channels(1) and all(axis >= 2 for axis in free):
        return list(range(2, rank))
    if channels(rank - 1) and all(axis <= rank - 2 for axis in free):
        return list(range(1, rank - 1))
    return []


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

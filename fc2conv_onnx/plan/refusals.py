"""What the plan refuses before anything is rewritten, in the user's words: a dynamic-size input without its
training size, a pooling mode a head cannot have (never converted to less than asked), a model with no head to
convert. The API attaches the dry-run report to each refusal."""
from __future__ import annotations

from typing import Sequence, Tuple

import onnx_graphsurgeon as gs

from ..errors import InputError, NothingToConvertError
from ..model.geometry import HeadGeometry, Unknown
from ..model.layout import CHANNELS_LAST, first_convolution, spatial_dims
from .options import Options
from .plan import KEEP_POOL, NO_POOL, Plan


def require_training_size(graph: gs.Graph, plan: Plan, probe: Tuple[int, ...]) -> None:
    """Heads are read, and proven, at the training size: an image input with dynamic spatial dims needs it
    given (the batch may stay symbolic), unless every head keeps its global pool (read at `probe`)."""
    tensors = graph.tensors()
    probed = bool(probe) and (not plan.heads or any(h.pool is None for h in plan.heads))
    for name in plan.trunk_inputs or [t.name for t in graph.inputs]:
        shape = tensors[name].shape or []
        spatial = spatial_dims(shape, plan.input_layout(name)) if len(shape) >= 3 else ()
        if probed or not all(isinstance(d, int) for d in spatial):
            shown = "" if probed else f" {list(shape)}"
            raise InputError(f"input '{name}' has dynamic spatial dims{shown}; give the model's training size "
                             "with --input-size (API: input_size=), e.g. --input-size 224")


def require_readable_layouts(graph: gs.Graph, plan: Plan) -> None:
    """Before anything runs: the layout read for each image input puts its channels where the first Conv reading
    it takes them, as many as its kernel has. A misread layout is refused here, in these words, rather than by
    onnxruntime when the converted model runs at another size."""
    tensors = graph.tensors()
    for name in plan.trunk_inputs:
        tensor, layout = tensors[name], plan.input_layout(name)
        found = first_convolution(tensor, layout)
        if found is None:
            continue
        conv, axis, same_count = found
        read = "channels last" if layout == CHANNELS_LAST else "channels first"
        if axis != 1:
            raise NothingToConvertError(f"input '{name}' {list(tensor.shape)} was read as {read}, but its first Conv "
                                        f"'{conv.name}' takes its channels from another axis: the input's layout "
                                        "is not one this tool can follow (please report the model)")
        weight, group = conv.inputs[1].shape, int(conv.attrs.get("group", 1))
        channels = tensor.shape[-1] if layout == CHANNELS_LAST else tensor.shape[1]
        if same_count and weight and isinstance(weight[1], int) and isinstance(channels, int) and \
                weight[1] * group != channels:
            raise NothingToConvertError(f"input '{name}' {list(tensor.shape)} was read as {read} ({channels} "
                                        f"channels), but its first Conv '{conv.name}' takes {weight[1] * group}: the "
                                        "input's layout is not one this tool can follow (please report the model)")


#: The size a dynamic-size model whose heads all keep their global pools is read and validated at.
PROBE_SIZE = 224


def refuse_dropped_modes(plan: Plan, geometry: Sequence[HeadGeometry], options: Options) -> None:
    """A pooling mode must reach every head it is asked for: never one prediction per image when a map was
    asked for (a global pool in the trunk the grammar cannot read past), and never a window-sized map when
    one cell per feature location was asked for (a flattening head has no pool to remove)."""
    if options.pooling == KEEP_POOL:
        return
    for head, where in zip(plan.heads, geometry):
        pooled_by = head.pooled_by or (where.pooled_by if isinstance(where, Unknown) else "")
        if options.pooling == NO_POOL and head.pool is None and not pooled_by:
            size = "x".join(map(str, head.spatial_shape))
            raise NothingToConvertError(
                f"--pooling none cannot apply to the head -> {', '.join(head.outputs)}: it has no global pool to "
                f"remove (its first layer reads the whole {size} feature map, so its map has one cell per {size} "
                "window already); use --pooling keep or window; nothing was written")
        if head.pool is None and pooled_by:
            why = plan.pool_declines.get(pooled_by, "the ops between are not ones the head grammar reads per location")
            raise NothingToConvertError(
                f"--pooling {options.pooling} cannot apply to the head -> {', '.join(head.outputs)}: its feature map "
                f"'{head.source}' is already pooled to one location by '{pooled_by}' ({why}); use --pooling "
                "keep for one prediction per image; nothing was written")


def nothing_to_convert(plan: Plan) -> NothingToConvertError:
    """The error for a plan with no head, naming the reason of the linear layer nearest the outputs (the
    report holds them all)."""
    if plan.skipped:
        last = plan.skipped[-1]  # the one nearest the outputs: the classifier, not a layer inside the trunk
        more = f" (and {len(plan.skipped) - 1} more; see `fc2conv-onnx inspect`)" if len(plan.skipped) > 1 else ""
        return NothingToConvertError(f"no fully connected head can be converted: {last.describe()}{more}")
    if plan.output_pools:
        return NothingToConvertError(
            f"no fully connected head found: {plan.output_pools[0]} pools the last feature map into the outputs "
            "with no layer after it, so --pooling keep has nothing to rewrite (the pool already gives one prediction "
            "per image); --pooling window (one prediction per window) or none (one per feature-map cell) makes the "
            "output a map")
    map_note = f"; nor is it fully convolutional already: {plan.not_a_map}" if plan.not_a_map else ""
    if plan.pool_declines:  # a global pool with layers after it that could not be read: its reason decided
        pool, why = list(plan.pool_declines.items())[-1]  # the one nearest the outputs
        more = f" (and {len(plan.pool_declines) - 1} more; see `fc2conv-onnx inspect`)" \
            if len(plan.pool_declines) > 1 else ""
        return NothingToConvertError(f"no head can be converted: the global pool '{pool}' starts none: {why}"
                                     f"{more}{map_note}")
    return NothingToConvertError("no fully connected head found (no Gemm or MatMul after a flattened "
                                 f"feature map, and no linear layer or 1x1 Conv after a global pool){map_note}")

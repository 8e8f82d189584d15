"""Models that are fully convolutional already (MTCNN's P-Net, any FCN classifier of crops): nothing to rewrite,
but each output is a map whose cells `detect` and `heatmap` can place once its geometry is recorded - so `convert`
records it, and proves it.

A model qualifies when it has no fully connected head (no linear layer at all, no global pool into the outputs),
one image input of known training size, and every graph output is a map of one location at that size (the crop
its cells classify; for P-Net, 12x12): its cells then have that window, at the trunk's stride. An output that is
larger there says the size is not the crop size (the user gives it with --input-size). Outputs on one grid are
one head, in the input's layout.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Tuple

import onnx_graphsurgeon as gs

from ..errors import NothingToConvertError
from ..model.geometry import Geometry
from ..model.layout import CHANNELS_LAST, input_layout, spatial_dims
from ..model.walks import upstream_inputs
from .geometry_walk import head_geometry
from .options import AUTO, KEEP_POOL, Options
from .plan import HeadPlan, Plan


@dataclass(frozen=True, eq=False)
class MapOutput(HeadPlan):
    """Graph outputs that are maps already, on one grid: a head with nothing to rewrite (`source` is the first
    output; its shape at the training size is one location)."""

    def describe(self) -> str:
        layout = "[N, *spatial, K]" if self.output_layout == CHANNELS_LAST else "[N, K, *spatial]"
        return (f"map -> {', '.join(self.outputs)} (as {layout}): fully convolutional already, one location at the "
                "training size; nothing to rewrite, its geometry recorded")

    def to_dict(self) -> Dict[str, Any]:
        return {"outputs": list(self.outputs), "output_layout": self.output_layout,
                "output_layouts": dict(self.output_layouts), "source": self.source,
                "source_shape": list(self.source_shape), "map_already": True}


def with_map_outputs(graph: gs.Graph, plan: Plan) -> Plan:
    """`plan` (with no head) given the model's outputs as `MapOutput` heads when the model is fully convolutional
    already; else `plan` with why not (`Plan.not_a_map`; none when it has linear layers or pools: their own
    reasons stand)."""
    if plan.heads or plan.skipped or plan.output_pools or not graph.outputs:
        return plan
    made, why = _maps(graph, plan)
    return made if made.heads else replace(plan, not_a_map=why)


def _maps(graph: gs.Graph, plan: Plan) -> Tuple[Plan, str]:
    names = [tensor.name for tensor in graph.outputs]
    inputs = upstream_inputs(graph, names)
    if len(inputs) != 1:
        return plan, f"its outputs are computed from {len(inputs)} inputs, not one image"
    image = graph.tensors()[inputs[0]]
    layout = input_layout(image)
    shape = image.shape
    if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in spatial_dims(shape, layout)):
        return plan, f"input '{image.name}' has no training size (give --input-size, the crop its cells classify)"
    training = tuple(spatial_dims(shape, layout))
    maps: List[MapOutput] = []
    for tensor in graph.outputs:
        out = tensor.shape
        if out is None or len(out) != len(shape) or not all(isinstance(d, int) for d in spatial_dims(out, layout)):
            return plan, f"output '{tensor.name}' is not a {len(shape)}-D map of a known size ({out})"
        spatial = tuple(spatial_dims(out, layout))
        if any(d != 1 for d in spatial):
            return plan, (f"output '{tensor.name}' is {'x'.join(map(str, spatial))} at the input size "
                          f"{'x'.join(map(str, training))}: give --input-size as the crop its cells classify "
                          "(where every output is one location)")
        channels = out[-1] if layout == CHANNELS_LAST else out[1]
        head = MapOutput(source=tensor.name, source_shape=(channels if isinstance(channels, int) else 0, *spatial),
                         steps=(), outputs=(tensor.name,), output_layouts={tensor.name: layout})
        maps.append(head)
    heads, why = _on_one_grid(graph, maps)
    if not heads:
        return plan, why
    return replace(plan, heads=tuple(heads), trunk_inputs=(image.name,), input_layouts={image.name: layout}), ""


def refuse_rewrites(plan: Plan, options: Options) -> None:
    """A model whose outputs are maps already is written as it is: an option that would change it is refused,
    never dropped (exit 4)."""
    if not any(isinstance(head, MapOutput) for head in plan.heads):
        return
    asked = [text for text, given in (
        (f"--stride {options.stride}", options.stride is not None),
        (f"--output-layout {options.output_layout}", options.output_layout != AUTO),
        (f"--pooling {options.pooling}", options.pooling != KEEP_POOL)) if given]
    if asked:
        raise NothingToConvertError(f"{asked[0]} cannot apply: the model is fully convolutional already (its "
                                    "outputs are maps), and is written as it is with its geometry; nothing was "
                                    "written")


def _on_one_grid(graph: gs.Graph, maps: List[MapOutput]) -> Tuple[List[MapOutput], str]:
    """The maps with equal geometries joined into one head each (their dims share names); none, and why, when one
    has no geometry (it is not reached from the input through ops whose geometry is known: not a map to place)."""
    groups: Dict[Geometry, MapOutput] = {}
    for head in maps:
        geometry = head_geometry(graph, head)
        if not isinstance(geometry, Geometry):
            return [], f"output '{head.source}': {geometry.describe()}"
        if geometry in groups:
            first = groups[geometry]
            groups[geometry] = replace(first, outputs=first.outputs + head.outputs,
                                       output_layouts={**first.output_layouts, **head.output_layouts})
        else:
            groups[geometry] = head
    return list(groups.values()), ""

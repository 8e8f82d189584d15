"""The metadata a conversion leaves in the model (`fc2conv_onnx.converted`): written once, and read back by
the applications and by a second conversion (which it makes a no-op). A marker is a file's contents: every
read checks it against the schema this tool writes, and anything else is bad input (exit 3)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from ..errors import InputError, first_line
from ..version import __version__
from .geometry import Geometry, HeadGeometry
from .layout import CHANNELS_FIRST, CHANNELS_LAST

if TYPE_CHECKING:  # read by detect and heatmap, which start without onnx
    import onnx

#: metadata_props key that marks a converted model (and makes converting it again a no-op).
CONVERTED_KEY = "fc2conv_onnx.converted"


def converted_marker(model: onnx.ModelProto) -> Optional[str]:
    """The marker a previous conversion left in the model, if any."""
    for prop in model.metadata_props:
        if prop.key == CONVERTED_KEY:
            return prop.value
    return None


def marker_json(plan: Any, geometry: Sequence[HeadGeometry], score_outputs: Sequence[str] = ()) -> str:
    """The converted marker: per head of `plan` (a `Plan`), its outputs, source tensor and geometry (or why it
    is unknown); and the outputs made by a Softmax or Sigmoid (probabilities: detect and heatmap read them
    by default, and learn it here without reading the graph)."""
    return json.dumps({"version": __version__, "score_outputs": list(score_outputs), "heads": [
        {"outputs": list(head.outputs), "output_layout": head.output_layout,
         "output_layouts": dict(head.output_layouts),
         "source": head.source, "pooling": None if head.pool is None else head.pool.mode.name,
         "geometry": where.to_dict()}
        for head, where in zip(plan.heads, geometry)]})


def _marker_heads(marker: str) -> List[dict]:
    """The heads a converted marker lists, each checked against the schema this tool writes (a marker is a
    file's contents: every read checks it); anything else is refused with exit 3."""
    try:
        if len(marker) > 1 << 24:
            raise ValueError("it is larger than any marker this tool writes")
        heads = json.loads(marker).get("heads", ())
        if not isinstance(heads, list) or not all(_is_marker_head(head) for head in heads):
            raise ValueError("a head is not an object with its outputs, layouts and geometry")
        for head in heads:
            if "stride" in head.get("geometry", {}):
                Geometry.from_dict(head["geometry"])
        return list(heads)
    except (ValueError, AttributeError, TypeError, RecursionError) as error:
        raise InputError(f"the model's '{CONVERTED_KEY}' metadata is damaged ({first_line(error)}); convert the "
                         "original again") from None


def _is_marker_head(head: object) -> bool:
    def strings(values: object) -> bool:
        return isinstance(values, list) and all(isinstance(v, str) for v in values)

    if not isinstance(head, dict) or not strings(head.get("outputs", [])):
        return False
    layouts = head.get("output_layouts", {})
    geometry = head.get("geometry", {})
    return isinstance(layouts, dict) and all(isinstance(k, str) and v in (CHANNELS_FIRST, CHANNELS_LAST)
                                             for k, v in layouts.items()) and \
        head.get("output_layout", CHANNELS_FIRST) in (CHANNELS_FIRST, CHANNELS_LAST) and \
        isinstance(geometry, dict) and isinstance(geometry.get("unknown", ""), str)


def score_outputs_from_marker(marker: str) -> Optional[List[str]]:
    """The outputs made by a Softmax or Sigmoid, from a converted marker; None when the marker is older than
    this record (the graph must be read to know)."""
    _marker_heads(marker)  # the marker is checked whole at every read
    found = json.loads(marker).get("score_outputs")
    if found is None:
        return None
    if not isinstance(found, list) or not all(isinstance(name, str) for name in found):
        raise InputError(f"the model's '{CONVERTED_KEY}' metadata is damaged (its score outputs are not a list of "
                         "names); convert the original again")
    return found


def output_layouts_from_marker(marker: str) -> Dict[str, str]:
    """Output name -> the layout its map is given in, from a converted marker."""
    return {name: head.get("output_layouts", {}).get(name, head.get("output_layout", CHANNELS_FIRST))
            for head in _marker_heads(marker) for name in head.get("outputs", ())}


def unknown_geometry_from_marker(marker: str) -> Dict[str, str]:
    """Output name -> why its geometry is unknown, from a converted marker."""
    return {name: str(head.get("geometry", {}).get("unknown", "")) for head in _marker_heads(marker)
            if "stride" not in head.get("geometry", {}) for name in head.get("outputs", ())}


def geometry_from_marker(marker: str) -> Dict[str, Geometry]:
    """Output name -> Geometry, from a converted marker (outputs of unknown geometry are left out)."""
    found = {}
    for head in _marker_heads(marker):
        values = head.get("geometry", {})
        if "stride" in values:
            try:
                found.update(dict.fromkeys(head["outputs"], Geometry.from_dict(values)))
            except (TypeError, ValueError, AttributeError, KeyError) as error:
                raise InputError(f"the model's '{CONVERTED_KEY}' metadata has a damaged geometry "
                                 f"({first_line(error)}); convert the original again") from None
    return found

"""The marker of a converted model, checked against what the graph computes: `validate` proves the pair's
numbers, and a marker that lies about them (a forged or hand-edited one) would send detect's boxes to the wrong
pixels or read a regression as scores. A marker here is a claim, never trusted."""
from __future__ import annotations

from typing import Sequence

import onnx

from ..errors import ValidationError
from ..model import marker
from ..model.geometry import Geometry, HeadGeometry
from ..model.scores import made_by_score_op

#: What places a cell on the picture; the rest of a geometry (its layers, its receptive field) is report.
_PLACING = ("input", "stride", "window", "offset", "layout")


def check_marker(converted: onnx.ModelProto, plan: object, geometry: Sequence[HeadGeometry]) -> None:
    """Refuse (ValidationError) a marker whose geometry or score outputs differ from those of `plan` (the
    original's heads, as this tool reads them) and the converted graph. A model without a marker (converted by
    hand) has nothing to check."""
    stored = marker.converted_marker(converted)
    if stored is None:
        return
    claimed = marker.geometry_from_marker(stored)
    for head, where in zip(getattr(plan, "heads"), geometry):
        for name in head.outputs:
            said = claimed.get(name)
            if isinstance(where, Geometry) and said is not None:
                wrong = [field for field in _PLACING if getattr(said, field) != getattr(where, field)]
                if wrong:
                    raise ValidationError(f"the converted model's marker gives output '{name}' a {wrong[0]} of "
                                          f"{getattr(said, wrong[0])}, where its graph has {getattr(where, wrong[0])}; "
                                          "the marker does not describe this model: convert the original again")
            elif isinstance(where, Geometry) != (said is not None):
                raise ValidationError(f"the converted model's marker {'gives' if said else 'gives no'} geometry for "
                                      f"output '{name}', where its graph {'has none' if said else 'has one'}; "
                                      "convert the original again")
    scores = marker.score_outputs_from_marker(stored)
    if scores is None:
        return
    heads = [name for head in getattr(plan, "heads") for name in head.outputs]
    actual = {name for name in heads if made_by_score_op(converted, name)}
    graph = {o.name for o in converted.graph.output}
    false = [name for name in scores if name not in graph or not made_by_score_op(converted, name)]
    if false or not actual <= set(scores):
        raise ValidationError(f"the converted model's marker names the score outputs {sorted(scores)}, where its "
                              f"graph makes {sorted(actual)} with a Softmax or Sigmoid; convert the original again")

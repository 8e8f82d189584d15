"""Which outputs of a converted model are scores: probabilities made by a Softmax or Sigmoid (maybe behind ops
that only move values), and the one rule that picks the output an app reads when none is named. Read by the
converter (the marker it writes, --emit-detections) and by the apps alike."""
from __future__ import annotations

from typing import TYPE_CHECKING, Container, Sequence

from .registry import fact

if TYPE_CHECKING:
    import onnx


def score_output(model: "onnx.ModelProto", names: Sequence[str]) -> str:
    """Of the outputs `names` of `model`, the one `first_score` picks, read from the graph."""
    return first_score(names, {name for name in names if made_by_score_op(model, name)})


def first_score(names: Sequence[str], scores: Container[str]) -> str:
    """Of the outputs `names`, the first of `scores` (made by a Softmax or Sigmoid), else the first: a
    detector's face probability, not its box regression. The one rule wherever an output is chosen (heatmap,
    detect from the marker; --emit-detections from the graph)."""
    return ([name for name in names if name in scores] or list(names))[0]


def made_by_score_op(model: "onnx.ModelProto", name: str) -> bool:
    """True when output `name` is made by a Softmax or Sigmoid, maybe behind ops that only move its values
    (Transpose, Reshape, Flatten, Squeeze, Identity: the Transpose a channels-last model has after its
    Softmax): its values are probabilities, not logits."""
    producers = {output: node for node in model.graph.node for output in node.output}
    node, seen = producers.get(name), set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if fact(node, "score"):
            return True
        if not fact(node, "keeps_values") or not node.input:
            return False
        node = producers.get(node.input[0])
    return False

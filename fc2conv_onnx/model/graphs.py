"""A graphsurgeon graph as a ModelProto again: with the original's model-level fields (which graphsurgeon does
not carry), and, for a skeleton, with its large weights left where `Weights` holds them."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from .weights import Weights


def clear_inferred_shapes(graph: gs.Graph) -> None:
    """Forget the shape of every tensor but the graph inputs; they are stale once inputs change."""
    inputs = {id(t) for t in graph.inputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in inputs:
            tensor.shape = None


def export_like(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """Export `graph`, keeping the original's model-level fields (which graphsurgeon does not carry)."""
    model = gs.export_onnx(graph)
    # IR 3 (Caffe2-era zoo) requires every initializer to be a graph input and every output to have a
    # shape; graphsurgeon writes neither, and converted outputs have new shapes. IR 4 lifts both rules
    # and changes nothing else, so such models come out as IR 4.
    model.ir_version = max(original.ir_version, 4)
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(original, field))
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    del model.graph.value_info[:]
    return model


def skeleton(graph: gs.Graph, like: onnx.ModelProto, weights: Weights) -> onnx.ModelProto:
    """The graph as a ModelProto like `like` whose large weights stay where `weights` holds them."""
    weights.hold(graph)
    return export_like(graph.copy(), like)

"""The graph between its two forms, and cut: a graphsurgeon graph as a ModelProto again (with the original's
model-level fields, which graphsurgeon does not carry; for a skeleton, its large weights left where `Weights`
holds them), a ModelProto cut between named tensors without leaving that form, and the symbolic dims given
to inputs that must take any size."""
from __future__ import annotations

import re
from typing import Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import onnx
import onnx_graphsurgeon as gs

from . import work
from .layout import CHANNELS_FIRST, with_spatial
from .weights import Weights

BATCH_NAME = "N"
#: The names shape inference (and tf2onnx) make up for dims nobody named.
UNNAMED = re.compile(r"unk__\d+")
SPATIAL_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def spatial_names(spatial_rank: int) -> Tuple[str, ...]:
    return SPATIAL_NAMES.get(spatial_rank, tuple(f"S{i}" for i in range(spatial_rank)))


def symbolic_dims(shape: Sequence, prefix: str = "", batch_only: bool = False,
                  layout: str = CHANNELS_FIRST) -> List:
    """`shape` with its batch (axis 0) and, unless `batch_only`, its spatial axes named symbols: N, H, W
    (with `prefix`). A batch the exporter named keeps its name."""
    shape = list(shape)
    if not (isinstance(shape[0], str) and shape[0] and not UNNAMED.fullmatch(shape[0])):
        shape[0] = prefix + BATCH_NAME
    if len(shape) >= 3 and not batch_only:
        shape = list(with_spatial(shape, layout, [prefix + name for name in spatial_names(len(shape) - 2)]))
    return shape




def clear_inferred_shapes(graph: gs.Graph) -> None:
    """Forget the shape of every tensor but the graph inputs; they are stale once inputs change."""
    inputs = {id(t) for t in graph.inputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in inputs:
            tensor.shape = None


def export_like(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """Export `graph`, keeping the original's model-level fields (which graphsurgeon does not carry)."""
    work.count(work.EXPORTS)
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


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """`model` as a graphsurgeon graph (counted: `work`)."""
    work.count(work.IMPORTS)
    return gs.import_onnx(model)


def infer_shapes(model: onnx.ModelProto, **options) -> onnx.ModelProto:
    """onnx's shape inference on `model` (counted: `work`)."""
    work.count(work.INFERENCES)
    return onnx.shape_inference.infer_shapes(model, **options)


def skeleton(graph: gs.Graph, like: onnx.ModelProto, weights: Weights) -> onnx.ModelProto:
    """The graph as a ModelProto like `like` whose large weights stay where `weights` holds them."""
    weights.hold(graph)
    return export_like(graph.copy(), like)


def free_input_dims(graph: gs.Graph, input_names: Iterable[str], batch_only: bool = False,
                    layouts: Optional[Mapping[str, str]] = None) -> None:
    """Make the batch (axis 0) and, unless `batch_only`, the spatial axes of the named inputs symbolic.
    The spatial axes are 2 onwards, or 1 to the last but one for inputs that `layouts` says are
    channels last."""
    names = set(input_names)
    layouts = layouts or {}
    prefixed = len(names) > 1  # distinct symbols per input: their sizes need not match
    for tensor in graph.inputs:
        if tensor.name in names and tensor.shape is not None:
            tensor.shape = symbolic_dims(tensor.shape, f"{tensor.name}_" if prefixed else "", batch_only,
                                         layouts.get(tensor.name, CHANNELS_FIRST))


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs the tensors `names` (untyped: onnxruntime gives them what it
    computes); the same model when there are none to add."""
    known = {o.name for o in model.graph.output}
    added = [name for name in dict.fromkeys(names) if name not in known]
    if not added:
        return model
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in added)
    return probe


def cut(model: onnx.ModelProto, outputs: Sequence[str], inputs: Sequence[str] = (),
        free_inputs: Iterable[str] = (), batch_only: bool = False,
        layouts: Optional[Mapping[str, str]] = None) -> onnx.ModelProto:
    """A copy of `model` that computes only the tensors `outputs`, from the tensors `inputs` (default: the
    graph inputs they need): the nodes after them, which may not run at another size, are left out. The
    dims of `free_inputs` become symbolic (as `free_input_dims`). The inferred shapes are dropped (a run at
    another size would contradict them) and the outputs left untyped: onnxruntime gives them what it
    computes."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph = probe.graph
    stop, needed, kept = set(inputs), set(outputs) - set(inputs), []
    for node in reversed(graph.node):  # a model's nodes are in topological order
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(name for name in _reads(node) if name not in stop)
    used = {name for node in kept for name in _reads(node)} | set(outputs)
    declared = {value.name: value for value in list(graph.input) + list(graph.value_info) + list(graph.output)}
    missing = [name for name in inputs if name not in declared]
    if missing:
        raise ValueError(f"tensor '{missing[0]}' has no declared type to cut the model at")
    new_inputs = [declared[name] for name in inputs] if inputs else [v for v in graph.input if v.name in used]
    new_inputs = [_copy(value) for value in new_inputs]
    free = set(free_inputs)
    for value in new_inputs:
        if value.name in free:
            _free(value, f"{value.name}_" if len(free) > 1 else "", batch_only,
                  (layouts or {}).get(value.name, CHANNELS_FIRST))
    initializers = [t for t in graph.initializer if t.name in used and t.name not in stop]
    del graph.node[:]
    graph.node.extend(reversed(kept))
    del graph.input[:]
    graph.input.extend(new_inputs)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.value_info[:]
    del graph.output[:]
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in outputs)
    return probe


def _reads(node: onnx.NodeProto) -> Set[str]:
    """The tensors a node reads: its inputs, and those its subgraphs (If, Loop, Scan) take from outside."""
    names = {name for name in node.input if name}
    for attribute in node.attribute:
        for body in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            inner = {v.name for v in body.input} | {t.name for t in body.initializer} | \
                {out for n in body.node for out in n.output}
            names |= {name for n in body.node for name in _reads(n)} - inner
    return names


def _copy(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    return copy


def _free(value: onnx.ValueInfoProto, prefix: str, batch_only: bool, layout: str) -> None:
    """Give a graph input's dims the symbols `symbolic_dims` gives."""
    dims = value.type.tensor_type.shape.dim
    if not len(dims):
        return
    shape: List = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "")
                   for d in dims]
    for dim, new in zip(dims, symbolic_dims(shape, prefix, batch_only, layout)):
        if isinstance(new, str):
            dim.Clear()
            dim.dim_param = new

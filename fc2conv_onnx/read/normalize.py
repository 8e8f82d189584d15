"""Make the graph readable for head matching without changing what it computes.

Exporters hand weights over in several ways; the matchers only want to ask "is this input a constant,
and what are its values?". Here, Constant nodes (Caffe2-era and tf2onnx models use them for weights and
Reshape shapes), Identity nodes of constants (TorchScript) and ConstantOfShape of a constant shape become
graphsurgeon Constants, so one question (`isinstance(t, gs.Constant)`) serves all.
Unnamed and same-named nodes get unique names, since the plan refers to nodes by name. Initializers listed
as graph inputs (IR < 4) are already kept out of the inputs by the graphsurgeon importer.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import first_line
from ..model.graph_names import free_name
from ..model.layout import to_channels_first
from ..model.registry import fact, in_default_domain, is_op
from .constants import constant_ints
from .per_location_linears import per_location_linears
from .pool_views import channels_first_views_before_heads
from .reference import evaluate as evaluate_nodes
from .shape_values import PROBE_BATCHES, NotEvaluable, evaluate

logger = logging.getLogger(__name__)

def constant_node_value(node: gs.Node) -> Optional[np.ndarray]:
    """The tensor a Constant node produces, or None for forms we do not read (sparse, strings)."""
    attrs = node.attrs
    if isinstance(attrs.get("value"), gs.Constant):
        return np.asarray(attrs["value"].values)
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    return None


def fold_constant_nodes(graph: gs.Graph) -> int:
    """Turn the outputs of nodes that only read constants (or what such nodes make: chains fold too) into
    graphsurgeon Constants; return how many nodes were folded. Every such node is evaluated in one run of
    onnx's reference evaluator; if that run fails (an op it does not implement), node by node, leaving the
    ones it cannot evaluate."""
    graph_outputs = {id(t) for t in graph.outputs}
    opset = int(graph.opset or 1)
    graph.toposort()
    made: Dict[int, Optional[np.ndarray]] = {}  # id(tensor) -> its value (None: to be evaluated), for what folds
    chain: List[gs.Node] = []
    for node in graph.nodes:
        if any(id(t) in graph_outputs for t in node.outputs) or not _may_fold(node):
            continue
        if is_op(node, "Constant"):
            value = constant_node_value(node)
            if value is not None and len(node.outputs) == 1:
                made[id(node.outputs[0])] = value
            continue
        if node.inputs and all(isinstance(t, gs.Constant) or not t.name or id(t) in made for t in node.inputs):
            chain.append(node)
            made.update((id(t), None) for t in node.outputs)  # its values come from the evaluation
    values = _evaluate_chain(chain, opset, made) if chain else {}
    folded = 0
    for node in graph.nodes:
        outputs = list(node.outputs)
        if not outputs or any(id(t) not in made or (made[id(t)] is None and id(t) not in values) for t in outputs):
            continue  # not foldable, or its evaluation failed
        node.outputs.clear()
        for tensor in outputs:
            tensor.to_constant(values.get(id(tensor), made[id(tensor)]))
        folded += 1
    if folded:
        graph.cleanup()
        logger.debug("folded %d constant-only nodes into constant tensors", folded)
    return folded


def _may_fold(node: gs.Node) -> bool:
    """Never folded (the registry's `folds`): ops whose result is not a function of their inputs, the
    quantization ops of a QDQ model (whose quantized weights the rewrite keeps quantized), nodes of other
    domains, and If / Loop / Scan."""
    return in_default_domain(node) and fact(node, "folds") is not False and bool(node.outputs) and \
        not any(isinstance(v, gs.Graph) for v in node.attrs.values())


def _evaluate_chain(chain: Sequence[gs.Node], opset: int, made: Dict[int, Optional[np.ndarray]]
                    ) -> Dict[int, np.ndarray]:
    """id(tensor) -> value for the outputs of `chain` (nodes in graph order that read constants, Constant
    nodes' values in `made`, or one another's outputs): one evaluation of them all, else one per node."""
    try:
        return evaluate_nodes(chain, opset, made)
    except Exception as error:  # an op the evaluator does not implement: node by node, to fold the others
        logger.debug("folding node by node: %s", first_line(error))
    values: Dict[int, np.ndarray] = {}
    for node in chain:
        if any(id(t) in made and made[id(t)] is None and id(t) not in values for t in node.inputs):
            continue  # reads a value that could not be computed
        try:
            values.update(evaluate_nodes([node], opset, {**made, **values}))
        except Exception as error:
            logger.debug("not folded: %s '%s' (%s)", node.op, node.name, first_line(error))
    return values


def unit_channel_reshapes_to_transposes(graph: gs.Graph) -> List[str]:
    """Turn a Reshape of [N, *spatial, 1] to [N, 1, *spatial] into the Transpose it stands for.

    tf2onnx writes the NHWC -> NCHW Transpose of a single-channel input as a Reshape with the training
    size baked in ([-1, 1, H, W], or [1, 1, H, W] from a TFLite file with its batch fixed), which would tie
    the trunk to that size. With one channel the two ops move the same elements, so the Transpose is exact
    and runs at any size. Returns a note per change.
    """
    notes = []
    for node in graph.nodes:
        if not is_op(node, "Reshape") or len(node.inputs) < 2:
            continue
        shape = node.inputs[0].shape
        target = node.inputs[1].values if isinstance(node.inputs[1], gs.Constant) else None
        if shape is None or target is None or len(shape) < 3 or shape[-1] != 1:
            continue
        spatial = list(shape[1:-1])
        target = [int(v) for v in np.asarray(target).reshape(-1)]
        # The batch: copied (-1, 0), or the input's own fixed batch (TFLite files fix it at 1: fer's emotion model).
        if not all(isinstance(d, int) for d in spatial) or target[1:] != [1] + spatial or \
                (target[0] not in (-1, 0) and target[0] != shape[0]):
            continue
        node.op = "Transpose"
        node.attrs = {"perm": list(to_channels_first(len(shape)))}
        while len(node.inputs) > 1:
            node.inputs.pop()
        notes.append(f"Reshape '{node.name}' of the single-channel [N, *spatial, 1] tensor '{node.inputs[0].name}' to "
                     f"{target} became the Transpose it stands for, so the trunk runs at any size")
    if notes:
        graph.cleanup()
    return notes


def _gathers_every_element_in_order(indices: gs.Tensor, shape: Sequence, opset: int) -> bool:
    """Whether Gather `indices` are arange(size).reshape(shape) of a tensor of `shape`: constant indices, or
    (on a symbolic batch) indices computed from the batch, evaluated at two batch sizes."""
    if not all(isinstance(d, int) for d in shape[1:]):
        return False
    if isinstance(indices, gs.Constant):
        given = [(np.asarray(indices.values), tuple(shape))] if isinstance(shape[0], int) else []
    else:
        try:
            given = [(value, (batch,) + tuple(shape[1:]))
                     for batch, value in zip(PROBE_BATCHES, evaluate(indices, PROBE_BATCHES, opset))]
        except NotEvaluable:
            return False
    return bool(given) and all(tuple(order.shape) == wanted and
                               np.array_equal(order.reshape(-1), np.arange(order.size)) for order, wanted in given)


def identity_gathers_removed(graph: gs.Graph) -> List[str]:
    """Remove Reshape(x, [-1]) -> Gather(axis 0) of every element in x's own order and shape.

    The dynamo exporter writes `as_strided` (timm ConvNeXt's pooled map, via AdaptiveAvgPool2d) so: x is
    flattened, then gathered back with indices arange(x.size).reshape(x.shape), which gives x again; on a
    dynamic batch the indices are computed, Range(0, batch) * C + offsets. The pair hides that the pooled map
    is a map; the Gather's readers read x instead. Returns a note per removal.
    """
    notes = []
    for gather in graph.nodes:
        if not is_op(gather, "Gather") or int(gather.attrs.get("axis", 0)) != 0:
            continue
        flat, indices = gather.inputs[0], gather.inputs[1]
        reshape = flat.inputs[0] if len(flat.inputs) == 1 else None
        if reshape is None or not is_op(reshape, "Reshape") or not isinstance(reshape.inputs[1], gs.Constant):
            continue
        source = reshape.inputs[0]
        if np.asarray(reshape.inputs[1].values).reshape(-1).tolist() != [-1] or source.shape is None or \
                not _gathers_every_element_in_order(indices, source.shape, int(graph.opset or 1)):
            continue
        result = gather.outputs[0]
        if result in graph.outputs:
            continue
        for reader in list(result.outputs):
            reader.inputs[reader.inputs.index(result)] = source
        gather.outputs.clear()
        notes.append(f"Reshape '{reshape.name}' to [-1] and Gather '{gather.name}' of every element in order (the "
                     "dynamo exporter's as_strided) are the identity: removed")
    if notes:
        graph.cleanup()
    return notes


def _through_casts(tensor: gs.Tensor) -> gs.Tensor:
    """The tensor before any Cast / Identity (shape arithmetic changes int32 and int64 back and forth)."""
    while tensor.inputs and is_op(tensor.inputs[0], "Cast", "Identity"):
        tensor = tensor.inputs[0].inputs[0]
    return tensor


def _same_shape(read: gs.Tensor, data: gs.Tensor) -> bool:
    """Whether `read` is `data`, or what `data` is made from by Casts and Identities (Keras on the torch backend
    reads the shape of the tensor before a float-to-float Cast): its shape is `data`'s."""
    while True:
        if read is data:
            return True
        if not data.inputs or not is_op(data.inputs[0], "Cast", "Identity"):
            return False
        data = data.inputs[0].inputs[0]


def _own_batch(piece: gs.Tensor, data: gs.Tensor) -> Optional[List[str]]:
    """If the one-element `piece` is dim 0 of `data`, read off Shape(data) (or the Shape of what `data` is cast
    from) by Slice [0:1] or Gather 0, maybe
    behind ops that only change the rank or type of one value (Squeeze, Unsqueeze, Cast): the ops that read
    it, from Shape on; else None.

        data ──▶ Shape ──▶ Slice(starts [0], ends [1]) ───────────────────┬──▶ Concat
                      └──▶ Gather(0) ──▶ (Squeeze) ──▶ Unsqueeze ──▶ (Cast) ┘
    """
    if piece.shape is None or list(piece.shape) != [1]:
        return None
    ops: List[str] = []
    node = piece.inputs[0] if piece.inputs else None
    while node is not None and fact(node, "keeps_values"):  # Squeeze, Unsqueeze, Cast... of the one value
        ops.append(node.op)
        node = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
    if node is None or int(node.attrs.get("axis", 0)) != 0:
        return None
    if is_op(node, "Gather"):
        if constant_ints(node.inputs[1]) != [0]:
            return None
    elif is_op(node, "Slice"):
        bounds = [constant_ints(t) for t in node.inputs[1:]] if len(node.inputs) > 1 else \
            [node.attrs.get("starts"), node.attrs.get("ends"), node.attrs.get("axes", [0])]
        if len(bounds) < 2 or bounds[0] != [0] or bounds[1] != [1] or any(b not in ([0], [1]) for b in bounds[2:]):
            return None
    else:
        return None
    shape = _through_casts(node.inputs[0]).inputs  # paddle2onnx casts the shape to int32 and back
    if not shape or not is_op(shape[0], "Shape") or not _same_shape(shape[0].inputs[0], data) or \
            int(shape[0].attrs.get("start", 0)):
        return None
    return ["Shape", node.op] + list(reversed(ops)) + ["Concat"]


def batch_read_off_own_shape(graph: gs.Graph) -> List[str]:
    """Give a Reshape whose target copies its input's batch from that input's own shape the constant target
    that says the same: 0 (copy the dim) in place of the computed batch.

    paddle2onnx flattens as Reshape(x, Concat(Slice(Shape(x), [0:1]), [-1])) on a dynamic batch, TorchScript
    as `x.view(x.size(0), -1)`, jax2onnx as `x.reshape(x.shape[0], -1)`. With allowzero 0 a 0 copies the
    input's dim at that index, so the target [0, -1] equals the computed one for every input; it is then a
    constant that the head grammar reads and that keeps meaning the same when the pooled map before it becomes
    a map. Returns a note per Reshape.
    """
    notes = []
    for node in graph.nodes:
        if not is_op(node, "Reshape") or len(node.inputs) < 2 or isinstance(node.inputs[1], gs.Constant) or \
                node.attrs.get("allowzero", 0):
            continue
        concat = _through_casts(node.inputs[1]).inputs
        if not concat or not is_op(concat[0], "Concat") or len(concat[0].inputs) < 2:
            continue
        first, *rest = (_through_casts(t) for t in concat[0].inputs)
        tail = [constant_ints(t) for t in rest]
        read = _own_batch(first, node.inputs[0])
        if read is None or any(values is None for values in tail):
            continue
        target = [0] + [v for values in tail for v in values]  # type: ignore[union-attr]
        node.inputs[1] = gs.Constant(f"{node.name}/target", np.array(target, dtype=np.int64))
        notes.append(f"Reshape '{node.name}' reads its batch off its input's shape ({' -> '.join(read)}): its target "
                     f"is now the constant {target}, which says the same for every input")
    if notes:
        graph.cleanup()
    return notes


def make_node_names_unique(graph: gs.Graph) -> None:
    """Give every node a unique name: the plan refers to nodes by name, and ONNX allows empty or
    repeated ones."""
    taken = {node.name for node in graph.nodes if node.name}
    seen = set()
    for index, node in enumerate(graph.nodes):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        node.name = free_name(taken, f"{node.name or node.op}_{index}")
        seen.add(node.name)


def normalize(graph: gs.Graph) -> Tuple[str, ...]:
    """Apply every normalization in place. Returns a note for each change to what the trunk's ops are
    (folding constants is not one): the window check must then cut the normalized model, since the
    original trunk may not run at other sizes."""
    fold_constant_nodes(graph)
    notes = batch_read_off_own_shape(graph) + unit_channel_reshapes_to_transposes(graph) + \
        identity_gathers_removed(graph) + per_location_linears(graph) + channels_first_views_before_heads(graph)
    make_node_names_unique(graph)
    return tuple(notes)

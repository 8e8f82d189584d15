"""Find a model's heads and read each one as the head grammar says:

    spatial source ──┬── global pool ───────────────────────────┬── step* ── graph outputs
                     └── flattening ── first linear layer ──────┘

    step: per-location op on a pooled map (1x1 Conv, LayerNorm over the channels, a Transpose of the
          channels last and back, activations) | flattening of a pooled map | linear layer | pass-through

A pooled head starts where a global pool (GlobalAveragePool, ReduceMean over the spatial axes, ...) makes
a map stop being spatial; the `--pooling` mode says what the pool becomes. A flattening head starts at a
Gemm/MatMul that reads a flattened feature map of the training size; that first layer becomes a Conv
whose kernel is the whole map. Every op after the start is read by its entry in the op registry (`plan.ops`),
which says what it becomes at every location or declines with a reason.

Every Gemm/MatMul that does not end up in a converted head is reported with a reason.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from math import prod
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple, Union

import onnx_graphsurgeon as gs

from ..model.layout import AUTO, CHANNELS_FIRST, CHANNELS_LAST, LAYOUTS, input_layout, is_transpose, to_channels_last
from ..model.registry import CHANNEL_SLICE, LOCAL, attach, entry, fact, is_op
from ..model.walks import upstream_inputs
from ..read.constants import axes_of, producer
from ..read.trunk_kinds import trunk_kind
from .flattenings import reshape_flattens
from .linear import match_linear
from .ops import HeadContext
from .options import Options
from .plan import (
    AXIS_LAST,
    FLAT,
    KEEP_POOL,
    MODES,
    PERMUTED,
    POOLINGS,
    Decline,
    Flattening,
    GlobalPool,
    HeadPlan,
    LinearLayer,
    PassThrough,
    Plan,
    Skipped,
    Step,
)
from .pools import global_pool

logger = logging.getLogger(__name__)


def spatial_source_shape(tensor: gs.Tensor) -> Union[Tuple[int, ...], Decline]:
    """(C, *spatial) of a tensor that can be slid over, or why it cannot."""
    if isinstance(tensor, gs.Constant):
        return Decline(f"input '{tensor.name}' is a constant, not a feature map")
    shape = tensor.shape
    if shape is None:
        return Decline(f"the shape of '{tensor.name}' is unknown; run shape inference or export with fixed sizes")
    if len(shape) < 3:
        return Decline(f"input '{tensor.name}' is not a spatial tensor (shape {list(shape)}); "
                       "there is no spatial axis to slide over")
    rest = tuple(shape[1:])
    if not all(isinstance(d, int) and d > 0 for d in rest):
        return Decline(f"'{tensor.name}' has no static size {list(shape)}: if the model takes inputs of any size, "
                       "give its training size with --input-size (API: input_size=)")
    return rest


# ------------------------------------------------------------------------------ flattening vocabulary

def _read_through_transpose(node: gs.Node) -> Tuple[gs.Tensor, str, str, Tuple[PassThrough, ...], Tuple[int, ...]]:
    """The spatial tensor a flattening reads, the order it lists the features in, a note, the elementwise
    ops (with scalar constants) between a Transpose and the flattening, and that Transpose's perm for an
    order other than channels first or last.

    tf2onnx (and keras2onnx) put a Transpose to channels last before a Keras Flatten, so the features come
    in (*spatial, C) order; the source is then the channels-first tensor before the Transpose, and the
    first kernel is permuted to match (never the other way round: the trunk stays as it is). Any other
    Transpose that keeps the batch first is read the same way (the Caffe ports of MTCNN flatten in (W, H, C)
    order). Ops between the Transpose and the flattening (a QDQ model's Q/DQ pair) commute with the
    Transpose: they move to the channels-first source.
    """
    data = node.inputs[0]
    start, between = _elementwise_chain(data, 0, frozenset())
    transpose = producer(start)
    rank = len(start.shape) if start.shape is not None else 0
    if transpose is None or not is_op(transpose, "Transpose") or rank < 3:
        return data, CHANNELS_FIRST, "", (), ()
    if is_transpose(transpose, to_channels_last(rank)):
        note = f"reads Transpose '{transpose.name}' to channels last: features in (*spatial, C) order, permuted " \
               "into the kernel"
        return transpose.inputs[0], CHANNELS_LAST, note, between, ()
    perm = tuple(int(p) for p in transpose.attrs.get("perm", ()))
    if len(perm) == rank and perm[0] == 0 and sorted(perm) == list(range(rank)) and perm != tuple(range(rank)):
        note = f"reads Transpose '{transpose.name}' (perm {list(perm)}): features in that order, permuted into the " \
               "kernel"
        return transpose.inputs[0], PERMUTED, note, between, perm
    return data, CHANNELS_FIRST, "", (), ()


def _channels_last_origin(tensor: gs.Tensor) -> Optional[gs.Node]:
    """The Transpose to channels last that `tensor` comes from through per-location ops (a Slice of the
    channels, activations), if any: then `tensor` is itself a channels-last map, which a flattening would
    be misread as channels first. (Any window op in between needs channels first again.)"""
    rank = len(tensor.shape) if tensor.shape is not None else 0
    node = producer(tensor)
    while node is not None and node.inputs and trunk_kind(node) in (LOCAL, CHANNEL_SLICE):
        node = producer(node.inputs[0])
    return node if node is not None and rank >= 3 and is_transpose(node, to_channels_last(rank)) else None


def _refuse_hidden_channels_last(node: gs.Node, source: gs.Tensor, order: str) -> Optional[Decline]:
    origin = _channels_last_origin(source) if order == CHANNELS_FIRST else None
    last = producer(source)
    if origin is None or last is None:
        return None
    return Decline(f"{node.op} '{node.name}' flattens a channels-last map (made by Transpose '{origin.name}', then "
                   f"{last.op} '{last.name}'), which is read in (*spatial, C) order only when the Transpose comes "
                   "right before the flattening or elementwise ops alone are between")


def _joined(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _flattened_source(node: gs.Node) -> Union[tuple, Decline]:
    """What a flattening `node` reads, through a Transpose: (source, order, note, prelude, perm, its spatial
    shape), or the Decline that says why it cannot start a head."""
    source, order, note, moved, perm = _read_through_transpose(node)
    shape = spatial_source_shape(source)
    if isinstance(shape, Decline):
        return shape
    hidden = _refuse_hidden_channels_last(node, source, order)
    if hidden is not None:
        return hidden
    return source, order, note, moved, perm, shape


def match_flatten(node: gs.Node, opset: int) -> Union[Flattening, Decline, None]:
    """Flatten(axis=1): PyTorch `torch.flatten(x, 1)`, Keras/ONNX Flatten (after a Transpose, keras2onnx). (A
    flattening matcher takes the graph's opset; a Flatten's meaning does not depend on it.)"""
    found = _flattened_source(node)
    if isinstance(found, Decline):
        return found
    source, order, note, moved, perm, shape = found
    axis = node.attrs.get("axis", 1)
    if axis < 0:
        axis += len(shape) + 1
    if axis != 1:
        return Decline(f"Flatten '{node.name}' has axis {node.attrs.get('axis')}, not 1: "
                       "it does not keep the batch axis apart")
    return Flattening(node=node.name, op="Flatten", source=source.name, source_shape=shape, order=order, note=note,
                      prelude=moved, perm=perm)


def match_reshape(node: gs.Node, opset: int) -> Union[Flattening, Decline, None]:
    """Reshape to [N, C*H*W]: a constant shape ([N, -1], [0, -1], [-1, C*H*W], [N, C*H*W]), or one
    computed from the trunk's shape (TorchScript `view(x.size(0), -1)`: Shape -> Gather -> Unsqueeze ->
    Concat; tf2onnx Flatten: Shape -> Gather -> Cast -> Slice -> Concat -> Cast), which is evaluated at
    the training size and must give [batch, features] at every batch size it is tried with.

    A literal batch size (e.g. `view(1, -1)`) is accepted when it equals the training batch; the
    converted model then takes any batch, and the plan says so.
    """
    found = _flattened_source(node)
    if isinstance(found, Decline):
        return found
    source, order, transpose_note, moved, perm, shape = found
    note = reshape_flattens(node, prod(shape), f"[N, {', '.join(map(str, shape))}]", opset)
    if isinstance(note, Decline):
        return note
    return Flattening(node=node.name, op="Reshape", source=source.name, source_shape=shape, order=order,
                      note=_joined(transpose_note, note), prelude=moved, perm=perm)


attach("flattening", "Flatten", value=match_flatten)
attach("flattening", "Reshape", value=match_reshape)


# --------------------------------------------------------------------------------------- head search

class _NotAHead(Exception):
    """Raised inside the head search (`Decline` is the value a matcher returns): a head cannot be converted, for
    `reason`. `joins_trunk`: the walk met an op that combines the head with a computed tensor from outside it
    (a squeeze-and-excitation gate): the pool is part of the trunk, not the start of a head. `pool_only`: a
    kept pool that feeds outputs with no layer after it."""

    def __init__(self, reason: str, joins_trunk: bool = False, pool_only: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.joins_trunk, self.pool_only = reason, joins_trunk, pool_only


def _elementwise_chain(data: gs.Tensor, opset: int,
                       graph_outputs: FrozenSet[str]) -> Tuple[gs.Tensor, Tuple[PassThrough, ...]]:
    """Walk back from `data` over a chain of ops that act on each element alone with scalar constants (the
    Q/DQ pair a QDQ model puts after its Flatten, Dropout, Relu...): they commute with flattenings and
    transposes. Returns the tensor the chain starts from and its ops in graph order."""
    steps: List[PassThrough] = []
    context = HeadContext(features=0, spatial_rank=0, opset=opset, graph_outputs=graph_outputs)
    while True:
        node = producer(data)
        found = entry(node) if node is not None else None
        if node is None or found is None or found.head is None or len(data.outputs) != 1 or data.name in graph_outputs \
                or len(node.inputs) == 0 or node.inputs[0].name == "" or fact(node, "linear"):
            break
        step = found.head(node, 0, context)
        if not isinstance(step, PassThrough) or step.constants or step.attrs or step.action == AXIS_LAST \
                or step.form != FLAT:
            break
        steps.append(step)
        data = node.inputs[0]
    return data, tuple(reversed(steps))


def _first_layer(node: gs.Node, opset: int,
                 graph_outputs: FrozenSet[str]) -> Tuple[Flattening, Tuple[PassThrough, ...], LinearLayer]:
    data = node.inputs[0]
    flat, prelude = _elementwise_chain(data, opset, graph_outputs)
    source = producer(flat)
    if source is None:
        raise _NotAHead(f"input '{data.name}' is not a flattened spatial tensor (it is a graph input or a constant)")
    matcher = fact(source, "flattening")
    flattening = matcher(source, opset) if matcher is not None else None
    if flattening is None and fact(source, "global_pool"):
        axes = sorted(axes_of(source) or ())
        raise _NotAHead(f"input '{data.name}' comes from {source.op} '{source.name}' over axes {axes}, which is not a "
                       "global pool of a feature map: not the spatial axes of a channels-first map, nor of a "
                       "channels-last one whose layout could be followed from the image input")
    if flattening is None:
        raise _NotAHead(f"input '{data.name}' is not a flattened spatial tensor "
                       f"(it comes from {source.op} '{source.name}')")
    if isinstance(flattening, Decline):
        raise _NotAHead(flattening.reason)
    first = match_linear(node, data, flattening.features, graph_outputs)
    if not isinstance(first, LinearLayer):
        raise _NotAHead(first.reason if first else f"{node.op} '{node.name}' is not a linear layer")
    return flattening, flattening.prelude + prelude, first


def _follow(graph: gs.Graph, starts: Mapping[str, Tuple[int, str]], members: Set[str],
            base: HeadContext) -> Tuple[Tuple[Step, ...], Dict[str, str]]:
    """Every node downstream of the head tensors in `starts` (name -> (features, form)), read by its registry
    entry in graph (topological) order. Returns the steps and the form of every head tensor."""
    features = {name: k for name, (k, _) in starts.items()}
    forms = {name: form for name, (_, form) in starts.items()}
    steps: List[Step] = []
    for node in graph.nodes:
        if node.name in members:
            continue
        head_inputs = [i for i, t in enumerate(node.inputs) if t.name in features]
        if not head_inputs:
            continue
        index = head_inputs[0]
        name = node.inputs[index].name
        context = replace(base, features=features[name], form=forms[name], head_features=features,
                          head_forms=forms)
        found = entry(node)
        step: Union[Step, Decline, None] = found.head(node, index, context) if found and found.head else None
        joins = any(t.name and t.name not in features and not isinstance(t, gs.Constant) for t in node.inputs)
        if step is None:
            raise _NotAHead(f"'{name}' feeds {node.op} '{node.name}', which has no per-location form; the head would "
                           "change shape there", joins)
        if isinstance(step, Decline):
            raise _NotAHead(step.reason, joins)
        steps.append(step)
        if isinstance(step, LinearLayer):
            features[step.output], forms[step.output] = step.features, FLAT
        else:
            features[step.output] = step.out_features or features[name]
            forms[step.output] = step.form
        members.update(step.nodes)
    return tuple(steps), forms


def _pooled_head(graph: gs.Graph, pool: GlobalPool, base: HeadContext) -> Tuple[Tuple[int, ...], Tuple[Step, ...],
                                                                              Dict[str, str]]:
    """(source shape, steps, forms) of the head that starts at a global pool; _NotAHead if there is none."""
    shape = spatial_source_shape(graph.tensors()[pool.source])
    if isinstance(shape, Decline):
        raise _NotAHead(shape.reason)
    context = replace(base, spatial_rank=len(shape) - 1)
    steps, forms = _follow(graph, {pool.output: (shape[0], pool.form)}, {pool.node}, context)
    if pool.mode.name == KEEP_POOL and \
            not any(isinstance(s, LinearLayer) or (isinstance(s, PassThrough) and s.out_features) for s in steps):
        # A pool that only feeds outputs (SqueezeNet's classifier: a 1x1 Conv, then the pool; a feature
        # extractor) has nothing to keep: the model takes any size already. It is a head only when a map is
        # asked for (--pooling window or none); like a pool inside the trunk, it is left alone without a
        # reason for later layers to inherit.
        raise _NotAHead(f"no linear layer or 1x1 Conv follows {pool.op} '{pool.node}'", joins_trunk=True,
                       pool_only=True)
    return shape, steps, forms


def _downstream_tensors(tensor: gs.Tensor) -> List[str]:
    """Names of `tensor` and every tensor computed from it."""
    found, seen, stack = [tensor.name], set(), [tensor]
    while stack:
        for node in stack.pop().outputs:
            if id(node) not in seen:
                seen.add(id(node))
                found.extend(t.name for t in node.outputs)
                stack.extend(node.outputs)
    return found


def _downstream_linears(tensor: gs.Tensor) -> List[str]:
    """Names of the Gemm/MatMul nodes that depend on `tensor`."""
    found, seen, stack = [], set(), [tensor]
    while stack:
        for node in stack.pop().outputs:
            if id(node) in seen:
                continue
            seen.add(id(node))
            if fact(node, "linear"):
                found.append(node.name)
            stack.extend(node.outputs)
    return found


def _output_layouts(graph: gs.Graph, source: str, outputs: Sequence[str], output_layout: str) -> Dict[str, str]:
    """The layout each output is given in: the one asked for, or (AUTO) the layout of the image input."""
    layout = output_layout
    if layout == AUTO:
        tensors = graph.tensors()
        feeding = {input_layout(tensors[name]) for name in upstream_inputs(graph, [source])}
        layout = CHANNELS_LAST if feeding == {CHANNELS_LAST} else CHANNELS_FIRST
    return {name: layout for name in outputs}


def _after_attention(graph: gs.Graph) -> Dict[str, str]:
    """Every tensor computed from a product of two computed tensors (a transformer's attention), mapped to
    the first such MatMul on its way. The graph is in topological order."""
    found: Dict[str, str] = {}
    for node in graph.nodes:
        reached = next((found[t.name] for t in node.inputs if t.name in found), None)
        if reached is None and is_op(node, "MatMul") and len(node.inputs) == 2 and \
                not any(isinstance(t, gs.Constant) or not t.inputs for t in node.inputs):
            reached = f"MatMul '{node.name}'"
        if reached is not None:
            found.update(dict.fromkeys((t.name for t in node.outputs), reached))
    return found


class _Search:
    """The state of one search for heads: what each Gemm/MatMul turned out to be."""

    def __init__(self, graph: gs.Graph, output_layout: str, pooling: str) -> None:
        self.graph, self.output_layout, self.mode = graph, output_layout, MODES[pooling]
        self.graph_outputs = frozenset(t.name for t in graph.outputs)
        self.base = HeadContext(features=0, spatial_rank=0, opset=int(graph.opset or 1),
                                graph_outputs=self.graph_outputs)
        self.heads: List[HeadPlan] = []
        self.claimed: Dict[str, str] = {}  # node -> "" when in a head, else why its linear layer is not converted
        self.skipped: List[Skipped] = []
        self.attended = _after_attention(graph)
        #: Global pools whose head could not be read, and why; the linear layers after them, and that reason.
        self.pool_declines: Dict[str, str] = {}
        #: Kept global pools that feed outputs with no layer after them (see `_pooled_head`).
        self.output_pools: List[str] = []
        self.after_declined_pool: Dict[str, str] = {}
        #: Tensors computed from such a pool's output -> the pool (a head reading one has no map of its own).
        self.collapsed_by: Dict[str, str] = {}

    def head(self, steps: Tuple[Step, ...], forms: Mapping[str, str], source: str, **fields) -> Optional[HeadPlan]:
        outputs = tuple(t.name for t in self.graph.outputs if t.name in forms)
        if not outputs:
            return None
        head = HeadPlan(source=source, steps=steps, outputs=outputs,
                        output_layouts=_output_layouts(self.graph, source, outputs, self.output_layout),
                        output_forms={name: forms[name] for name in outputs}, **fields)
        self.heads.append(head)
        self.claimed.update({name: "" for name in head.nodes})
        return head

    def decline(self, start: gs.Tensor, where: str, reason: str) -> None:
        """The later layers of a declined head are not heads of their own: they take its reason."""
        for later in _downstream_linears(start):
            self.claimed.setdefault(later, f"part of the head starting at {where}, which was not converted: {reason}")

    def pooled(self, node: gs.Node) -> None:
        pool = global_pool(node, self.mode)
        if pool is None:
            return
        try:
            shape, steps, forms = _pooled_head(self.graph, pool, self.base)
        except _NotAHead as declined:
            if declined.pool_only:
                self.output_pools.append(f"{node.op} '{node.name}'")
            if not declined.joins_trunk:
                # Not claimed: the linear layers after it may still make a flattening head (the pool then
                # stays in the trunk), but where they do not, this is the reason to give.
                where = f"{node.op} '{node.name}'"
                self.pool_declines[node.name] = declined.reason
                for later in _downstream_linears(node.outputs[0]):
                    self.after_declined_pool.setdefault(
                        later, f"part of the head starting at {where}, which was not converted: {declined.reason}")
                for tensor in _downstream_tensors(node.outputs[0]):
                    self.collapsed_by.setdefault(tensor, node.name)
            return
        if self.head(steps, forms, pool.source, source_shape=shape, pool=pool) is None:
            self.decline(node.outputs[0], f"{node.op} '{node.name}'", "its result reaches no graph output")

    def flattened(self, node: gs.Node) -> None:
        first = None
        try:
            if node.inputs[0].name in self.attended:
                raise _NotAHead(f"the model has no convolutional trunk: its input reaches '{node.name}' through "
                               f"attention ({self.attended[node.inputs[0].name]} multiplies two computed tensors), so "
                               "there is no feature map to slide the head over; only CNN classifiers convert")
            flattening, prelude, first = _first_layer(node, self.base.opset, self.graph_outputs)
            context = replace(self.base, features=first.features, spatial_rank=len(flattening.spatial_shape))
            members = set(first.nodes)
            steps, forms = _follow(self.graph, {first.output: (first.features, FLAT)}, members, context)
        except _NotAHead as declined:
            self.skipped.append(Skipped(node.name, node.op, self.after_declined_pool.get(node.name, declined.reason)))
            if first is not None:
                self.decline(self.graph.tensors()[first.output], f"'{node.name}'", declined.reason)
            return
        if self.head(steps, {first.output: FLAT, **forms}, flattening.source, source_shape=flattening.source_shape,
                     flattening=flattening, first=first, prelude=prelude,
                     pooled_by=self.collapsed_by.get(flattening.source, "")) is None:
            self.skipped.append(Skipped(node.name, node.op, "its result reaches no graph output"))


def find_heads(graph: gs.Graph, options: Options = Options()) -> Plan:
    """Plan the conversion of every head in `graph` (which is sorted, not otherwise changed), as `options`
    ask: `output_layout` is CHANNELS_FIRST ([N, K, *spatial]), CHANNELS_LAST ([N, *spatial, K]) or AUTO:
    channels last for heads on an NHWC image input (tf2onnx), channels first otherwise; `pooling` says what
    becomes of a global pooling that starts a head (see `plan.MODES`).
    """
    output_layout, pooling = options.output_layout, options.pooling
    if output_layout not in (AUTO,) + LAYOUTS:
        raise ValueError(f"output_layout must be one of {', '.join((AUTO,) + LAYOUTS)}, not {output_layout!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    graph.toposort()
    search = _Search(graph, output_layout, pooling)
    for node in list(graph.nodes):
        if node.name not in search.claimed:
            search.pooled(node)
    for node in list(graph.nodes):
        if fact(node, "linear") and node.name not in search.claimed:
            search.flattened(node)
    # Later layers of a declined head are reported with that head's reason, not their own.
    for node in graph.nodes:
        reason = search.claimed.get(node.name)
        if fact(node, "linear") and reason:
            search.skipped.append(Skipped(node.name, node.op, reason))
    order = {node.name: index for index, node in enumerate(graph.nodes)}
    skipped = tuple(sorted(search.skipped, key=lambda s: order.get(s.node, -1)))
    tensors = graph.tensors()
    sources = [h.source for h in search.heads]
    trunk_inputs = upstream_inputs(graph, sources)
    plan = Plan(heads=tuple(search.heads), skipped=skipped, trunk_inputs=trunk_inputs,
                opset=search.base.opset, input_layouts={name: input_layout(tensors[name]) for name in trunk_inputs},
                pool_declines=dict(search.pool_declines), output_pools=tuple(search.output_pools),
                parameter_inputs=upstream_inputs(graph, sources, True))
    logger.debug("plan: %d heads, %d skipped", len(plan.heads), len(plan.skipped))
    return plan

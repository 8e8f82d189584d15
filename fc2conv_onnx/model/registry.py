"""The op registry: one entry per ONNX op, holding everything the package knows about that op.

Every stage asks here, never compares op types itself (`is_op`, `entry`, `fact`): what an op is in a head
(a linear layer, a flattening, a global pool, a per-location step), what it is in the trunk (local, a window,
a join...), whether normalize may fold it, whether its output is shaped by its inputs' values, from which opset
its pool takes dilations, whether it makes scores. An exporter spelling
the tool refuses is then a missing or wrong entry, in one place, not an op known in one list and not another.

The facts are data, in the table at the end of this module (as OnnxSlim keeps its patterns' opset ranges).
The functions that read a node in context are attached by the modules that define them, with `attach`:
head handlers (`plan.ops`), trunk kinds (`read.trunk_kinds`), flattening matchers (`plan.heads`). The
registry is complete by construction: the first time an attached slot is read, from whatever entry point,
the module that attaches it is imported (`ATTACHED_BY`), so no reader depends on what happened to be imported
before it; and a run that reads only data facts (detect, heatmap) imports none of them, nor onnx. How an op
computes its values is onnx's own reference evaluator's (`read.reference`): folding constants and the shape
arithmetic before a Reshape both run it. This module imports nothing from the package, so every module can ask
it.
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Set

#: How an op moves the geometry in the trunk (`OpEntry.trunk`).
LOCAL = "local"  # acts on each location alone
WINDOW = "window"  # reads a window: kernel, stride, dilation, pads
PAD = "pad"
JOIN = "join"  # Concat of branches along the channels
GLOBAL = "global"  # reads every location: each cell then depends on the whole input
LAST_AXIS = "last_axis"  # acts along the last axis alone: per location on a channels-last map only
MOVE_CHANNELS = "move_channels"  # a Transpose of the channels last, or back: per location
REGROUP = "regroup"  # a Reshape or Transpose that may only regroup the leading (batch, channel) dims
SHAPE_OF = "shape_of"  # reads only the shape of a map (Shape, Size): its output is not a feature map
CHANNEL_SLICE = "channel_slice"  # a Slice or Split along constant axes: per location on the channels alone


#: Each attached slot, and the module (below this one in the package) that attaches its functions.
ATTACHED_BY = {"head": "plan.ops", "flattening": "plan.heads", "trunk": "read.trunk_kinds"}
_completed: Set[str] = set()


#: Held while a slot is completed: another thread waits until the functions are attached, rather than reading
#: a slot half done; the thread doing it may read the slot again meanwhile (`_importing`).
_completing = threading.RLock()
_importing: Set[str] = set()


def _complete(slot: str) -> None:
    """Import the module that attaches `slot`'s functions, once (it attaches them as it is imported)."""
    if slot in _completed:
        return
    with _completing:
        if slot in _completed or slot in _importing:
            return
        _importing.add(slot)
        try:
            importlib.import_module(f"{__package__.rpartition('.')[0]}.{ATTACHED_BY[slot]}")
        finally:
            _importing.discard(slot)
        _completed.add(slot)


@dataclass
class OpEntry:
    """What the package knows about one op. The data fields are set once, by the table below; the
    functions (`head`, `flattening`, and `trunk` where it depends on the node) are attached by the modules
    that define them, and reading one completes the registry first."""

    op: str
    #: Its kind in the trunk (LOCAL, WINDOW, ...), or a function of the node giving it; None: unknown.
    trunk_kind: Any = None
    #: A LOCAL op whose inputs after the first are per-channel parameters by definition, not broadcast
    #: operands that could vary over the spatial axes.
    parameters: bool = False
    #: Acts on each element alone: per location in the trunk, unchanged in a head.
    elementwise: bool = False
    #: Gemm / MatMul: a head's first layer reads a flattened map through it.
    linear: bool = False
    #: "average" or "max": the op pools every spatial axis (Global*), or the axes it is given (Reduce*).
    global_pool: Optional[str] = None
    #: Acts on each element (or channel) alone, so an NHWC image may pass it before its Transpose to NCHW.
    preprocessing: bool = False
    #: The opset from which the op (a windowed pool) takes `dilations`.
    dilations_since: Optional[int] = None
    #: Its output's shape follows the *values* of inputs besides the data (Reshape's target, Resize's sizes):
    #: it may bake the training size into the trunk.
    shaped_by_inputs: bool = False
    #: Normalize may fold it when its inputs are constants (not: random ops; the Q/DQ that a QDQ model keeps).
    folds: bool = True
    #: QuantizeLinear / DequantizeLinear.
    quantization: bool = False
    #: Makes class scores from logits (Softmax, Sigmoid): the output apps draw or detect on.
    score: bool = False
    #: Only the shape of its input is read (Shape): the shape arithmetic feeds that input, never computes it.
    reads_shape_only: bool = False
    #: Moves or retypes values without computing new ones (Reshape, Transpose, Squeeze, Cast...): a single dim
    #: of shape arithmetic passes through unchanged, and a score behind them is still a score.
    keeps_values: bool = False
    #: Attached: what the op becomes in a head: handler(node, index, context) -> Step | Decline.
    head_handler: Optional[Callable] = None
    #: Attached: matcher(node, opset) -> Flattening | Decline | None, when a first linear layer reads the op's
    #: output.
    flattening_matcher: Optional[Callable] = None

    @property
    def head(self) -> Optional[Callable]:
        _complete("head")
        return self.head_handler

    @property
    def flattening(self) -> Optional[Callable]:
        _complete("flattening")
        return self.flattening_matcher

    @property
    def trunk(self) -> Any:
        _complete("trunk")
        return self.trunk_kind


#: Where `attach` puts each slot's function.
_SLOT_FIELDS = {"head": "head_handler", "flattening": "flattening_matcher", "trunk": "trunk_kind"}


REGISTRY: Dict[str, OpEntry] = {}


def declare(*ops: str, trunk: Any = None, **facts: Any) -> None:
    """The facts of each op in `ops` (`trunk`: its kind in the trunk); an op is declared once."""
    for op in ops:
        if op in REGISTRY:
            raise ValueError(f"op {op} is declared twice")
        REGISTRY[op] = OpEntry(op, trunk_kind=trunk, **facts)


def attach(what: str, *ops: str, value: Optional[Callable] = None):
    """Attach a function (`what`: "head", "trunk" or "flattening") to declared ops; usable as a decorator, or
    with `value`. An op the registry does not declare is a KeyError naming it."""
    if what not in _SLOT_FIELDS:
        raise ValueError(f"cannot attach {what!r}")

    def attached(function: Callable) -> Callable:
        for op in ops:
            known = lookup(op)
            if getattr(known, _SLOT_FIELDS[what]) is not None:
                raise ValueError(f"op {op} has a {what} already")
            setattr(known, _SLOT_FIELDS[what], function)
        return function

    return attached(value) if value is not None else attached


def lookup(op: str) -> OpEntry:
    """The entry of the standard op `op`; a KeyError naming it when the registry does not declare it."""
    try:
        return REGISTRY[op]
    except KeyError:
        raise KeyError(f"op {op!r} is not in the registry") from None


def in_default_domain(node: Any) -> bool:
    """True for standard ONNX ops: graphsurgeon reports the default domain as None, protobuf as ""."""
    return getattr(node, "domain", None) in (None, "", "ai.onnx")


def _op_of(node: Any) -> str:
    return node.op if hasattr(node, "op") else node.op_type  # a graphsurgeon Node or a NodeProto


def entry(node: Any) -> Optional[OpEntry]:
    """The registry entry of a standard ONNX op (a graphsurgeon Node or a NodeProto), or None."""
    return REGISTRY.get(_op_of(node)) if node is not None and in_default_domain(node) else None


def is_op(node: Any, *ops: str) -> bool:
    """Whether `node` is one of the standard ops `ops`, each of which must be declared here: the one place an
    op type is compared, so a name the registry does not know is a bug, not a quiet False."""
    unknown = [op for op in ops if op not in REGISTRY]
    if unknown:
        raise KeyError(f"ops {unknown} are not in the registry")
    return node is not None and in_default_domain(node) and _op_of(node) in ops


def fact(node: Any, name: str) -> Any:
    """A data fact of `node`'s entry (see `OpEntry`), or None for an op the registry does not know."""
    found = entry(node)
    return getattr(found, name) if found is not None else None


def ops_with(name: str) -> tuple:
    """The op types whose entry has the fact `name` set (for messages and tests)."""
    return tuple(op for op, known in REGISTRY.items() if getattr(known, name))


# --------------------------------------------------------------------------------------------- the table
# Elementwise ops: per location in the trunk, unchanged in a head (with scalar constants beside the head).
declare("Relu", "LeakyRelu", "Tanh", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Softplus", "Softsign",
        "Gelu", "Abs", "Neg", "Exp", "Erf", "ThresholdedRelu", "Mish", "Sqrt", "Reciprocal", "Log", "Floor", "Ceil",
        "Round", "Sign", "Pow", trunk=LOCAL, elementwise=True)
declare("Sigmoid", trunk=LOCAL, elementwise=True, score=True)
declare("Identity", trunk=LOCAL, elementwise=True, preprocessing=True, keeps_values=True)
declare("Cast", trunk=LOCAL, elementwise=True, preprocessing=True, keeps_values=True)
declare("Clip", trunk=LOCAL, elementwise=True, parameters=True)  # its bounds are scalars
declare("Dropout", trunk=LOCAL, parameters=True)
declare("PRelu", trunk=LOCAL, parameters=True)
declare("Add", "Sub", "Mul", "Div", trunk=LOCAL, preprocessing=True)
declare("Max", "Min", "Sum", "Mean", "Where", trunk=LOCAL)
declare("BatchNormalization", "LRN", trunk=LOCAL, parameters=True)
declare("QuantizeLinear", "DequantizeLinear", trunk=LOCAL, parameters=True, preprocessing=True, folds=False,
        quantization=True)
declare("Softmax", score=True)
declare("LogSoftmax", "Hardmax")
declare("LayerNormalization", parameters=True)
declare("Gemm", linear=True)
declare("MatMul", linear=True)
declare("Conv", trunk=WINDOW)
declare("MaxPool", trunk=WINDOW, dilations_since=10)
declare("AveragePool", trunk=WINDOW, dilations_since=19)
declare("LpPool", trunk=WINDOW, dilations_since=18)
declare("Pad", trunk=PAD, shaped_by_inputs=True)
declare("Shape", trunk=SHAPE_OF, reads_shape_only=True)
declare("Size", trunk=SHAPE_OF)
declare("Slice", "Split", shaped_by_inputs=True)
declare("Concat")
declare("Transpose", keeps_values=True)
declare("Flatten", keeps_values=True)
declare("Squeeze", "Unsqueeze", keeps_values=True)
declare("Reshape", trunk=REGROUP, shaped_by_inputs=True, keeps_values=True)
declare("GlobalAveragePool", trunk=GLOBAL, global_pool="average")
declare("GlobalMaxPool", trunk=GLOBAL, global_pool="max")
declare("GlobalLpPool", trunk=GLOBAL)  # the p-norm has no windowed twin that the head could slide
declare("ReduceMean", global_pool="average")
declare("ReduceMax", global_pool="max")
declare("ReduceMin", "ReduceSum", "ReduceL2", "ReduceSumSquare", "ReduceProd")
# Shape arithmetic and ops met on the way (read by the shape arithmetic, normalize, trunk_sizes, apps).
declare("Gather", "Constant")
declare("Expand", "Tile", "Resize", "Upsample", "ConstantOfShape", "Range", "Crop", shaped_by_inputs=True)
declare("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
        folds=False)

"""The op registry owns every op: no module compares op types itself, and each entry that a head may pass
through has a test here (onnxscript's rule tests: it matches its spelling, the rewrite gives the same numbers in
onnxruntime, and what it declines it declines with its reason)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import pytest

import fc2conv_onnx
from fc2conv_onnx.model import registry
from fc2conv_onnx.model.registry import REGISTRY

from builders import ModelBuilder, trunk
from equivalence import assert_equivalent

PACKAGE = Path(fc2conv_onnx.__file__).parent
K = 6  # features of the head tensor each spelling reads
F = 8 * 4 * 4  # features of the trunk's map


def _op_names_in(node: ast.AST) -> list:
    return [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in REGISTRY]


def test_no_module_but_the_registry_compares_op_types_or_lists_them():
    """An op type compared (`node.op == "Reshape"`, `op_type in (...)`) or listed in a module-level collection
    outside registry.py is op knowledge the registry does not own. (Building a node by its op type is not.)"""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "registry.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and _op_names_in(node):
                found.append(f"{path.name}:{node.lineno} compares {_op_names_in(node)}")
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node in tree.body and \
                    isinstance(node.value, (ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Call)) and \
                    len(_op_names_in(node.value)) > 1:
                found.append(f"{path.name}:{node.lineno} lists {_op_names_in(node.value)}")
            if isinstance(node, ast.Attribute) and node.attr == "startswith" and isinstance(node.value, ast.Attribute) \
                    and node.value.attr in ("op", "op_type"):
                found.append(f"{path.name}:{node.lineno} reads an op type's prefix")
    assert not found, "\n".join(found)


def test_asking_for_an_op_the_registry_does_not_know_is_an_error():
    node = type("Node", (), {"op": "Relu", "domain": ""})()
    assert registry.is_op(node, "Relu")
    with pytest.raises(KeyError, match="Rlu"):
        registry.is_op(node, "Rlu")
    with pytest.raises(KeyError):
        registry.attach("head", "NotAnOp", value=lambda *args: None)
    with pytest.raises(ValueError, match="declared twice"):
        registry.declare("Relu")


def test_an_op_of_another_domain_is_never_a_standard_one():
    node = type("Node", (), {"op": "Reshape", "domain": "com.example"})()
    assert not registry.is_op(node, "Reshape") and registry.entry(node) is None


def test_the_facts_agree_with_each_other():
    """What the old lists disagreed on: a global pool that starts a head must read every location in the trunk
    too, a linear layer must have a head handler, a score op must be one a head passes through."""
    for op, known in REGISTRY.items():
        if known.global_pool:
            assert known.trunk is not None and known.head is None or known.op.startswith("Reduce"), op
        if known.linear:
            assert known.head is not None, op
        if known.score or known.preprocessing:
            assert known.head is not None, op
        if known.dilations_since:
            assert known.trunk == registry.WINDOW, op
    assert REGISTRY["GlobalLpPool"].global_pool is None  # no windowed twin for the head to slide: trunk only


# ------------------------------------------------------------------------------------ spellings, one per op
Spelling = Callable[[ModelBuilder, str], Tuple[str, int]]


def _unary(op: str, **attrs) -> Spelling:
    return lambda b, x: (b.node(op, [x], **attrs), K)


def _positive(op: str) -> Spelling:
    """Ops defined on positive values: on |x| + 1."""
    return lambda b, x: (b.node(op, [b.node("Add", [b.node("Abs", [x]), b.const(b.fresh("one"),
                                                                                np.float32(1))])]), K)


def _per_feature(op: str) -> Spelling:
    return lambda b, x: (b.node(op, [x, b.const(b.fresh("c"), np.linspace(0.5, 1.5, K, dtype=np.float32))]), K)


def _batchnorm(b, x):
    params = [b.const(b.fresh(n), v.astype(np.float32)) for n, v in
              (("s", np.linspace(0.5, 1.5, K)), ("b", np.linspace(-1, 1, K)), ("m", np.linspace(-0.2, 0.2, K)),
               ("v", np.linspace(0.5, 2, K)))]
    return b.node("BatchNormalization", [x] + params), K


def _qdq(b, x):
    scale, zero = b.const(b.fresh("scale"), np.float32(0.05)), b.const(b.fresh("zero"), np.uint8(128))
    return b.node("DequantizeLinear", [b.node("QuantizeLinear", [x, scale, zero]), scale, zero]), K


def _layer_norm(b, x):
    return b.node("LayerNormalization", [x, b.const(b.fresh("g"), np.linspace(0.5, 1.5, K, dtype=np.float32)),
                                         b.const(b.fresh("b"), np.zeros(K, np.float32))], axis=-1), K


def _reduce(op: str) -> Spelling:
    return lambda b, x: (b.node(op, [x, b.const(b.fresh("axes"), np.array([1]))], keepdims=1), 1)


def _clip(b, x):
    return b.node("Clip", [x, b.const(b.fresh("lo"), np.float32(-0.5)), b.const(b.fresh("hi"), np.float32(0.5))]), K


def _pow(b, x):
    return b.node("Pow", [x, b.const(b.fresh("two"), np.float32(2))]), K


def _prelu(b, x):
    return b.node("PRelu", [x, b.const(b.fresh("slope"), np.linspace(0.1, 0.3, K, dtype=np.float32))]), K


def _cast(b, x):
    return b.node("Cast", [b.node("Cast", [x], to=11)], to=1), K  # to double and back


def _swish(b, x):
    return b.node("Mul", [x, b.node("Sigmoid", [x])]), K  # two head tensors


#: Every op a flattened head may pass through, spelled as exporters write it after a first linear layer.
FLAT_SPELLINGS: Dict[str, Spelling] = {
    **{op: _unary(op) for op in ("Relu", "Sigmoid", "Tanh", "Softplus", "Softsign", "Identity", "Abs", "Neg",
                                 "Erf", "Floor", "Ceil", "Round", "Sign", "HardSwish", "Mish", "Gelu")},
    "LeakyRelu": _unary("LeakyRelu", alpha=0.2), "Elu": _unary("Elu", alpha=0.7), "Selu": _unary("Selu"),
    "Celu": _unary("Celu", alpha=0.5), "HardSigmoid": _unary("HardSigmoid", alpha=0.3, beta=0.4),
    "ThresholdedRelu": _unary("ThresholdedRelu", alpha=0.1), "Exp": _unary("Exp"),
    "Sqrt": _positive("Sqrt"), "Reciprocal": _positive("Reciprocal"), "Log": _positive("Log"),
    "Cast": _cast, "Pow": _pow, "Clip": _clip, "Dropout": _unary("Dropout"), "PRelu": _prelu,
    **{op: _per_feature(op) for op in ("Add", "Sub", "Mul", "Div")},
    "Max": lambda b, x: (b.node("Max", [x, b.const(b.fresh("floor"), np.float32(0.1))]), K),  # jax2onnx's clamp
    "Min": lambda b, x: (b.node("Min", [b.node("Relu", [x]), x]), K),  # of two head tensors
    "BatchNormalization": _batchnorm, "QuantizeLinear": _qdq, "DequantizeLinear": _qdq,
    "Softmax": _unary("Softmax", axis=1), "LogSoftmax": _unary("LogSoftmax", axis=1),
    "Hardmax": _unary("Hardmax", axis=1), "LayerNormalization": _layer_norm,
    **{op: _reduce(op) for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceSumSquare")},
    "Gemm": lambda b, x: (b.gemm(x, K, K, bias_shape=(K,)), K), "MatMul": lambda b, x: (b.matmul(x, K, K), K),
    "swish (Mul of two head tensors)": _swish,
}
#: Head ops that only read a pooled map (a 1x1 Conv, Transposes of the channels, flattenings): tested on one.
POOLED_ONLY = {"Conv", "Transpose", "Flatten", "Squeeze", "Reshape"}


def flat_head(spelling: Spelling, opset: int = 20):
    b = ModelBuilder(opset=opset, seed=4)
    x = trunk(b, b.input("image", ["N", 3, 16, 16]), [3, 4, 8], rank=2)
    hidden = b.gemm(b.node("Flatten", [x], axis=1), F, K, bias_shape=(K,))
    out, features = spelling(b, hidden)
    b.gemm(out, features, 3, bias_shape=(3,), output=b.output("scores", ["N", 3]))
    return b.build("spelling")


def test_every_op_with_a_head_handler_has_a_spelling_here():
    handled = {op for op, known in REGISTRY.items() if known.head is not None}
    assert handled == (set(FLAT_SPELLINGS) & set(REGISTRY)) | POOLED_ONLY


@pytest.mark.parametrize("op", sorted(FLAT_SPELLINGS))
def test_each_head_op_rewrites_to_the_same_numbers(op):
    original = flat_head(FLAT_SPELLINGS[op])
    conversion = fc2conv_onnx.convert_with_report(original)
    head, = conversion.report.plan.heads
    assert len(head.steps) >= 2  # the op itself was read, then the last layer
    assert_equivalent(original, conversion.model, sizes=[(1, 3, 27, 21)], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("flattening", ["Squeeze", "Reshape", "Flatten"])
def test_the_pooled_map_ops_rewrite_to_the_same_numbers(flattening):
    """GlobalAveragePool -> Transpose to channels last -> Transpose back -> Conv 1x1 -> a flattening -> Gemm:
    each op of a pooled map, in every mode."""
    b = ModelBuilder(opset=13, seed=6)
    x = trunk(b, b.input("image", ["N", 3, 16, 16]), [3, 4, 8], rank=2)
    pooled = b.node("GlobalAveragePool", [x])
    last = b.node("Transpose", [pooled], perm=[0, 2, 3, 1])
    first = b.node("Transpose", [last], perm=[0, 3, 1, 2])
    conv = b.node("Conv", [first, b.weight("pw", (K, 8, 1, 1)), b.weight("pb", (K,), fan_in=1)], kernel_shape=[1, 1])
    operand = {"Squeeze": [b.const("axes", np.array([2, 3]))], "Reshape": [b.const("shape", np.array([0, -1]))],
               "Flatten": []}[flattening]
    flat = b.node(flattening, [conv] + operand)
    b.gemm(flat, K, 3, bias_shape=(3,), output=b.output("scores", ["N", 3]))
    original = b.build("pooled_ops")
    for mode in ("keep", "window", "none"):
        conversion = fc2conv_onnx.convert_with_report(original, pooling=mode)
        head, = conversion.report.plan.heads
        assert [s.op for s in head.steps] == ["Transpose", "Transpose", "Conv", flattening, "Gemm"]
        if mode == "keep":
            assert_equivalent(original, conversion.model)
        else:
            assert_equivalent(original, conversion.model, sizes=[(1, 3, 24, 20)],
                              window=(1, 1) if mode == "none" else None)


def _declined(head: Spelling, opset: int = 20) -> str:
    skipped = fc2conv_onnx.inspect(flat_head(head, opset)).plan.skipped
    assert skipped, "expected the head to be declined"
    return skipped[0].reason


@pytest.mark.parametrize("spelling, reason", [
    (_unary("Softmax", axis=0), "Softmax .* runs over axis 0, not over the features"),
    (lambda b, x: (b.node("BatchNormalization", [x] + [b.const(b.fresh(n), np.ones(K, np.float32))
                                                       for n in "sbmv"], n_out=3, training_mode=1), K),
     "training mode"),
    (lambda b, x: (b.node("Add", [x, b.const("rows", np.ones((2, K), np.float32))]), K),
     "not a constant of one value per feature"),
    (lambda b, x: (b.node("PRelu", [x, b.const("slope", np.ones((2, K), np.float32))]), K),
     "slope of PRelu .* is not a constant with one value per feature"),
    (lambda b, x: (b.node("ReduceMean", [x, b.const("axes", np.array([0]))], keepdims=1), K),
     "does not reduce the features alone"),
    (lambda b, x: (b.node("DequantizeLinear", [b.node("QuantizeLinear", [x, b.const("s", np.full(2, 0.1, np.float32)),
                                                                         b.const("z", np.zeros(2, np.uint8))], axis=0),
                                               b.const("s2", np.float32(0.1))]), K),
     "quantizes with 2 scales, not one or one per feature"),
    (lambda b, x: (b.node("Transpose", [x], perm=[1, 0]), K), "does more than move the channels"),
    (lambda b, x: (b.node("TopK", [x, b.const("k", np.array([2]))], n_out=2), 2), "has no per-location form"),
])
def test_what_an_entry_declines_it_declines_with_its_reason(spelling, reason):
    import re

    assert re.search(reason, _declined(spelling)), _declined(spelling)


# ----------------------------------------------------------------------------------------- the trunk's ops
C = 4  # channels of the map each trunk spelling reads


def _trunk_unary(op: str, **attrs) -> Callable[[ModelBuilder, str], str]:
    return lambda b, x: b.node(op, [x], **attrs)


def _trunk_positive(op: str) -> Callable[[ModelBuilder, str], str]:
    return lambda b, x: b.node(op, [b.node("Add", [b.node("Abs", [x]), b.const(b.fresh("one"), np.float32(1))])])


def _per_channel(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32).reshape(C, 1, 1)


TRUNK_SPELLINGS: Dict[str, Callable[[ModelBuilder, str], str]] = {
    **{op: _trunk_unary(op) for op in ("Relu", "Sigmoid", "Tanh", "Softplus", "Softsign", "Identity", "Abs", "Neg",
                                       "Erf", "Floor", "Ceil", "Round", "Sign", "HardSwish", "Mish", "Gelu", "Exp",
                                       "Selu", "Dropout")},
    "LeakyRelu": _trunk_unary("LeakyRelu", alpha=0.2), "Elu": _trunk_unary("Elu"), "Celu": _trunk_unary("Celu"),
    "HardSigmoid": _trunk_unary("HardSigmoid"), "ThresholdedRelu": _trunk_unary("ThresholdedRelu", alpha=0.1),
    "Sqrt": _trunk_positive("Sqrt"), "Reciprocal": _trunk_positive("Reciprocal"), "Log": _trunk_positive("Log"),
    "Cast": lambda b, x: b.node("Cast", [b.node("Cast", [x], to=11)], to=1),
    "Pow": lambda b, x: b.node("Pow", [x, b.const(b.fresh("two"), np.float32(2))]),
    "Clip": lambda b, x: b.node("Clip", [x, b.const(b.fresh("lo"), np.float32(-0.5)),
                                         b.const(b.fresh("hi"), np.float32(0.5))]),
    "PRelu": lambda b, x: b.node("PRelu", [x, b.const(b.fresh("slope"), _per_channel(np.linspace(0.1, 0.4, C)))]),
    **{op: (lambda op: lambda b, x: b.node(op, [x, b.const(b.fresh("c"), _per_channel(np.linspace(0.5, 1.5, C)))]))(op)
       for op in ("Add", "Sub", "Mul", "Div")},
    **{op: (lambda op: lambda b, x: b.node(op, [x, b.node("Relu", [x])]))(op) for op in ("Max", "Min", "Sum", "Mean")},
    "Where": lambda b, x: b.node("Where", [b.const(b.fresh("keep"), np.array([True, False, True, True])
                                                   .reshape(C, 1, 1)), x, b.node("Neg", [x])]),
    "BatchNormalization": lambda b, x: b.node("BatchNormalization", [x] + [
        b.const(b.fresh(n), np.linspace(lo, hi, C).astype(np.float32)) for n, lo, hi in
        (("s", 0.5, 1.5), ("b", -1, 1), ("m", -0.2, 0.2), ("v", 0.5, 2))]),
    "LRN": _trunk_unary("LRN", size=3),
    "QuantizeLinear": lambda b, x: b.node("DequantizeLinear", [b.node("QuantizeLinear", [
        x, b.const(b.fresh("s"), np.float32(0.05)), b.const(b.fresh("z"), np.uint8(128))]),
        b.const(b.fresh("s"), np.float32(0.05)), b.const(b.fresh("z"), np.uint8(128))]),
    "Conv": lambda b, x: b.conv(x, C, C, 2),
    "MaxPool": _trunk_unary("MaxPool", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
    "AveragePool": _trunk_unary("AveragePool", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
    "LpPool": _trunk_unary("LpPool", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], p=2),
    # one more row and column (12 -> 13), which the MaxPool after it floors back to 6
    "Pad": lambda b, x: b.node("Pad", [x, b.const(b.fresh("pads"), np.array([0, 0, 1, 0, 0, 0, 0, 1]))]),
    "Softmax": _trunk_unary("Softmax", axis=1),
}


@pytest.mark.parametrize("op", sorted(TRUNK_SPELLINGS))
def test_each_trunk_op_keeps_the_map_sliding_with_the_same_numbers(op):
    """The op in the trunk, between two convolutions: its registry kind lets the geometry follow it (the window
    mode's map has the grid the geometry predicts), and every cell is the original head on its window."""
    b = ModelBuilder(opset=20, seed=8)
    x = b.node("Relu", [b.conv(b.input("image", ["N", 3, 12, 12]), 3, C, 2)])
    x = b.node("MaxPool", [TRUNK_SPELLINGS[op](b, x)], kernel_shape=[2, 2], strides=[2, 2])
    features = b.node("Relu", [b.conv(x, C, C, 2)], "features")
    b.gemm(b.node("Flatten", [features], axis=1), C * 36, 3, bias_shape=(3,), output=b.output("scores", ["N", 3]))
    original = b.build(f"trunk_{op}")
    conversion = fc2conv_onnx.convert_with_report(original, pooling="window")
    assert hasattr(conversion.report.geometry[0], "stride"), conversion.report.geometry[0]
    assert_equivalent(original, conversion.model, sizes=[(1, 3, 19, 23)], rtol=1e-3, atol=1e-4)


def test_every_op_with_a_trunk_kind_of_its_own_is_spelled_in_a_trunk_here():
    kinds = {registry.LOCAL, registry.WINDOW, registry.PAD}
    with_kind = {op for op, known in REGISTRY.items() if known.trunk in kinds}
    assert with_kind <= set(TRUNK_SPELLINGS) | {"DequantizeLinear"}, with_kind - set(TRUNK_SPELLINGS)


COLD_REGISTRY = r"""
import json, sys
from fc2conv_onnx.model import registry
assert "onnx" not in sys.modules  # reading data facts imports nothing heavy
slots = {op: [known.head is not None, known.flattening is not None, callable(known.trunk)]
         for op, known in sorted(registry.REGISTRY.items())}
print(json.dumps(slots))
"""


def test_the_registry_is_complete_whatever_reads_it_first():
    """A process that imports the registry alone and reads its slots sees every handler that a process which has
    imported the whole package sees: nothing depends on what happened to be imported before (run on its own,
    this file once failed two tests)."""
    import json
    import subprocess
    import sys

    from test_cli import ENV

    done = subprocess.run([sys.executable, "-c", COLD_REGISTRY], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    import fc2conv_onnx.api  # noqa: F401  (every stage imported here)

    warm = {op: [known.head is not None, known.flattening is not None, callable(known.trunk)]
            for op, known in sorted(REGISTRY.items())}
    assert json.loads(done.stdout) == warm
    assert sum(head for head, _, _ in warm.values()) > 40


def test_a_missing_op_is_named():
    with pytest.raises(KeyError, match="'NotAnOp' is not in the registry"):
        registry.lookup("NotAnOp")

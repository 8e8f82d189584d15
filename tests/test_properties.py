"""Property-based tests (hypothesis): random CNN classifiers convert and stay equivalent; damaged models give a
clean one-line error or a correct conversion, never a traceback, a hang or a huge allocation.

The default run is bounded (a few dozen examples); `pytest -m slow` runs the same properties much deeper.
"""
from __future__ import annotations

import os
from math import prod
from typing import List, Tuple

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import fc2conv_onnx
from fc2conv_onnx import Fc2ConvError
from fc2conv_onnx.model.geometry import Geometry

from builders import ModelBuilder
from equivalence import assert_equivalent, input_shape

FAST = settings(max_examples=int(os.environ.get("FC2CONV_EXAMPLES", "25")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DEEP = settings(FAST, max_examples=400, derandomize=False)

ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", None)
HEAD_PASS_THROUGH = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Dropout", "Softmax", None)


def _out_size(size: int, kernel: int, stride: int, dilation: int, pads: Tuple[int, int]) -> int:
    return (size + sum(pads) - dilation * (kernel - 1) - 1) // stride + 1


@st.composite
def classifiers(draw, pooled: bool = False) -> Tuple[onnx.ModelProto, str, float]:
    """A random valid classifier: a 1-D, 2-D or 3-D trunk of convolutions (kernels, strides, pads, dilations,
    groups) and pools, a Flatten or a Reshape, and 1 to 3 linear layers (Gemm in either weight layout, or
    MatMul with or without Add) with pass-through ops between; opsets 11-21, float32 or float16.
    `pooled`: a global pooling (GlobalAveragePool/GlobalMaxPool, ReduceMean/ReduceMax keeping the axes or
    not) comes before the flattening. Returns the model, the name of the (pre-pool) feature map, and the
    comparison tolerance."""
    rank = draw(st.sampled_from([1, 2, 3]))
    opset = draw(st.integers(11, 21))
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    b = ModelBuilder(opset=opset, seed=draw(st.integers(0, 2**16)), dtype=dtype)
    channels = draw(st.integers(1, 4))
    size = [draw(st.integers(5, 12 if rank < 3 else 8)) for _ in range(rank)]
    x = b.input("image", [1, channels] + size)
    spatial = list(size)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["Conv", "Conv", "MaxPool", "AveragePool"]))
        kernel = [draw(st.integers(1, 3)) for _ in range(rank)]
        stride = [draw(st.integers(1, 2)) for _ in range(rank)]
        pads = [draw(st.integers(0, k - 1)) for k in kernel for _ in range(2)]
        begin, end = pads[0::2], pads[1::2]
        if kind == "Conv":
            dilation = [draw(st.integers(1, 2)) for _ in range(rank)]
            group = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
            out = group * draw(st.integers(1, 3))
            w = b.weight(b.fresh("conv_w"), (out, channels // group) + tuple(kernel))
            inputs = [x, w] + ([b.weight(b.fresh("conv_b"), (out,), fan_in=1)] if draw(st.booleans()) else [])
            x = b.node("Conv", inputs, kernel_shape=kernel, strides=stride, pads=begin + end, dilations=dilation,
                       group=group)
            channels = out
            activation = draw(st.sampled_from(ACTIVATIONS))
            if activation:
                x = b.node(activation, [x])
        else:
            dilation = [1] * rank
            x = b.node(kind, [x], kernel_shape=kernel, strides=stride, pads=begin + end)
        spatial = [_out_size(s, k, st_, d, (p0, p1))
                   for s, k, st_, d, p0, p1 in zip(spatial, kernel, stride, dilation, begin, end)]
        assume(all(s >= 1 for s in spatial))
    source = x
    features = channels * prod(spatial)
    form = draw(st.sampled_from(["Flatten", "Reshape [1, -1]", "Reshape [0, -1]", "Reshape [-1, F]"]))
    if pooled:
        pool = draw(st.sampled_from(["GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"]))
        keepdims = 1 if pool.startswith("Global") else draw(st.integers(0, 1))
        if pool.startswith("Global"):
            x = b.node(pool, [x])
        elif opset >= 18:
            x = b.node(pool, [x, b.const(b.fresh("axes"), np.arange(2, rank + 2, dtype=np.int64))], keepdims=keepdims)
        else:
            x = b.node(pool, [x], axes=list(range(2, rank + 2)), keepdims=keepdims)
        features = channels
        if not keepdims:
            form = "none"
    if form == "none":
        y = x
    elif form == "Flatten":
        y = b.node("Flatten", [x], axis=1)
    else:
        target = {"Reshape [1, -1]": [1, -1], "Reshape [0, -1]": [0, -1], "Reshape [-1, F]": [-1, features]}[form]
        y = b.node("Reshape", [x, b.const(b.fresh("shape"), np.array(target, np.int64))])
    layers = draw(st.integers(1, 3))
    width = features
    for _ in range(layers):
        out = draw(st.integers(1, 6))
        linear = draw(st.sampled_from(["Gemm", "Gemm transB=0", "MatMul+Add", "MatMul"]))
        if linear.startswith("Gemm"):
            y = b.gemm(y, width, out, trans_b=0 if "transB=0" in linear else 1,
                       bias_shape=draw(st.sampled_from([(out,), (1, out), None])))
        else:
            y = b.matmul(y, width, out, bias=linear == "MatMul+Add", bias_first=draw(st.booleans()))
        width = out
        op = draw(st.sampled_from(HEAD_PASS_THROUGH))
        if op == "Softmax":
            y = b.node("Softmax", [y], axis=1)
        elif op:
            y = b.node(op, [y])
    b.nodes[-1].output[0] = b.output("score", [1, width])
    model = b.build(f"random_rank{rank}_opset{opset}")
    tolerance = 1e-2 if dtype == np.float16 else 1e-4
    return model, source, tolerance


def _larger(model: onnx.ModelProto, extra: int) -> Tuple[int, ...]:
    shape = list(input_shape(model))
    return tuple(shape[:2] + [s + extra + axis for axis, s in enumerate(shape[2:])])


def _check_random_classifier(case) -> None:
    model, source, tolerance = case
    conversion = fc2conv_onnx.convert_with_report(model)
    assert all(check.passed for check in conversion.report.checks)
    assert_equivalent(model, conversion.model, source=source, sizes=[_larger(model, 3)], rtol=tolerance,
                      atol=tolerance)


@FAST
@given(classifiers())
def test_random_classifiers_convert_and_stay_equivalent(case):
    _check_random_classifier(case)


@pytest.mark.slow
@DEEP
@given(classifiers())
def test_random_classifiers_convert_and_stay_equivalent_deep(case):
    _check_random_classifier(case)


def _check_pooled_classifier(case, mode: str) -> None:
    """A global-pooling head in `mode` "window" (crop-and-forward at every window) or "none" (the head at
    every location: crop-and-forward with one-cell windows)."""
    model, source, tolerance = case
    conversion = fc2conv_onnx.convert_with_report(model, pooling=mode)
    assert all(check.passed for check in conversion.report.checks)
    assert conversion.report.plan.heads[0].pool.mode.name == mode
    rank = len(input_shape(model)) - 2
    assert_equivalent(model, conversion.model, source=source, sizes=[_larger(model, 3)], rtol=tolerance,
                      atol=tolerance, window=None if mode == "window" else (1,) * rank)


@FAST
@given(classifiers(pooled=True), st.sampled_from(["window", "none"]))
def test_random_pooled_classifiers_convert_and_stay_equivalent(case, mode):
    _check_pooled_classifier(case, mode)


@pytest.mark.slow
@DEEP
@given(classifiers(pooled=True), st.sampled_from(["window", "none"]))
def test_random_pooled_classifiers_convert_and_stay_equivalent_deep(case, mode):
    _check_pooled_classifier(case, mode)


def _check_finer_stride(case) -> None:
    """Half the trunk's stride on every axis that has one: exact, or refused only for a documented reason: a
    pool after a lowered stride would need dilations its opset lacks (AveragePool before 19) or pads as
    large as its kernel (which onnxruntime does not take)."""
    model, source, tolerance = case
    geometry = fc2conv_onnx.inspect(model).geometry[0]
    assume(isinstance(geometry, Geometry) and all(s % 2 == 0 for s in geometry.stride))
    stride = tuple(s // 2 for s in geometry.stride)
    try:
        conversion = fc2conv_onnx.convert_with_report(model, stride=stride)
    except fc2conv_onnx.InputError as error:
        reason = str(error)
        assert ("AveragePool" in reason and "opset 19" in reason) or "as large as its kernel" in reason, reason
        event("refused: " + ("AveragePool dilations" if "opset 19" in reason else "pool pads"))
        return
    event("converted")
    assert conversion.report.geometry[0].stride == stride
    assert_equivalent(model, conversion.model, source=source, sizes=[_larger(model, 2 * max(stride))],
                      rtol=tolerance, atol=tolerance, dilation=(2,) * len(stride))


@FAST
@given(classifiers())
def test_random_classifiers_at_half_the_stride_stay_equivalent(case):
    _check_finer_stride(case)


@pytest.mark.slow
@DEEP
@given(classifiers())
def test_random_classifiers_at_half_the_stride_stay_equivalent_deep(case):
    _check_finer_stride(case)


# --- damaged models ---------------------------------------------------------------------------------------

def _base_model() -> onnx.ModelProto:
    b = ModelBuilder(opset=13, seed=3)
    x = b.input("image", [1, 2, 8, 8])
    x = b.node("Relu", [b.conv(x, 2, 4, rank=2)])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    y = b.node("Relu", [b.gemm(b.node("Flatten", [x], axis=1), 64, 8, bias_shape=(8,))])
    b.gemm(y, 8, 3, output=b.output("score", [1, 3]), bias_shape=(3,))
    return b.build("base")


BASE = _base_model()


def _mutations(model: onnx.ModelProto, kind: str, data) -> bytes:
    """The model damaged in one way, as bytes."""
    damaged = onnx.ModelProto()
    damaged.CopyFrom(model)
    graph = damaged.graph
    if kind == "wrong dims":
        tensor = data.draw(st.sampled_from(list(graph.initializer)))
        tensor.dims[data.draw(st.integers(0, len(tensor.dims) - 1))] += data.draw(st.sampled_from([-1, 1, 7]))
    elif kind == "absurd dims":
        dim = data.draw(st.sampled_from([2**31, 2**40, 2**62]))
        target = data.draw(st.sampled_from(["input", "initializer", "output"]))
        if target == "input":
            graph.input[0].type.tensor_type.shape.dim[data.draw(st.integers(0, 3))].dim_value = dim
        elif target == "output":
            graph.output[0].type.tensor_type.shape.dim[1].dim_value = dim
        else:
            graph.initializer[data.draw(st.integers(0, len(graph.initializer) - 1))].dims[0] = dim
    elif kind == "missing initializer":
        del graph.initializer[data.draw(st.integers(0, len(graph.initializer) - 1))]
    elif kind == "cycle":
        first, later = graph.node[0], graph.node[data.draw(st.integers(1, len(graph.node) - 1))]
        first.input[0] = later.output[0]
    elif kind == "duplicate name":
        a, b = data.draw(st.lists(st.integers(0, len(graph.node) - 1), min_size=2, max_size=2, unique=True))
        graph.node[b].output[0] = graph.node[a].output[0]
    elif kind == "missing node input":
        node = data.draw(st.sampled_from(list(graph.node)))
        node.input[0] = "nowhere"
    serialized = bytearray(damaged.SerializeToString())
    if kind == "truncated":
        serialized = serialized[: data.draw(st.integers(0, len(serialized) - 1))]
    elif kind == "flipped bytes":
        for _ in range(data.draw(st.integers(1, 8))):
            index = data.draw(st.integers(0, len(serialized) - 1))
            serialized[index] ^= data.draw(st.integers(1, 255))
    return bytes(serialized)


KINDS = ["truncated", "flipped bytes", "wrong dims", "absurd dims", "missing initializer", "cycle",
         "duplicate name", "missing node input"]


def _check_damaged(tmp_path_factory, kind: str, data) -> None:
    path = tmp_path_factory.mktemp("damaged") / "model.onnx"
    path.write_bytes(_mutations(BASE, kind, data))
    out = path.parent / "out.onnx"
    try:
        fc2conv_onnx.convert_file(path, out)
    except Fc2ConvError as error:
        assert "\n" not in str(error) and str(error)
        assert not out.exists()
        return
    # Converted: then it must be right (some damage is harmless, e.g. a flipped byte in a weight).
    assert_equivalent(onnx.load(str(path)), onnx.load(str(out)), source=_source(onnx.load(str(path))),
                      sizes=[(1, 2, 11, 12)])


def _source(model: onnx.ModelProto) -> str:
    return next(node.input[0] for node in model.graph.node if node.op_type == "Flatten")


@FAST
@given(st.sampled_from(KINDS), st.data())
def test_damaged_models_give_one_line_or_a_correct_conversion(tmp_path_factory, kind, data):
    _check_damaged(tmp_path_factory, kind, data)


@pytest.mark.slow
@DEEP
@given(st.sampled_from(KINDS), st.data())
def test_damaged_models_give_one_line_or_a_correct_conversion_deep(tmp_path_factory, kind, data):
    _check_damaged(tmp_path_factory, kind, data)


def test_the_generator_covers_what_it_claims():
    """The strategy reaches every rank, both dtypes, every flatten form and 1 to 3 linear layers."""
    seen: List[Tuple] = []

    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(classifiers())
    def collect(case):
        model = case[0]
        ops = [n.op_type for n in model.graph.node]
        seen.append((len(input_shape(model)) - 2, model.graph.input[0].type.tensor_type.elem_type,
                     "Flatten" in ops, ops.count("Gemm") + ops.count("MatMul"), model.opset_import[0].version))

    collect()
    assert {s[0] for s in seen} == {1, 2, 3}
    assert {s[1] for s in seen} == {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    assert {s[2] for s in seen} == {True, False}
    assert {s[3] for s in seen} == {1, 2, 3}
    assert min(s[4] for s in seen) <= 12 and max(s[4] for s in seen) >= 20


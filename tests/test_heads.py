"""What the head finder converts, and the reason it gives for everything it leaves alone."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import fc2conv_onnx

from builders import ModelBuilder, trunk
from equivalence import assert_equivalent

F = 8 * 4 * 4  # features of the trunk below


def classifier(head, opset=13):
    """A 16x16 2-D trunk to [1, 8, 4, 4]; `head(builder, features_tensor)` builds the rest."""
    b = ModelBuilder(opset=opset, seed=21)
    x = trunk(b, b.input("image", [1, 3, 16, 16]), [3, 4, 8], rank=2)
    head(b, x)
    return b.build("test")


def only_skip(model):
    report = fc2conv_onnx.inspect(model)
    assert report.plan.heads == ()
    return report.plan.skipped


def test_plan_records_kernel_shapes_and_a_baked_batch(fixture_path):
    plan = fc2conv_onnx.inspect(fixture_path("reshape_batch_features")).plan
    (head,) = plan.heads
    assert head.flattening.source_shape == (8, 4, 3) and head.first.weight.shape == (5, 96)
    assert "fixes batch size 1" in head.flattening.note
    assert "Conv 4x3 kernel [5, 8, 4, 3]" in plan.describe()


def test_gemm_with_trans_a_is_left_with_its_reason():
    def head(b, x):
        flat = b.node("Flatten", [x])
        b.node("Gemm", [flat, b.weight("w", (1, 5))], b.output("y"), transA=1)
    (skip,) = only_skip(classifier(head))
    assert skip.op == "Gemm" and "transA=1" in skip.reason


def test_a_weight_that_is_not_constant_is_named():
    def head(b, x):
        b.inputs.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [5, F]))
        b.node("Gemm", [b.node("Flatten", [x]), "w"], b.output("y"), transB=1)
    (skip,) = only_skip(classifier(head))
    assert "weight B 'w' is not a constant" in skip.reason


@pytest.mark.parametrize("shape, words", [([1, 8, -1], "to [1, 8, -1] does not flatten"),
                                          ([2, -1], "does not flatten")])
def test_reshapes_that_are_not_a_flatten_are_declined(shape, words):
    def head(b, x):
        flat = b.node("Reshape", [x, b.const("shape", np.array(shape, np.int64))])
        b.matmul(flat, F // 2 if shape[0] == 2 else 16, 5, output=b.output("y"), bias=False)
    (skip,) = only_skip(classifier(head))
    assert words in skip.reason


def test_flatten_with_another_axis_is_declined():
    def head(b, x):
        b.matmul(b.node("Flatten", [x], axis=2), 16, 5, output=b.output("y"), bias=False)
    (skip,) = only_skip(classifier(head))
    assert "axis 2, not 1" in skip.reason


def test_softmax_over_the_batch_axis_is_declined_and_later_layers_say_why():
    def head(b, x):
        y = b.node("Softmax", [b.gemm(b.node("Flatten", [x]), F, 6, bias_shape=(6,))], axis=0)
        b.gemm(y, 6, 2, output=b.output("y"), bias_shape=(2,))
    first, second = only_skip(classifier(head))
    assert "runs over axis 0" in first.reason
    assert f"part of the head starting at '{first.node}'" in second.reason


def test_an_op_with_no_per_location_form_stops_the_head():
    def head(b, x):
        logits = b.gemm(b.node("Flatten", [x]), F, 6, bias_shape=(6,))
        b.outputs.append(helper.make_tensor_value_info("label", onnx.TensorProto.INT64, None))
        b.node("ArgMax", [logits], "label", axis=1)
    (skip,) = only_skip(classifier(head))
    assert "feeds ArgMax" in skip.reason


def test_a_bias_per_batch_row_is_declined():
    b = ModelBuilder(seed=3)
    x = trunk(b, b.input("image", [2, 3, 16, 16]), [3, 4, 8], rank=2)
    b.node("Gemm", [b.node("Flatten", [x]), b.weight("w", (3, F)), b.weight("c", (2, 1), 1)], b.output("y"),
           transB=1)
    (skip,) = only_skip(b.build("per_row_bias"))
    assert "not one value per output feature" in skip.reason


def test_weights_from_constant_nodes_are_read():
    """Caffe2-era and tf2onnx models carry weights in Constant nodes rather than initializers."""
    def head(b, x):
        w = np.random.default_rng(0).standard_normal((F, 5)).astype(np.float32)
        b.nodes.append(helper.make_node("Constant", [], ["w_const"], value=onnx.numpy_helper.from_array(w)))
        b.node("MatMul", [b.node("Flatten", [x]), "w_const"], b.output("y"))
    original = classifier(head)
    converted = fc2conv_onnx.convert(original)
    assert_equivalent(original, converted, sizes=[(1, 3, 24, 20)])


def test_unnamed_nodes_are_handled():
    original = classifier(lambda b, x: b.gemm(b.node("Flatten", [x]), F, 4, output=b.output("y"), bias_shape=(4,)))
    for node in original.graph.node:
        node.name = ""
    assert_equivalent(original, fc2conv_onnx.convert(original), sizes=[(1, 3, 32, 32)])


def test_a_dropout_that_is_a_graph_output_keeps_its_name():
    def head(b, x):
        logits = b.gemm(b.node("Flatten", [x]), F, 4, output=b.output("logits"), bias_shape=(4,))
        b.node("Dropout", [logits], b.output("dropped"))
    original = classifier(head)
    converted = fc2conv_onnx.convert(original)
    assert [o.name for o in converted.graph.output] == ["logits", "dropped"]
    assert_equivalent(original, converted, sizes=[(1, 3, 24, 28)])

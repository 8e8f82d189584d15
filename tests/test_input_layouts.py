"""The layout of an image input is followed through the ops that keep its axes (Keras 3 on torch pads the NHWC
image before its first Transpose), and a layout the tool cannot follow is refused before anything runs, in its
own words: onnxruntime's "C: 6 kernel channels: 3" never reaches the user."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import cli

import fc2conv_onnx
from fc2conv_onnx import NothingToConvertError

from equivalence import assert_equivalent


def nhwc_classifier(before_transpose) -> onnx.ModelProto:
    """[1, 16, 12, 3] NHWC image -> `before_transpose` ops -> Transpose to NCHW -> Conv 3x3 (3 -> 4) -> Relu ->
    Flatten -> Gemm; `before_transpose(x) -> (nodes, initializers, output)`."""
    rng = np.random.default_rng(0)
    nodes, initializers, x = before_transpose("image")
    size = (16, 12)
    for node in nodes:
        if node.op_type == "Pad":
            pads = numpy_helper.to_array(next(i for i in initializers if i.name == node.input[1]))
            size = (size[0] + pads[1] + pads[5], size[1] + pads[2] + pads[6])
    features = 4 * size[0] * size[1]
    initializers = initializers + [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.standard_normal((2, features)).astype(np.float32) / 30, "fc_w")]
    nodes = nodes + [
        helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["features"]),
        helper.make_node("Flatten", ["features"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w"], ["logits"], transB=1)]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 16, 12, 3])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph(nodes, "nhwc", [image], [logits], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def pad(widths):
    def ops(x):
        return ([helper.make_node("Cast", [x], ["cast"], to=TensorProto.FLOAT),
                 helper.make_node("Pad", ["cast", "pads"], ["padded"])],
                [numpy_helper.from_array(np.array(widths, np.int64), "pads")], "padded")
    return ops


def test_a_pad_of_the_nhwc_image_before_its_transpose_is_followed(tmp_path):
    model = nhwc_classifier(pad([0, 2, 1, 0, 0, 2, 1, 0]))  # rows and columns only
    conversion = fc2conv_onnx.convert_with_report(model)
    assert conversion.report.plan.input_layouts == {"image": "channels_last"}
    # proven independently (tests/equivalence.py): at the training size, and every window of a larger picture
    assert_equivalent(model, conversion.model, source="features", channels_last=True, sizes=[(1, 23, 19, 3)])
    geometry = conversion.report.geometry[0]
    # The Pad before the Transpose counts: the receptive field starts 2 rows and 1 column further out than the
    # Conv's own padding alone (and the window check's grid is the one the geometry predicts).
    assert geometry.stride == (1, 1) and geometry.receptive_offset == (-3, -2)
    assert any(c.check == "geometry" for c in conversion.report.checks)


@pytest.mark.parametrize("before_transpose, why", [
    (pad([0, 0, 0, 0, 0, 0, 0, 2]), "pads the channels"),
    (lambda x: ([helper.make_node("Slice", [x, "starts", "ends", "axes"], ["cropped"])],
                [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                 (("starts", [0]), ("ends", [16]), ("axes", [1]))], "cropped"), "a crop the layout view stops at"),
])
def test_a_layout_the_tool_cannot_follow_is_refused_before_anything_runs(before_transpose, why, tmp_path):
    model = nhwc_classifier(before_transpose)
    with pytest.raises(NothingToConvertError, match=r"input 'image' \[1, 16, 12, 3\] was read as channels first.*"
                                                     r"first Conv '.*' takes its channels from another axis"):
        fc2conv_onnx.convert(model)
    onnx.save(model, tmp_path / "model.onnx")
    code, stdout, stderr = cli("convert", str(tmp_path / "model.onnx"), "-o", str(tmp_path / "out.onnx"))
    assert code == 4 and "onnxruntime" not in stderr and "Status Message" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "out.onnx").exists()


def test_a_slice_of_the_channels_before_the_first_conv_is_not_a_misread_layout():
    """[1, 4, 16, 12] (RGBA, channels first) -> Slice of the first 3 channels -> Conv of 3: the check of the layout
    counts channels only when nothing on the way may cut or add some."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["rgb"]),
             helper.make_node("Conv", ["rgb", "conv_w"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["features"]),
             helper.make_node("Flatten", ["features"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "fc_w"], ["logits"], transB=1)]
    initializers = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                    (("starts", [0]), ("ends", [3]), ("axes", [1]))] + [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.standard_normal((2, 4 * 16 * 12)).astype(np.float32) / 30, "fc_w")]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, 16, 12])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])
    model = helper.make_model(helper.make_graph(nodes, "rgba", [image], [logits], initializers),
                              opset_imports=[helper.make_opsetid("", 13)])
    conversion = fc2conv_onnx.convert_with_report(model)
    assert conversion.report.plan.input_layouts == {"image": "channels_first"}
    assert_equivalent(model, conversion.model, source="features", sizes=[(1, 4, 23, 19)])

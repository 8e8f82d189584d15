"""A finer output stride (--stride): strides lowered, later kernels dilated; proven at every finer cell by
the independent helper (the denser trunk holds the original feature map every r cells, and each cell is
the original head on a window taken every r cells)."""
from __future__ import annotations

import onnx
import pytest

import fc2conv_onnx

from conftest import FIXTURES
from equivalence import assert_equivalent, input_shape, random_input, run


def load(stem: str) -> onnx.ModelProto:
    return onnx.load(str(FIXTURES / f"{stem}.onnx"))


@pytest.mark.parametrize("stride, denser", [(32, 1), (16, 2), (8, 4)])
def test_finer_strides_give_denser_grids_that_are_exact(stride, denser):
    original = load("dress_detector")  # stride 32, window 128x64
    conversion = fc2conv_onnx.convert_with_report(original, stride=stride)
    assert all(check.passed for check in conversion.report.checks)
    size = (1, 3, 256, 192)  # 4 strides of 32 more on each axis
    grid = run(conversion.model, random_input(original, size))["score"].shape[2:]
    assert grid == (4 * denser + 1, 4 * denser + 1)
    geometry = conversion.report.geometry[0]
    assert geometry.stride == (stride, stride) and geometry.window == (128, 64)
    assert geometry.grid((256, 192)) == grid
    assert_equivalent(original, conversion.model, sizes=[size, (1, 3, 147, 90)],
                      dilation=None if denser == 1 else (denser, denser))


def test_the_strides_lowered_are_the_last_ones():
    plan = fc2conv_onnx.inspect(FIXTURES / "dress_detector.onnx", stride=8).plan
    pools = [n.name for n in load("dress_detector").graph.node if n.op_type == "MaxPool"]
    assert plan.densify.lowered == tuple(pools[-2:])
    dilated = {c.node: c.dilations for c in plan.densify.changes}
    assert dilated[pools[-1]] == (2, 2)  # after one lowered stride
    assert plan.densify.factor == (4, 4)


@pytest.mark.parametrize("stem, pooling", [("resnet_like_maxpool", "window"), ("resnet_like", "none")])
def test_branched_trunk_with_global_pooling(stem, pooling):
    """ResNet-like: the second block's strided conv and its strided shortcut are lowered together."""
    original = load(stem)  # stride 4
    conversion = fc2conv_onnx.convert_with_report(original, stride=2, pooling=pooling)
    lowered = conversion.report.plan.densify.lowered
    assert len(lowered) == 2
    assert_equivalent(original, conversion.model, source="relu_67", sizes=[(1, 3, 41, 38)], dilation=(2, 2),
                      window=None if pooling == "window" else (1, 1))


def test_channels_last_input():
    original = load("keras_gap_like")
    conversion = fc2conv_onnx.convert_with_report(original, stride=2, pooling="none")
    assert_equivalent(original, conversion.model, source="relu_13", sizes=[(1, 29, 37, 3)], dilation=(2, 2),
                      channels_last=True, window=(1, 1))


def test_a_dilated_average_pool_needs_opset_19_and_the_advice_works(tmp_path):
    """Refused on the opset-13 model, saying how to upgrade it; the model upgraded as said converts, proven."""
    with pytest.raises(fc2conv_onnx.InputError, match="AveragePool, which ONNX has from opset 19") as refused:
        fc2conv_onnx.inspect(FIXTURES / "resnet_like.onnx", stride=2, pooling="window")
    assert "v.convert_version(onnx.load('IN.onnx'), 19)" in str(refused.value)
    import onnx.version_converter

    upgraded = onnx.version_converter.convert_version(onnx.load(str(FIXTURES / "resnet_like.onnx")), 19)
    report = fc2conv_onnx.convert_with_report(upgraded, stride=2, pooling="window").report
    assert "windows" in {c.check for c in report.checks}


@pytest.mark.parametrize("stride, words", [
    (12, "only it divided by a power of two (32, 16, 8, 4, 2, 1)"),
    (64, "only it divided by a power of two"),
    ("16x8x4", "needs 2 positive value(s)"),
    ("fast", "is not a list of integers"),
])
def test_strides_that_cannot_be_exact_are_refused(stride, words):
    with pytest.raises(fc2conv_onnx.InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        fc2conv_onnx.inspect(FIXTURES / "dress_detector.onnx", stride=stride)


def test_stride_with_a_kept_global_pool_is_refused():
    with pytest.raises(fc2conv_onnx.InputError, match="--pooling window or none"):
        fc2conv_onnx.inspect(FIXTURES / "resnet_like.onnx", stride=2)


def test_the_cli_takes_a_stride(tmp_path):
    from test_cli import cli
    out = tmp_path / "fine.onnx"
    code, stdout, stderr = cli("convert", FIXTURES / "dress_detector.onnx", "-o", out, "--stride", "16")
    assert code == 0, stderr
    assert "output stride 16x16" in stdout and "denser trunk" in stdout
    code, _, stderr = cli("convert", FIXTURES / "dress_detector.onnx", "-o", out, "--stride", "12")
    assert code == 3 and "power of two" in stderr and stderr.count("\n") == 1
    assert input_shape(onnx.load(str(out)))  # the first, good conversion is still there

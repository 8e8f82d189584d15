"""An image input with some spatial dims fixed and some symbolic (ddddocr's text recognizer: [1, 1, 64, W]):
--input-size fixes the symbolic ones and must agree with the fixed ones, and a mismatch says what to give."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from test_cli import cli

import fc2conv_onnx

from builders import ModelBuilder


def text_line_classifier() -> onnx.ModelProto:
    """A classifier of 16-pixel-high gray strips of any width (a reproduction of ddddocr's input, built with
    onnx.helper): [1, 1, 16, W], Conv + Relu + MaxPool, Flatten, Gemm."""
    b = ModelBuilder(opset=13, seed=5)
    x = b.input("image", [1, 1, 16, "W"])
    pooled = b.node("MaxPool", [b.node("Relu", [b.conv(x, 1, 4, 2)])], kernel_shape=[2, 2], strides=[2, 2])
    b.gemm(b.node("Flatten", [pooled]), 4 * 8 * 16, 3, output=b.output("logits", [1, 3]), bias_shape=(3,))
    return b.build("text_line")


def test_the_symbolic_width_is_fixed_and_the_fixed_height_kept(tmp_path):
    onnx.save(text_line_classifier(), tmp_path / "line.onnx")
    code, _, stderr = cli("convert", tmp_path / "line.onnx", "-o", tmp_path / "fcn.onnx", "--input-size", "16x32")
    assert code == 0, stderr
    # At the training size the converted model gives the original's logits; wider strips give a row of cells.
    original = ort.InferenceSession(str(tmp_path / "line.onnx"), providers=["CPUExecutionProvider"])
    converted = ort.InferenceSession(str(tmp_path / "fcn.onnx"), providers=["CPUExecutionProvider"])
    strip = np.random.default_rng(1).random((1, 1, 16, 32), dtype=np.float32)
    np.testing.assert_allclose(converted.run(None, {"image": strip})[0].reshape(1, 3),
                               original.run(None, {"image": strip})[0], atol=1e-5)
    wide = converted.run(None, {"image": np.zeros((1, 1, 16, 64), np.float32)})[0]
    assert wide.shape == (1, 3, 1, 17)
    assert fc2conv_onnx.read_geometry(tmp_path / "fcn.onnx")["logits"].window == (16, 32)
    for size in ("32", "20x32"):
        code, _, stderr = cli("convert", tmp_path / "line.onnx", "-o", tmp_path / "x.onnx", "--input-size", size)
        assert code == 3 and "spatial axis 2 fixed at 16" in stderr and "give --input-size 16x32" in stderr, stderr

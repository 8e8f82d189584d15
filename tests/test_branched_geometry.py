"""A branched model's geometry is read along each head's own path: a head whose trunk passes an auxiliary head's
branch (paddle's GoogLeNet: two auxiliary classifiers on intermediate maps) gets its own geometry, not "unknown"
because the walk met the other head's Flatten. The model here is a faithful reproduction built with onnx.helper
(an auxiliary Flatten + Gemm on the first pooled map, the main head two layers deeper), as paddle2onnx lays out
GoogLeNet's heads."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

import fc2conv_onnx

from builders import ModelBuilder


def branched() -> onnx.ModelProto:
    b = ModelBuilder(opset=13, seed=3)
    x = b.input("image", [1, 3, 32, 32])
    pooled = b.node("MaxPool", [b.node("Relu", [b.conv(x, 3, 4, 2)])], kernel_shape=[2, 2], strides=[2, 2])
    b.gemm(b.node("Flatten", [pooled]), 4 * 16 * 16, 3, output=b.output("aux"), bias_shape=(3,))
    deeper = b.node("MaxPool", [b.node("Relu", [b.conv(pooled, 4, 8, 2)])], kernel_shape=[2, 2], strides=[2, 2])
    b.gemm(b.node("Flatten", [deeper]), 8 * 8 * 8, 5, output=b.output("main"), bias_shape=(5,))
    return b.build("branched")


def test_every_head_gets_its_geometry_along_its_own_path(tmp_path):
    onnx.save(branched(), tmp_path / "branched.onnx")
    report = fc2conv_onnx.convert_file(tmp_path / "branched.onnx", tmp_path / "fcn.onnx")
    geometry = fc2conv_onnx.read_geometry(tmp_path / "fcn.onnx")
    assert (geometry["aux"].stride, geometry["main"].stride) == ((2, 2), (4, 4))
    assert {(c.output, c.check) for c in report.checks} >= {("aux", "geometry"), ("main", "geometry"),
                                                             ("main", "windows")}
    assert "unknown" not in report.to_text()
    # At the training size both heads give the original's numbers (a kernel reshaped in the wrong order would not).
    pixels = np.random.default_rng(4).random((1, 3, 32, 32), dtype=np.float32)
    original = ort.InferenceSession(str(tmp_path / "branched.onnx"), providers=["CPUExecutionProvider"])
    converted = ort.InferenceSession(str(tmp_path / "fcn.onnx"), providers=["CPUExecutionProvider"])
    for want, got in zip(original.run(["aux", "main"], {"image": pixels}),
                         converted.run(["aux", "main"], {"image": pixels})):
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-5)
    # The grids a run gives on a larger input are the ones each geometry predicts.
    session = ort.InferenceSession(str(tmp_path / "fcn.onnx"), providers=["CPUExecutionProvider"])
    aux, main = session.run(["aux", "main"], {"image": np.zeros((1, 3, 64, 80), np.float32)})
    assert aux.shape[2:] == geometry["aux"].grid((64, 80)) and main.shape[2:] == geometry["main"].grid((64, 80))

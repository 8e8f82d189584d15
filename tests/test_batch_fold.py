"""The batch fold reads a Reshape's target off the shape of the tensor its input is cast from: Keras on the torch
backend flattens a pooled map as Reshape(Cast(x), Concat(Unsqueeze(Gather(Shape(x), 0)), [K])) with a
float-to-float Cast between. (A reproduction built with onnx.helper; it failed with onnxruntime's own text before.)
Every pooling mode converts, proven, and gives the original's numbers at the training size."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

import fc2conv_onnx

from builders import ModelBuilder


def keras_torch_flatten() -> onnx.ModelProto:
    b = ModelBuilder(opset=13, seed=3)
    image = b.input("image", ["N", 3, 32, 32])
    pooled = b.node("GlobalAveragePool", [b.node("Relu", [b.conv(image, 3, 8, 2)])])
    cast = b.node("Cast", [pooled], to=TensorProto.FLOAT)
    batch = b.node("Unsqueeze", [b.node("Gather", [b.node("Shape", [pooled]), b.const("zero", np.array(0, np.int64))],
                                        axis=0), b.const("axes", np.array([0], np.int64))])
    target = b.node("Concat", [batch, b.const("features", np.array([8], np.int64))], axis=0)
    b.gemm(b.node("Reshape", [cast, target]), 8, 4, output=b.output("logits"), bias_shape=(4,))
    return b.build("keras_torch_flatten")


@pytest.mark.parametrize("pooling", ["keep", "window", "none"])
def test_a_shape_read_before_a_cast_is_folded_and_every_mode_converts(tmp_path, pooling):
    onnx.save(keras_torch_flatten(), tmp_path / "model.onnx")
    report = fc2conv_onnx.convert_file(tmp_path / "model.onnx", tmp_path / "out.onnx", pooling=pooling)
    assert any("reads its batch off its input's shape" in note for note in report.plan.normalized)
    assert "windows" in {c.check for c in report.checks}  # (none: a map at the training size, window-checked)
    pixels = np.random.default_rng(2).random((2, 3, 32, 32), dtype=np.float32)
    original = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    converted = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    got = converted.run(None, {"image": pixels})[0]
    want = original.run(None, {"image": pixels})[0]
    if pooling == "none":  # one cell per feature location: their mean is the pooled head's (a linear head)
        got = got.reshape(2, 4, -1).mean(axis=2)
    np.testing.assert_allclose(got.reshape(2, 4), want, rtol=1e-4, atol=1e-5)


def pool_whose_shape_is_read_elsewhere() -> onnx.ModelProto:
    """GAP -> 1x1 Conv (the logits, [N, 5, 1, 1]) -> Reshape whose target reads the batch off the *pool's* shape
    (not the Reshape input's, nor what it is cast from): not folded, so the pool starts no head."""
    b = ModelBuilder(opset=13, seed=4)
    image = b.input("image", ["N", 3, 16, 16])
    pooled = b.node("GlobalAveragePool", [b.node("Relu", [b.conv(image, 3, 8, 2)])])
    logits = b.conv(pooled, 8, 5, 2, kernel=1, pad=0)
    batch = b.node("Gather", [b.node("Shape", [pooled]), b.const("zero", np.array([0], np.int64))], axis=0)
    target = b.node("Concat", [batch, b.const("classes", np.array([5], np.int64))], axis=0)
    b.node("Softmax", [b.node("Reshape", [logits, target])], b.output("probabilities", ["N", 5]), axis=1)
    return b.build("pool_whose_shape_is_read_elsewhere")


def test_the_reason_a_pool_starts_no_head_is_the_one_given():
    """Not the generic "no linear layer or 1x1 Conv after a global pool": there is one; the pool's own reason."""
    with pytest.raises(fc2conv_onnx.NothingToConvertError) as refused:
        fc2conv_onnx.convert(pool_whose_shape_is_read_elsewhere())
    message = str(refused.value)
    assert "the global pool 'GlobalAveragePool_" in message and "feeds Shape" in message, message
    assert "no linear layer or 1x1 Conv after a global pool" not in message

"""The converted model's symbolic dims have names people can read: the input's batch name is kept, the
spatial dims are H, W (L; D, H, W) on the input and H_out, W_out on the outputs, shared by every output on
one grid. Each converted model is run in onnxruntime at a larger size, where the named dims take values."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fc2conv_onnx


def dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def named(model: onnx.ModelProto):
    return ({v.name: dims(v) for v in model.graph.input}, {v.name: dims(v) for v in model.graph.output})


def run_at(model: onnx.ModelProto, shape) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


@pytest.mark.parametrize("stem, options, inputs, outputs, shape", [
    ("dress_detector", {}, {"image": ["N", 3, "H", "W"]}, {"score": ["N", 1, "H_out", "W_out"]}, (2, 3, 160, 96)),
    ("two_heads", {}, {"image": ["N", 3, "H", "W"]},
     {"logits": ["N", 3, "H_out", "W_out"], "probabilities": ["N", 3, "H_out", "W_out"],
      "box": ["N", 4, "H_out", "W_out"]}, None),
    ("keras_gap_like", {"pooling": "window"}, {"input_1": ["N", "H", "W", 3]}, {"dense": ["N", "H_out", "W_out", 4]},
     None),
    ("trunk_1d", {}, {"signal": ["N", 2, "L"]}, {"logits": ["N", 5, "L_out"]}, None),
    ("trunk_3d", {}, {"volume": ["N", 1, "D", "H", "W"]}, {"logits": ["N", 3, "D_out", "H_out", "W_out"]}, None),
    ("resnet_like", {}, {"image": ["N", 3, "H", "W"]}, {"logits": ["N", 10, 1, 1]}, None),  # a kept pool: 1x1
])
def test_dims_are_named_for_people(fixture_path, stem, options, inputs, outputs, shape):
    converted = fc2conv_onnx.convert(str(fixture_path(stem)), **options)
    got_inputs, got_outputs = named(converted)
    assert {k: got_inputs[k] for k in inputs} == inputs and got_outputs == outputs
    if shape:
        values = run_at(converted, shape)
        assert values["score"].shape == (2, 1, 2, 2)  # H_out and W_out take the grid's size


def test_the_exporters_batch_name_is_kept_and_made_up_names_are_not(fixture_path, tmp_path):
    model = onnx.load(str(fixture_path("dress_detector")))
    for name, expected in (("batch_size", "batch_size"), ("unk__42", "N")):
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = name
        path = tmp_path / "named.onnx"
        onnx.save(model, str(path))
        converted = fc2conv_onnx.convert(str(path))
        got_inputs, got_outputs = named(converted)
        assert got_inputs["image"][0] == expected and got_outputs["score"] == [expected, 1, "H_out", "W_out"]
        assert run_at(converted, (3, 3, 128, 64))["score"].shape == (3, 1, 1, 1)


def test_heads_on_different_grids_get_different_names():
    """Two heads on feature maps of different strides do not share a grid: the second gets H_out2."""
    from builders import ModelBuilder

    b = ModelBuilder(seed=7)
    x = b.input("image", [1, 3, 16, 16])
    early = b.node("Relu", [b.conv(x, 3, 4, 2, stride=2)])  # 8x8
    late = b.node("Relu", [b.conv(early, 4, 4, 2, stride=2)])  # 4x4
    b.gemm(b.node("Flatten", [early], axis=1), 4 * 8 * 8, 2, b.output("early_score", [1, 2]))
    b.gemm(b.node("Flatten", [late], axis=1), 4 * 4 * 4, 3, b.output("late_score", [1, 3]))
    converted = fc2conv_onnx.convert(b.build("two_grids"))
    assert named(converted)[1] == {"early_score": ["N", 2, "H_out", "W_out"],
                                   "late_score": ["N", 3, "H_out2", "W_out2"]}
    values = run_at(converted, (1, 3, 32, 32))
    assert values["early_score"].shape == (1, 2, 9, 9) and values["late_score"].shape == (1, 3, 5, 5)

"""Global-pooling heads in the three --pooling modes, proven with the independent equivalence helper.

- keep: the pool stays; equal at the training size, and at a larger size one prediction that equals the
  original head on the pooled larger feature map;
- window: a pool of the training feature size, stride 1: crop-and-forward at every window;
- none: the pool goes: the head at every feature location; for average pooling and an affine head, the
  mean of that map over a training-size window is the original logits.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import fc2conv_onnx

from builders import POOLED_HEADS
from conftest import FIXTURES
from equivalence import assert_equivalent, assert_one_prediction, input_shape, random_input, run

#: fixture -> (the pre-pool feature map, the pool's output, channels-last input)
POOLED = {
    "resnet_like": ("relu_67", "globalaveragepool_69", False),
    "resnet_like_maxpool": ("relu_67", "globalmaxpool_69", False),
    "mobilenet_like": ("clip_27", "reducemean_29", False),
    "keras_gap_like": ("relu_13", None, True),
    "spot_finder_pooled": ("features", "globalaveragepool_6", False),
}


def load(stem: str) -> onnx.ModelProto:
    return onnx.load(str(FIXTURES / f"{stem}.onnx"))


def larger(model: onnx.ModelProto, channels_last: bool):
    shape = list(input_shape(model))
    axes = range(1, len(shape) - 1) if channels_last else range(2, len(shape))
    for extra, axis in zip((9, 14), axes):
        shape[axis] += extra
    return tuple(shape)


def spatial(value: np.ndarray, channels_last: bool):
    return value.shape[1:-1] if channels_last else value.shape[2:]


def test_the_fixtures_pool_where_the_table_says():
    assert sorted(POOLED) == sorted(POOLED_HEADS)
    for stem, (source, pooled, _) in POOLED.items():
        plan = fc2conv_onnx.inspect(load(stem)).plan
        assert [h.source for h in plan.heads] == [source], stem
        assert plan.heads[0].pool is not None
        if pooled:
            assert any(pooled in node.output for node in load(stem).graph.node)


@pytest.mark.parametrize("stem", sorted(POOLED))
def test_window_mode_is_crop_and_forward_at_every_window(stem):
    source, _, channels_last = POOLED[stem]
    original = load(stem)
    conversion = fc2conv_onnx.convert_with_report(original, pooling="window")
    ops = [n.op_type for n in conversion.model.graph.node]
    assert not {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "Gemm", "MatMul"} & set(ops)
    assert {"AveragePool", "MaxPool"} & set(ops)
    assert_equivalent(original, conversion.model, source=source, sizes=[larger(original, channels_last)],
                      channels_last=channels_last)
    geometry = conversion.report.geometry[0]
    assert geometry.window == tuple(input_shape(original)[1:3] if channels_last else input_shape(original)[2:])


@pytest.mark.parametrize("stem", sorted(POOLED))
def test_none_mode_is_the_head_at_every_location(stem):
    source, _, channels_last = POOLED[stem]
    original = load(stem)
    conversion = fc2conv_onnx.convert_with_report(original, pooling="none")
    ops = [n.op_type for n in conversion.model.graph.node]
    trunk_pools = [n.op_type for n in original.graph.node].count("AveragePool")  # the spot finder's 4x4 pool
    assert not {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"} & set(ops)
    assert ops.count("AveragePool") == trunk_pools  # no window pool in its place
    rank = len(input_shape(original)) - 2
    assert_equivalent(original, conversion.model, source=source, sizes=[larger(original, channels_last)],
                      channels_last=channels_last, window=(1,) * rank)
    assert conversion.report.geometry[0].feature_window == (1,) * rank


def test_none_mode_maps_average_back_to_the_logits():
    """Class activation maps: with average pooling and an affine head, the mean of the map over the
    training-size feature map equals the original logits."""
    original = load("resnet_like")
    converted = fc2conv_onnx.convert(original, pooling="none")
    feeds = random_input(original, input_shape(original), seed=5)
    cam = run(converted, feeds)["logits"]
    assert cam.shape == (1, 10, 8, 8)
    np.testing.assert_allclose(cam.mean(axis=(2, 3)), run(original, feeds)["logits"], rtol=1e-5, atol=1e-5)
    assert np.abs(cam - cam.mean(axis=(2, 3), keepdims=True)).max() > 0.1  # a map, not a constant


@pytest.mark.parametrize("stem", sorted(POOLED))
def test_keep_mode_gives_one_prediction_at_any_size(stem):
    source, _, channels_last = POOLED[stem]
    original = load(stem)
    conversion = fc2conv_onnx.convert_with_report(original)  # keep is the default
    assert conversion.report.plan.heads[0].pool.mode.name == "keep"
    assert_equivalent(original, conversion.model, source=source, channels_last=channels_last)  # training size
    size = larger(original, channels_last)
    assert_one_prediction(original, conversion.model, source=source, size=size, channels_last=channels_last, atol=1e-6)
    for value in run(conversion.model, random_input(original, size)).values():
        assert spatial(value, channels_last) == (1, 1), value.shape


def test_pooling_modes_are_reported_and_stored(tmp_path):
    out = tmp_path / "cam.onnx"
    report = fc2conv_onnx.convert_file(FIXTURES / "resnet_like.onnx", out, pooling="none")
    pool = report.plan.heads[0].pool
    assert f"GlobalAveragePool '{pool.node}' -> removed (the head at every feature location)" in report.to_text()
    assert report.to_dict()["heads"][0]["pooling"]["mode"] == "none"
    geometry = fc2conv_onnx.read_geometry(out)["logits"]
    assert geometry.feature_window == (1, 1) and geometry.stride == (4, 4)
    keep = fc2conv_onnx.inspect(FIXTURES / "resnet_like.onnx").to_text()
    assert "kept: one prediction per image" in keep and "geometry unknown" in keep


def test_an_unknown_pooling_mode_is_refused():
    with pytest.raises(fc2conv_onnx.InputError, match="pooling 'sometimes'"):
        fc2conv_onnx.inspect(FIXTURES / "resnet_like.onnx", pooling="sometimes")


def test_a_squeeze_of_other_axes_is_not_a_pooled_flattening():
    """Squeeze must drop exactly the pooled axes; anything else is declined with the reason."""
    model = load("resnet_like")
    graph = model.graph
    flatten = next(n for n in graph.node if n.op_type == "Flatten")
    flatten.op_type = "Squeeze"
    del flatten.attribute[:]
    axes = onnx.helper.make_tensor("squeeze_axes", onnx.TensorProto.INT64, [1], [3])
    graph.initializer.append(axes)
    flatten.input.append("squeeze_axes")
    plan = fc2conv_onnx.inspect(model).plan
    assert not plan.heads and "does not squeeze exactly the pooled axes" in plan.skipped[0].reason
    axes.CopyFrom(onnx.helper.make_tensor("squeeze_axes", onnx.TensorProto.INT64, [2], [2, 3]))
    graph.initializer[-1].CopyFrom(axes)
    model = onnx.shape_inference.infer_shapes(model)
    conversion = fc2conv_onnx.convert_with_report(model, pooling="window")
    head = conversion.report.plan.heads[0]
    assert head.pool.op == "GlobalAveragePool" and head.steps[0].op == "Squeeze"
    assert head.steps[0].becomes == "removed (the pooled map flattened)"

"""Every fixture converts, and onnxruntime shows the result is equivalent (training size and larger)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import fc2conv_onnx

from builders import CHANNELS_LAST_INPUTS, FIXTURES, NOTHING_TO_CONVERT, POOLED_HEADS, transposed_flatten
from equivalence import assert_equivalent, cut, input_shape, random_input, run, trunk_that_runs_at_any_size

#: Flatten heads on a feature map named "features" (pooled heads have their own tests, in each mode).
CONVERTIBLE = [stem for stem in FIXTURES if stem not in NOTHING_TO_CONVERT + POOLED_HEADS]


def larger_sizes(shape, channels_last=False):
    """Twice the training size, and a size that is not the training size plus a multiple of the stride (an NHWC
    image input, as tf2onnx writes them, has its channels last)."""
    if channels_last:
        batch, *spatial, channels = shape
        return [(batch, *(2 * s for s in spatial), channels), (batch, *(s + 7 for s in spatial), channels)]
    batch, channels, *spatial = shape
    return [(batch, channels, *(2 * s for s in spatial)), (batch, channels, *(s + 7 for s in spatial))]


@pytest.mark.parametrize("stem", CONVERTIBLE)
def test_fixture_converts_to_an_equivalent_model(stem, fixture_path):
    original = onnx.load(str(fixture_path(stem)))
    converted = fc2conv_onnx.convert(original, validate=False)  # checked here independently
    onnx.checker.check_model(converted, full_check=True)
    channels_last = stem in CHANNELS_LAST_INPUTS
    reference = trunk_that_runs_at_any_size(original) if channels_last else original
    assert_equivalent(reference, converted, sizes=larger_sizes(input_shape(original), channels_last),
                      channels_last=channels_last)


@pytest.mark.parametrize("stem", CONVERTIBLE)
def test_converted_model_has_symbolic_inputs_and_the_same_output_names(stem, fixture_path):
    original = onnx.load(str(fixture_path(stem)))
    converted = fc2conv_onnx.convert(original)
    dims = list(converted.graph.input[0].type.tensor_type.shape.dim)
    if stem in CHANNELS_LAST_INPUTS:  # [N, H, W, C]
        dims = dims[:1] + dims[-1:] + dims[1:-1]
    assert dims[0].dim_param and all(d.dim_param for d in dims[2:]) and dims[1].dim_value > 0
    assert [o.name for o in converted.graph.output] == [o.name for o in original.graph.output]
    assert list(converted.opset_import) == list(original.opset_import)
    assert not {"Gemm", "MatMul", "Flatten", "Reshape"} & {n.op_type for n in converted.graph.node}


def test_dress_detector_gives_403_positions_on_a_512x1024_frame(fixture_path):
    original = onnx.load(str(fixture_path("dress_detector")))
    converted = fc2conv_onnx.convert(original)
    frame = random_input(original, (1, 3, 512, 1024))
    assert run(converted, frame)["score"].shape == (1, 1, 13, 31)
    # and each of the 403 positions is the original head on that window of the feature map
    assert_equivalent(original, converted, sizes=[(1, 3, 512, 1024)])


def test_batch_is_free_and_kept_apart(fixture_path):
    original = onnx.load(str(fixture_path("reshape_batch_minus1")))  # the Reshape bakes batch 1
    converted = fc2conv_onnx.convert(original)
    batch = random_input(original, (3, 3, 40, 30))["image"]
    together = run(converted, {"image": batch})["logits"]
    for i in range(3):
        alone = run(converted, {"image": batch[i:i + 1]})["logits"]
        np.testing.assert_allclose(together[i:i + 1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stem, frame", [("flat_flatten", (2, 3, 40, 36)), ("channel_pad_shortcut", (2, 3, 40, 48)),
                                         ("unit_channel_fixed_batch", (2, 56, 64, 1))])
def test_the_real_models_spellings_take_a_batch_of_two(stem, frame, fixture_path):
    """The reproductions of dlib's and fer's models (batch fixed at 1 in the file): the converted model takes a
    batch of 2 at a larger size, each item as it is alone."""
    original = onnx.load(str(fixture_path(stem)))
    converted = fc2conv_onnx.convert(original)
    name, output = original.graph.input[0].name, original.graph.output[0].name
    batch = random_input(original, frame)[name]
    together = run(converted, {name: batch})[output]
    for i in range(2):
        np.testing.assert_allclose(together[i:i + 1], run(converted, {name: batch[i:i + 1]})[output], rtol=1e-5,
                                   atol=1e-6)


def test_softmax_is_per_location_not_over_the_whole_map(fixture_path):
    for stem in ("softmax_opset11", "softmax_opset13"):
        converted = fc2conv_onnx.convert(str(fixture_path(stem)))
        probabilities = run(converted, random_input(converted, (1, 3, 48, 40)))["probabilities"]
        assert probabilities.shape[2:] == (9, 7)  # (48/4 - 4 + 1, 40/4 - 4 + 1)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_two_heads_on_one_flatten_are_both_converted(fixture_path):
    report = fc2conv_onnx.inspect(fixture_path("two_heads"))
    assert [h.outputs for h in report.plan.heads] == [("logits", "probabilities"), ("box",)]
    assert report.plan.skipped == ()


def test_trunk_feature_map_cut_helper_is_not_vacuous(fixture_path):
    """The test helper's trunk really runs at larger sizes (else assert_equivalent would prove nothing)."""
    original = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(onnx.load(str(fixture_path("trunk_1d")))))
    trunk = cut(original.model, ["signal"], ["features"], free_sizes=True)
    assert run(trunk, random_input(trunk, (1, 2, 128)))["features"].shape == (1, 8, 32)


@pytest.mark.parametrize("perm", [(0, 3, 1, 2), (0, 2, 1, 3), (0, 1, 3, 2), (0, 3, 2, 1)])
def test_a_flattening_after_any_transpose_keeping_the_batch_is_permuted_into_the_kernel(perm):
    """(0, 3, 1, 2) is not its own inverse: a kernel laid out by the perm instead of its inverse fails here.
    The [8, 4, 3] map has three distinct sizes, so every wrong order is caught."""
    original = transposed_flatten(perm)
    converted = fc2conv_onnx.convert(original, validate=False)  # checked here independently
    assert "Transpose" not in {n.op_type for n in converted.graph.node}
    assert_equivalent(original, converted, sizes=larger_sizes(input_shape(original)))

"""The checks can fail: a wrong weight layout is caught, and nothing is written."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import fc2conv_onnx
from fc2conv_onnx.prove.validate import compare
from fc2conv_onnx.rewrite import rewrite

from conftest import FIXTURES
from equivalence import assert_equivalent, assert_one_prediction


def channels_last_kernel(weight, flattening):
    """A classic bug: reading W's rows as (*spatial, C) instead of (C, *spatial). Right shape, wrong order."""
    channels, spatial = flattening.source_shape[0], flattening.spatial_shape
    kernel = weight.reshape((weight.shape[0],) + spatial + (channels,))
    return np.ascontiguousarray(np.moveaxis(kernel, -1, 1))


def transposed_spatial_kernel(weight, flattening):
    """Another: the spatial axes swapped (H and W mixed up) on a kernel of the right shape."""
    kernel = weight.reshape((weight.shape[0],) + flattening.source_shape[:1] + flattening.spatial_shape[::-1])
    return np.ascontiguousarray(np.swapaxes(kernel, 2, 3))


@pytest.mark.parametrize("wrong_layout", [channels_last_kernel, transposed_spatial_kernel])
def test_a_wrong_weight_layout_is_refused_and_nothing_is_written(wrong_layout, monkeypatch, fixture_path, tmp_path):
    monkeypatch.setattr(rewrite, "first_layer_kernel", wrong_layout)
    output = tmp_path / "out.onnx"
    with pytest.raises(fc2conv_onnx.ValidationError, match=r"output 'score' .* max abs error [0-9.e-]+ > tolerance"):
        fc2conv_onnx.convert_file(fixture_path("dress_detector"), output)
    assert list(tmp_path.iterdir()) == []


def test_the_test_helper_also_catches_a_wrong_layout(monkeypatch, fixture_path):
    monkeypatch.setattr(rewrite, "first_layer_kernel", channels_last_kernel)
    original = onnx.load(str(fixture_path("dress_detector")))
    wrong = fc2conv_onnx.convert(original, validate=False)
    with pytest.raises(AssertionError):
        assert_equivalent(original, wrong)


def test_validation_figures_are_in_the_report(fixture_path):
    report = fc2conv_onnx.convert_with_report(str(fixture_path("two_heads"))).report
    assert report.validated
    checked = {(c.output, c.check) for c in report.checks}
    for name in ("logits", "probabilities", "box"):
        assert {(name, "training size"), (name, "windows")} <= checked
    assert all(c.passed and c.max_abs <= c.tolerance for c in report.checks)
    windows = [c for c in report.checks if c.check == "windows"]
    # default size: 16x16 plus (2, 3) strides of 4 and half a stride = 26x30 -> a 6x7 map -> 3x4 windows of 4x4
    assert all(c.locations == 12 and c.input_shape == (1, 3, 26, 30) for c in windows)


def test_compare_uses_the_output_scale_and_flags_shape_and_nan_mismatches():
    reference = np.array([[10.0, -20.0]], np.float32)
    assert compare("y", "t", reference, reference + 1e-4, (1,), 1).passed  # 1e-4 << 1e-4 * 20
    assert not compare("y", "t", reference, reference + 0.1, (1,), 1).passed
    assert not compare("y", "t", reference, np.zeros((1, 3), np.float32), (1,), 1).passed
    assert not compare("y", "t", reference, np.array([[np.nan, -20.0]], np.float32), (1,), 1).passed
    assert compare("y", "t", reference, reference.reshape(1, 2, 1, 1), (1,), 1).passed


def test_a_correct_conversion_of_a_model_that_amplifies_rounding_passes_by_its_own_noise():
    """timm fbnetv3_b with random BatchNorm (made by fixtures/export_timm.py): onnxruntime's kernels for the same
    trunk at symbolic sizes move its logits by 9x the fixed tolerance. The check measures how far the original
    moves under other roundings on the same input and accepts a multiple of that; the report shows both."""
    from fc2conv_onnx.prove.validate import NOISE_MULTIPLE

    path = FIXTURES / "exported" / "timm_fbnetv3_noisy_ts.onnx"
    original = onnx.load(str(path))
    for pooling in ("keep", "window"):
        conversion = fc2conv_onnx.convert_with_report(str(path), pooling=pooling)
        check = next(c for c in conversion.report.checks if c.check == "training size")
        assert check.noise is not None and check.noise > 0
        floor = check.tolerance - NOISE_MULTIPLE * check.noise
        assert check.max_abs > floor  # refused by the fixed tolerance alone
        assert "own rounding noise" in check.describe()
        # Proven again independently (tests/equivalence.py runs both with onnxruntime's optimizations off).
        source = conversion.report.plan.heads[0].source
        if pooling == "keep":
            assert_one_prediction(original, conversion.model, source=source, size=(1, 3, 80, 96))
        else:
            assert_equivalent(original, conversion.model, source=source, sizes=[(1, 3, 80, 96)])


def test_the_noise_is_measured_only_when_the_fixed_tolerance_is_not_enough():
    reference = np.array([[10.0, -20.0]], np.float32)
    calls = []

    def noise():
        calls.append(1)
        return 0.05

    assert compare("y", "t", reference, reference + 1e-4, (1,), 1, noise=noise).noise is None and not calls
    within = compare("y", "t", reference, reference + 0.1, (1,), 1, noise=noise)
    assert within.passed and within.noise == 0.05 and calls == [1]
    assert not compare("y", "t", reference, reference + 0.3, (1,), 1, noise=noise).passed  # > 4 x 0.05 + floor


def test_the_logits_before_a_saturating_output_are_checked_and_catch_what_it_hides(monkeypatch, fixture_path):
    """The ring classifier (trained; fixtures/train_rings.py) ends in a Sigmoid that random inputs saturate: its
    scores are ~1e-7 whatever the kernel. A kernel with H and W swapped is refused by its logits."""
    ring = FIXTURES / "exported" / "ring_classifier.onnx"
    report = fc2conv_onnx.convert_with_report(str(ring)).report
    logits = [c for c in report.checks if c.before == "score"]
    assert {c.check for c in logits} == {"training size", "windows"}
    assert "score (logits '" in report.to_text()
    monkeypatch.setattr(rewrite, "first_layer_kernel", lambda weight, flattening: np.ascontiguousarray(
        np.swapaxes(weight.reshape((weight.shape[0],) + flattening.source_shape), 2, 3)))
    with pytest.raises(fc2conv_onnx.ValidationError, match=r"the logits '\S+' before output 'score'"):
        fc2conv_onnx.convert(str(ring))


def test_a_pair_made_elsewhere_without_the_logits_name_is_still_validated(fixture_path):
    original = str(fixture_path("dress_detector"))
    converted = fc2conv_onnx.convert(original)
    names = {"gemm_50": "renamed_logits"}
    for node in converted.graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    report = fc2conv_onnx.validate_pair(original, converted)
    assert report.checks and not any(c.before for c in report.checks)


def test_each_output_is_read_from_the_model_as_written_and_each_logit_from_the_probe():
    """What is validated is what is written: the probe (the model with its logits as outputs too) only adds them."""
    from onnx import TensorProto, helper

    from fc2conv_onnx.model.runtime import Session
    from fc2conv_onnx.prove.validate import ConvertedRuns

    def model(op):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
        outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("y", "logits")]
        nodes = [helper.make_node(op, ["x"], ["y"]), helper.make_node("Neg", ["x"], ["logits"])]
        graph = helper.make_graph(nodes, op, [x], outputs)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    values = ConvertedRuns(Session(model("Identity")), Session(model("Abs"))).run(
        {"x": np.array([-1.0, 2.0], np.float32)}, "the converted model")
    assert values["y"].tolist() == [-1.0, 2.0] and values["logits"].tolist() == [1.0, -2.0]

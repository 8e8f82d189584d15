"""The checks can fail: a wrong weight layout is caught, and nothing is written."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import fc2conv_onnx
from fc2conv_onnx.prove.validate import compare
from fc2conv_onnx.rewrite import rewrite

from equivalence import assert_equivalent


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

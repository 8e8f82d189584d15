"""The window check (any size) catches conversions that are right at the training size and wrong beyond it.

Each wrong model below gives the original's outputs at the training size, where the output map is a
single cell; only a larger input shows that its cells are in the wrong place or the wrong order.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import helper

import fc2conv_onnx
from fc2conv_onnx import api
from fc2conv_onnx.model import graphs, runtime
from fc2conv_onnx.prove import validate as validation


def with_transposed_output(converted: onnx.ModelProto, output: str, perm) -> onnx.ModelProto:
    """The converted model with a Transpose on `output`: H and W swapped, or channels moved last."""
    wrong = onnx.ModelProto()
    wrong.CopyFrom(converted)
    producer = next(n for n in wrong.graph.node if output in n.output)
    producer.output[list(producer.output).index(output)] = output + "_before"
    wrong.graph.node.append(helper.make_node("Transpose", [output + "_before"], [output], perm=list(perm)))
    del wrong.graph.value_info[:]
    value = next(v for v in wrong.graph.output if v.name == output)
    for axis, dim in enumerate(value.type.tensor_type.shape.dim):
        dim.Clear()
        dim.dim_param = f"d{axis}"
    return wrong


def with_strided_head(converted: onnx.ModelProto) -> onnx.ModelProto:
    """The first head Conv strides by its own kernel: windows that do not overlap (a stride-S grid lost)."""
    wrong = onnx.ModelProto()
    wrong.CopyFrom(converted)
    conv = next(n for n in wrong.graph.node if n.op_type == "Conv" and n.name.endswith("/conv"))
    kernel = next(a for a in conv.attribute if a.name == "kernel_shape").ints
    conv.attribute.append(helper.make_attribute("strides", list(kernel)))
    return wrong


WRONG = {
    "H and W swapped": (lambda m: with_transposed_output(m, "probabilities", (0, 1, 3, 2)), (32, 32)),
    "NHWC output": (lambda m: with_transposed_output(m, "probabilities", (0, 2, 3, 1)), None),
    "non-overlapping windows": (with_strided_head, None),
}


@pytest.mark.parametrize("what", sorted(WRONG))
def test_window_check_catches_what_the_training_size_check_cannot(what, fixture_path):
    make_wrong, size = WRONG[what]
    original = onnx.load(str(fixture_path("softmax_opset13")))  # square 16x16 training size, 7 classes
    wrong = make_wrong(fc2conv_onnx.convert(original))
    inferred = onnx.shape_inference.infer_shapes(original)
    assert all(check.passed for check in validation.check_training_size(inferred, wrong))
    with pytest.raises(fc2conv_onnx.ValidationError, match=r"output 'probabilities' .*\(windows, input"):
        fc2conv_onnx.validate_pair(original, wrong, size=size)


def test_a_correct_pair_passes_at_any_size(fixture_path):
    original = str(fixture_path("softmax_opset13"))
    converted = fc2conv_onnx.convert(original, validate=False)
    for size in (None, (16, 16), (32, 32), "40x24", (17, 21)):  # 17x21: not training size + k * stride
        report = fc2conv_onnx.validate_pair(original, converted, size=size)
        assert {c.check for c in report.checks} == {"training size", "windows", "geometry"}
        assert all(c.passed for c in report.checks)


def test_the_window_check_at_the_training_size_is_one_location(fixture_path):
    report = fc2conv_onnx.validate_pair(str(fixture_path("dress_detector")),
                                        fc2conv_onnx.convert(str(fixture_path("dress_detector"))), size=(128, 64))
    assert [c.locations for c in report.checks if c.check == "windows" and not c.before] == [1]


def test_unusable_sizes_are_refused(fixture_path):
    path = str(fixture_path("dress_detector"))
    for size, message in [("64x64", "smaller than input 'image''s training size 128x64"),
                          ((200, 200, 200), "has 3 axes"), ("big", "not a list of integers"),
                          ("0x5", "must be positive")]:
        with pytest.raises(fc2conv_onnx.InputError, match=message):
            fc2conv_onnx.convert(path, validate_size=size)


def test_off_skips_only_the_window_check(fixture_path):
    report = fc2conv_onnx.convert_with_report(str(fixture_path("dress_detector")), validate_size="off").report
    assert {c.check for c in report.checks} == {"training size"}
    assert "window check: off" in report.to_text()


def test_many_locations_are_sampled_with_every_corner_and_still_catch_errors(fixture_path, monkeypatch):
    monkeypatch.setattr(validation, "MAX_LOCATIONS", 10)
    original = onnx.load(str(fixture_path("softmax_opset13")))
    converted = fc2conv_onnx.convert(original, validate=False)
    report = fc2conv_onnx.validate_pair(original, converted, size=(64, 64))  # 13x13 = 169 locations
    (windows,) = [c for c in report.checks if c.check == "windows" and not c.before]
    assert windows.passed and windows.locations == 10
    assert "a seeded sample of 10 of 169 locations, all 4 corners included" in windows.detail
    with pytest.raises(fc2conv_onnx.ValidationError, match="windows"):
        fc2conv_onnx.validate_pair(original, WRONG["H and W swapped"][0](converted), size=(64, 64))


def test_sample_locations_is_seeded_and_includes_the_corners():
    grid = (7, 9, 4)
    first, note = validation.sample_locations(grid, 20, np.random.default_rng(5))
    again, _ = validation.sample_locations(grid, 20, np.random.default_rng(5))
    assert np.array_equal(first, again) and len(set(first.tolist())) == 20 and "20 of 252" in note
    corners = {int(np.ravel_multi_index(c, grid)) for c in np.ndindex(2, 2, 2)
               for c in [tuple(g - 1 if bit else 0 for g, bit in zip(grid, c))]}
    assert corners <= set(first.tolist())
    everything, note = validation.sample_locations((3, 4), 12, np.random.default_rng(0))
    assert everything.tolist() == list(range(12)) and note == ""


def test_windows_in_batches_equal_windows_one_by_one(fixture_path):
    original = onnx.shape_inference.infer_shapes(onnx.load(str(fixture_path("two_heads"))))
    trunk = runtime.Session(graphs.cut(original, ["features"], (), ["image"]))
    features = trunk.run(["features"], {"image": np.random.default_rng(0).standard_normal((1, 3, 40, 36))
                                        .astype(np.float32)})[0]
    grid = tuple(f - 4 + 1 for f in features.shape[2:])
    locations = np.arange(int(np.prod(grid)))
    head = validation._Head(original, "features", ["logits", "box"])
    calls = []
    together = validation.crop_and_forward(head, features, (4, 4), grid, locations,
                                           progress=lambda done, total: calls.append((done, total)))
    one_by_one = validation.crop_and_forward(head, features, (4, 4), grid, locations, batch_bytes=1)
    for a, b in zip(together, one_by_one):
        assert a.shape == (1, b.shape[1], locations.size)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert calls == [(locations.size, locations.size)]


def test_a_head_that_bakes_its_batch_size_runs_one_window_per_call(fixture_path, caplog):
    caplog.set_level(logging.INFO, logger="fc2conv_onnx.prove.validate")
    report = fc2conv_onnx.convert_with_report(str(fixture_path("reshape_batch_minus1"))).report  # Reshape [1, -1]
    assert all(c.passed for c in report.checks)
    assert "does not take windows in batches" in caplog.text


def test_validate_pair_needs_the_outputs_and_a_head(fixture_path):
    original = onnx.load(str(fixture_path("softmax_opset13")))
    converted = fc2conv_onnx.convert(original)
    next(n for n in converted.graph.node if "probabilities" in n.output).output[0] = "renamed"
    converted.graph.output[0].name = "renamed"
    with pytest.raises(fc2conv_onnx.ValidationError, match="no output 'probabilities'"):
        fc2conv_onnx.validate_pair(original, converted)
    with pytest.raises(fc2conv_onnx.NothingToConvertError):
        fc2conv_onnx.validate_pair(str(fixture_path("no_fc_head")), str(fixture_path("no_fc_head")))


def test_a_wrong_geometry_is_reported_as_a_failed_check(fixture_path, monkeypatch):
    """If our size rules disagreed with onnxruntime, the conversion would be refused, not written."""
    real = api.plan_geometry

    def off_by_one(graph, plan):
        return tuple(g.__class__(**{**g.__dict__, "feature_window": tuple(w + 1 for w in g.feature_window)})
                     for g in real(graph, plan))

    monkeypatch.setattr(api, "plan_geometry", off_by_one)
    with pytest.raises(fc2conv_onnx.ValidationError, match="geometry.*predicts a"):
        fc2conv_onnx.convert(str(fixture_path("dress_detector")))

"""Output geometry: computed from the trunk's graph, checked by brute force against onnxruntime runs.

Brute force: perturb one input hyperplane (every pixel at coordinate p on one axis) and see which output
cells change. For a cell whose receptive field lies inside the input, the changed coordinates must span
exactly `receptive_field_of(cell)`; near the border, they must stay inside it.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fc2conv_onnx
from fc2conv_onnx.model.geometry import Geometry, Unknown
from fc2conv_onnx.model.marker import CONVERTED_KEY

from builders import layered_classifier
from equivalence import run


def conv(rank, kernel, stride=1, pads=None, dilation=1, **extra):
    def per_axis(v):
        return list(v) if isinstance(v, (list, tuple)) else [v] * rank
    attrs = dict(kernel_shape=per_axis(kernel), strides=per_axis(stride), dilations=per_axis(dilation), **extra)
    if "auto_pad" not in extra:
        attrs["pads"] = pads if pads is not None else [0] * (2 * rank)
    return ("Conv", attrs)


def pool(op, rank, kernel, stride, pads=None, **extra):
    return (op, dict(kernel_shape=[kernel] * rank, strides=[stride] * rank,
                     pads=pads if pads is not None else [0] * (2 * rank), **extra))


TRUNKS = {
    "1d": (1, (40,), [conv(1, 5, 2, [2, 1]), ("BatchNormalization", {}), pool("AveragePool", 1, 3, 2, [1, 1]),
                      conv(1, 3, 1, [2, 2], dilation=2)]),
    "2d": (2, (30, 26), [("Pad", {"pads": [1, 2, 0, 1]}), conv(2, (3, 2), (2, 1), [1, 0, 0, 1], dilation=(1, 2)),
                         ("Concat", {"branches": [conv(2, 1), conv(2, 3, 1, [1, 1, 1, 1])]}),
                         pool("AveragePool", 2, 2, 2), conv(2, 3, 1)]),
    "3d": (3, (12, 10, 12), [conv(3, 3, 2, [1] * 6), ("Tanh", {}), conv(3, 2, 1, [0, 1, 0, 1, 0, 1], dilation=2),
                             pool("AveragePool", 3, 2, 1)]),
}


def converted_with_geometry(model):
    conversion = fc2conv_onnx.convert_with_report(model)
    (geometry,) = conversion.report.geometry
    assert isinstance(geometry, Geometry), geometry
    return conversion.model, geometry


@pytest.mark.parametrize("name", sorted(TRUNKS))
def test_receptive_field_matches_brute_force(name):
    rank, size, stages = TRUNKS[name]
    converted, geometry = converted_with_geometry(layered_classifier(rank, size, stages))
    assert geometry.window == size and geometry.offset == (0,) * rank
    big = tuple(t + 8 * s for t, s in zip(size, geometry.stride))
    base = np.random.default_rng(0).standard_normal((1, 2) + big).astype(np.float32)
    reference = run(converted, {"image": base})["logits"]
    grid = reference.shape[2:]
    assert grid == geometry.grid(big)
    scale = np.abs(reference).max()
    for axis in range(rank):
        changed_by = {i: [] for i in range(grid[axis])}  # cell index on this axis -> input coordinates
        for p in range(big[axis]):
            image = base.copy()
            image[(slice(None), slice(None)) + (slice(None),) * axis + (p,)] += 1.0
            diff = np.abs(run(converted, {"image": image})["logits"] - reference)
            others = tuple(a + 2 for a in range(rank) if a != axis) + (0, 1)
            for i in np.flatnonzero(diff.max(axis=others) > 1e-6 * scale):
                changed_by[int(i)].append(p)
        interior = 0
        for i, coordinates in changed_by.items():
            cell = [0] * rank
            cell[axis] = i
            box = geometry.receptive_field_of(cell)
            start, stop = box.start[axis], box.stop[axis]
            assert coordinates and start <= min(coordinates) and max(coordinates) < stop, (axis, i, box)
            if start >= 0 and stop <= big[axis]:
                interior += 1
                assert (min(coordinates), max(coordinates) + 1) == (start, stop), (axis, i, coordinates[:3], box)
        assert interior > 0, f"no cell with its receptive field inside the input on axis {axis}"


GRID_TRUNKS = {
    "floor": (2, (20, 17), [conv(2, 3, 2, [1, 1, 1, 1]), pool("MaxPool", 2, 3, 2)]),
    "ceil_mode": (2, (21, 18), [pool("MaxPool", 2, 3, 2, [1, 0, 1, 0], ceil_mode=1), conv(2, 3, 2)]),
    "same_upper": (2, (17, 20), [conv(2, 3, 2, None, auto_pad="SAME_UPPER"), pool("AveragePool", 2, 2, 2)]),
    "same_lower": (1, (19,), [("Conv", dict(kernel_shape=[4], strides=[3], auto_pad="SAME_LOWER")), conv(1, 2)]),
    "valid": (3, (9, 11, 10), [("Conv", dict(kernel_shape=[3, 3, 3], strides=[2, 2, 2], auto_pad="VALID"))]),
}


@pytest.mark.parametrize("name", sorted(GRID_TRUNKS))
def test_predicted_grid_matches_runs_at_many_sizes(name):
    rank, size, stages = GRID_TRUNKS[name]
    converted, geometry = converted_with_geometry(layered_classifier(rank, size, stages, opset=13))
    rng = np.random.default_rng(1)
    for extra in range(0, 2 * max(geometry.stride) + 2):
        shape = tuple(t + extra + axis for axis, t in enumerate(size))
        image = rng.standard_normal((1, 2) + shape).astype(np.float32)
        assert run(converted, {"image": image})["logits"].shape[2:] == geometry.grid(shape), shape
    assert geometry.grid(size) == (1,) * rank
    assert geometry.grid(tuple(t + 2 * s for t, s in zip(size, geometry.stride))) == (3,) * rank


def test_unpadded_trunk_cells_equal_the_classifier_on_image_crops():
    """No padding: the receptive field is the window, and cell i is the original run on window_of(i)."""
    rank, size = 2, (16, 12)
    original = layered_classifier(rank, size, [conv(2, 3), pool("AveragePool", 2, 2, 2), conv(2, 3, 2)])
    converted, geometry = converted_with_geometry(original)
    assert not geometry.padded and geometry.receptive_field == size and geometry.stride == (4, 4)
    big = (16 + 3 * 4, 12 + 2 * 4)
    image = np.random.default_rng(2).standard_normal((1, 2) + big).astype(np.float32)
    dense = run(converted, {"image": image})["logits"]
    for cell in np.ndindex(*dense.shape[2:]):
        crop = image[(slice(None), slice(None)) + geometry.window_of(cell).slices()]
        np.testing.assert_allclose(dense[(...,) + cell], run(original, {"image": crop})["logits"],
                                   rtol=1e-4, atol=1e-5)


def test_geometry_is_stored_in_metadata_reported_and_read_back(fixture_path, tmp_path):
    output = tmp_path / "dress.onnx"
    report = fc2conv_onnx.convert_file(fixture_path("dress_detector"), output)
    marker = json.loads(next(p.value for p in onnx.load(str(output)).metadata_props if p.key == CONVERTED_KEY))
    stored = marker["heads"][0]["geometry"]
    assert stored["stride"] == [32, 32] and stored["window"] == [128, 64] and stored["offset"] == [0, 0]
    assert "stride 32x32, window 128x64, offset 0x0" in report.to_text()
    assert "not the classifier run on the image crop alone" in report.to_text()  # the trunk pads
    assert list(report.to_dict()["geometry"][0]["stride"]) == [32, 32]
    assert fc2conv_onnx.read_geometry(output)["score"] == report.geometry[0]
    box = fc2conv_onnx.window_of(output, (12, 30))
    assert (box.start, box.stop) == ((384, 960), (512, 1024))  # the last cell of a 512x1024 frame
    assert box.clipped((500, 1000)).stop == (500, 1000)
    with pytest.raises(ValueError, match="3 axes"):
        fc2conv_onnx.window_of(output, (1, 2, 3))


def test_a_trunk_op_without_a_local_form_leaves_geometry_unknown_but_converts():
    stages = [conv(2, 3, 2, [1, 1, 1, 1]), ("InstanceNormalization", None)]
    model = layered_classifier(2, (12, 12), stages[:1])
    # put InstanceNormalization (normalizes over the whole map) between the conv and the head
    graph = model.graph
    scale = onnx.numpy_helper.from_array(np.ones(2, np.float32), "in_scale")
    bias = onnx.numpy_helper.from_array(np.zeros(2, np.float32), "in_bias")
    graph.initializer.extend([scale, bias])
    flatten = next(n for n in graph.node if n.op_type == "Flatten")
    flatten.input[0] = "normalized"
    index = list(graph.node).index(flatten)
    graph.node.insert(index, onnx.helper.make_node("InstanceNormalization", ["features", "in_scale", "in_bias"],
                                                   ["normalized"], name="norm"))
    conversion = fc2conv_onnx.convert_with_report(model)
    (geometry,) = conversion.report.geometry
    assert isinstance(geometry, Unknown) and "InstanceNormalization 'norm'" in geometry.reason
    assert "geometry unknown" in conversion.report.to_text()
    assert [c.check for c in conversion.report.checks] == ["training size", "windows"]


@pytest.mark.parametrize("stem, options", [("resnet_like_maxpool", {"pooling": "window"}), ("dress_detector", {})])
def test_inputs_smaller_than_the_window_give_a_cell_down_to_the_smallest_size_and_no_lower(fixture_path, stem,
                                                                                          options):
    """A padded trunk gives one cell for inputs a little smaller than the window (the cell sees padding);
    `grid` says how many cells a run gives down to `smallest_size`, and refuses in one line below it."""
    from fc2conv_onnx import InputError

    converted = fc2conv_onnx.convert(str(fixture_path(stem)), **options)
    geometry = next(iter(fc2conv_onnx.read_geometry(converted).values()))
    smallest = geometry.smallest_size()
    assert all(s <= w for s, w in zip(smallest, geometry.window))
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for size in (smallest, tuple(s + 1 for s in smallest)):
        image = np.zeros((1, 3) + size, np.float32)
        assert session.run(None, {name: image})[0].shape[2:] == geometry.grid(size), size
    # Below it the converted model is not run here: onnxruntime fails, or on some trunks crashes the process.
    with pytest.raises(InputError, match="gives no output cell: the smallest input the model takes is"):
        geometry.grid(tuple(s - 1 for s in smallest))


def nhwc_slice_classifier(axis: int) -> onnx.ModelProto:
    """A trunk that runs a step on a channels-last map (Transpose to NHWC and back, as converted Keras
    layers do): a Slice of it along `axis` (3: the channels; 1: the rows), then a Conv, Flatten -> Gemm."""
    from builders import ModelBuilder
    b = ModelBuilder(opset=13, seed=7)
    x = b.node("Relu", [b.conv(b.input("image", [1, 3, 16, 16]), 3, 8, 2, stride=2)])  # [1, 8, 8, 8]
    ints = lambda name, values: b.const(b.fresh(name), np.array(values, np.int64))  # noqa: E731
    x = b.node("Slice", [b.node("Transpose", [x], perm=[0, 2, 3, 1]), ints("start", [0]), ints("end", [4]),
                         ints("axis", [axis])])
    x = b.node("Relu", [b.conv(b.node("Transpose", [x], perm=[0, 3, 1, 2]), 4 if axis == 3 else 8, 4, 2)])
    features = 4 * 8 * 8 if axis == 3 else 4 * 4 * 8
    b.gemm(b.node("Flatten", [x]), features, 3, output=b.output("logits", [1, 3]), bias_shape=(3,))
    return b.build(f"nhwc_slice_{axis}")


def test_a_slice_is_per_location_on_the_channel_axis_of_the_maps_layout_alone():
    """Axis 1 is the channels of a channels-first map but the rows of a channels-last one: a Slice there
    cuts the image, so the geometry is unknown, with the reason; along the last axis of a channels-last map
    it is per location, and the geometry holds (the validator checks the grid it predicts)."""
    channels = fc2conv_onnx.convert_with_report(nhwc_slice_classifier(3)).report
    geometry, = channels.geometry
    assert isinstance(geometry, Geometry) and geometry.window == (16, 16) and geometry.stride == (2, 2)
    assert any(c.check == "geometry" for c in channels.checks)  # the validator ran the grid it predicts
    rows = fc2conv_onnx.convert_with_report(nhwc_slice_classifier(1)).report
    unknown, = rows.geometry
    assert isinstance(unknown, Unknown) and "cuts a spatial axis" in unknown.reason, unknown


def test_a_pad_of_the_channel_axis_leaves_the_geometry_known(fixture_path):
    """dlib's residual shortcut (reproduced in fixtures/builders.py): pooled, then padded on the channels alone.
    The spatial geometry is the block's; before, a Pad of any non-spatial axis made it unknown."""
    report = fc2conv_onnx.convert_with_report(str(fixture_path("channel_pad_shortcut"))).report
    geometry = report.geometry[0]
    assert isinstance(geometry, Geometry) and geometry.stride == (8, 8) and geometry.window == (32, 32)
    assert any(c.check == "geometry" for c in report.checks)  # the grid a run gives, checked as predicted

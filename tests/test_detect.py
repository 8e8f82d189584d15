"""detect and --emit-detections: known answers on the spot finder fixtures (chosen weights, a scene of disks
of three sizes with known places), the numpy steps against onnxruntime's NonMaxSuppression, and the
emitted detector against detect."""
from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import onnx
import pytest
from PIL import Image
from test_cli import cli

import fc2conv_onnx
from fc2conv_onnx.apps.records import CSV_COLUMNS
from fc2conv_onnx.errors import InputError, ValidationError
from fc2conv_onnx.model import detections
from fc2conv_onnx.model.detections import DetectionSettings

from conftest import FIXTURES

sys.path.insert(0, str(FIXTURES))
import make_disks  # noqa: E402

DISKS = FIXTURES / "disks.png"
#: Each spot finder form and how it converts: NCHW and NHWC flatten heads, a global-pool head in window
#: mode; with the trunk's stride 4 and with --stride 2.
FORMS = [("spot_finder", {}), ("spot_finder_nhwc", {}), ("spot_finder_pooled", {"pooling": "window"}),
         ("spot_finder", {"stride": 2}), ("spot_finder_nhwc", {"stride": 2}),
         ("spot_finder_pooled", {"pooling": "window", "stride": 2})]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each form converted once: (stem, options) -> path."""
    folder = tmp_path_factory.mktemp("spot_finders")
    paths = {}
    for index, (stem, options) in enumerate(FORMS):
        paths[index] = folder / f"{stem}_{index}.onnx"
        fc2conv_onnx.convert_file(FIXTURES / f"{stem}.onnx", paths[index], **options)
    return paths


def test_the_scene_file_is_what_its_script_makes():
    assert np.array_equal(np.asarray(Image.open(DISKS).convert("RGB")), make_disks.scene())


def matches(found, regression=False):
    """For each disk, the IoU of the best detection at its own scale; and the detections that match no disk."""
    expected = list(make_disks.boxes(regression))
    best = [0.0] * len(expected)
    strays = []
    for record in found:
        overlaps = [float(detections.iou(np.asarray(box), np.asarray([record.box]))[0]) if scale == record.scale
                    else 0.0 for box, scale in expected]
        if max(overlaps) < 0.5:
            strays.append(record)
        index = int(np.argmax(overlaps))
        best[index] = max(best[index], overlaps[index])
    return best, strays


@pytest.mark.parametrize("form", range(len(FORMS)), ids=[f"{s}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                                                         for s, o in FORMS])
def test_detect_finds_every_disk_at_its_scale_and_nothing_else(converted, form):
    found = fc2conv_onnx.detect(converted[form], [DISKS], scales=(1, 0.5, 0.25))
    best, strays = matches(found.records)
    assert min(best) >= 0.5 and not strays, (best, strays)
    assert len(found.records) == len(make_disks.DISKS)
    # The same with the regression output: each box is the disk's own.
    moved = fc2conv_onnx.detect(converted[form], [DISKS], scales=(1, 0.5, 0.25), regression="box")
    best, strays = matches(moved.records, regression=True)
    assert min(best) >= 0.5 and not strays, (best, strays)
    assert [r.score for r in found.records] == sorted((r.score for r in found.records), reverse=True)


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_at_each_scale_alone_only_the_disks_of_that_size_are_found(converted, scale):
    found = fc2conv_onnx.detect(converted[0], [DISKS], scales=(scale,), threshold=0.5)
    expected = [box for box, at in make_disks.boxes() if at == scale]
    assert len(found.records) == len(expected)
    for record in found.records:
        assert max(detections.iou(np.asarray(record.box), np.asarray(expected))) >= 0.5
        assert record.scale == scale


def test_object_sizes_make_the_pyramid(converted):
    found = fc2conv_onnx.detect(converted[0], [DISKS], min_size=32, max_size=128, scale_step=2)
    assert found.scales[str(DISKS)] == (1.0, 0.5, 0.25)
    assert matches(found.records)[1] == [] and len(found.records) == 6
    # Default sizes: from the window to the whole picture; each step 1.25 smaller, down to 32/256.
    default = detections.pyramid((32, 32), (256, 384))
    assert default[0] == 1.0 and default[-1] >= 32 / 256 and default[-1] / 1.25 < 32 / 256
    assert np.allclose(np.array(default[:-1]) / np.array(default[1:]), 1.25)
    # Objects of 16 to 64 pixels: from scale 2 down to 0.5 (the next, 0.42, is below it).
    assert np.allclose(detections.pyramid((32, 32), (256, 384), min_size=16, max_size=64), 2 / 1.25 ** np.arange(7))
    # A model whose trunk takes nothing below 64x64 (its training size, larger than a --pooling none window):
    # the pyramid stops where the picture is still that large, not where it still holds a window.
    taken = detections.pyramid((32, 32), (256, 384), smallest=(64, 64))
    assert taken[-1] >= 64 / 256 and taken[-1] / 1.25 < 64 / 256 and taken == default[:len(taken)]


def test_every_scale_is_checked_before_anything_runs(converted, monkeypatch, tmp_path):
    """A scale at which the picture is smaller than the window is refused before the first run, naming the
    picture and the scale, for detect and for heatmap's --scales alike."""
    from fc2conv_onnx.apps.maps import MapModel
    monkeypatch.setattr(MapModel, "run", lambda *a, **k: pytest.fail("the model ran"))
    with pytest.raises(fc2conv_onnx.InputError, match=r"image 38x26 \(width x height\) \(.*disks.png\) at scale 0.1 "
                                                      r"is smaller than the model's 32x32 window"):
        fc2conv_onnx.detect(converted[0], [DISKS], scales=(1.0, 0.5, 0.1))
    with pytest.raises(fc2conv_onnx.InputError, match=r"at scale 0.1 is smaller than the model's 32x32 window"):
        fc2conv_onnx.heatmap(converted[0], DISKS, tmp_path / "h.png", scales=(1.0, 0.1))


def test_boxes_are_windows_mapped_back_through_the_scale_and_clipped():
    from fc2conv_onnx.model.geometry import Geometry
    where = Geometry(input="image", stride=(4, 8), window=(32, 16), offset=(2, -3), receptive_field=(32, 16),
                     receptive_offset=(2, -3), feature_window=(8, 2))
    scores = np.zeros((1, 3, 4), np.float32)
    scores[0, 2, 0] = 0.9   # row 2, column 0: window y 10..42, x -3..13
    records = detections.candidates(scores, None, where, DetectionSettings(), "p", 0.5, (0.5, 0.5), (60, 50))
    (record,) = records
    # At scale 0.5 the picture's pixels are twice the model's: y 20..84 -> clipped to 60; x -6..26 -> 0..26.
    assert record.box == (0.0, 20.0, 26.0, 60.0) and record.cell == (2, 0) and record.scale == 0.5


def test_numpy_suppression_equals_onnxruntime_on_random_boxes():
    import onnxruntime as ort
    rng = np.random.default_rng(3)
    n = 300
    corners = rng.uniform(0, 100, (n, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(5, 40, (n, 2)).astype(np.float32)], axis=1)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    nodes = [onnx.helper.make_node("NonMaxSuppression", ["b", "s", "m", "i", "t"], ["o"])]
    graph = onnx.helper.make_graph(nodes, "nms", [
        onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1, n, 4]),
        onnx.helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [1, 1, n])],
        [onnx.helper.make_tensor_value_info("o", onnx.TensorProto.INT64, None)],
        [onnx.numpy_helper.from_array(np.array([n], np.int64), "m"),
         onnx.numpy_helper.from_array(np.array([0.4], np.float32), "i"),
         onnx.numpy_helper.from_array(np.array([-1.0], np.float32), "t")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    selected = session.run(None, {"b": boxes[None], "s": scores[None, None]})[0][:, 2]
    kept = detections.suppressed(boxes, scores, 0.4)
    assert 20 < len(kept) < n and list(selected) == kept


@pytest.mark.parametrize("form", range(len(FORMS)), ids=[f"{s}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                                                         for s, o in FORMS])
def test_the_emitted_detector_finds_what_detect_finds(tmp_path, form):
    stem, options = FORMS[form]
    out = tmp_path / "detector.onnx"
    report = fc2conv_onnx.convert_file(FIXTURES / f"{stem}.onnx", out, emit_detections=DetectionSettings(
        regression="box"), **options)
    assert report.checks[-1].check == "detections" and "detector appended" in report.to_text()
    # On the scene at scale 1, in onnxruntime: the three small disks, as detect finds them.
    import onnxruntime as ort
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    picture = np.asarray(Image.open(DISKS).convert("RGB"), np.float32)[None] / 255
    if "nhwc" not in stem:
        picture = picture.transpose(0, 3, 1, 2)
    boxes, scores, classes, batch = session.run(["boxes", "scores", "classes", "batch_index"],
                                                {"image": np.ascontiguousarray(picture)})
    found = fc2conv_onnx.detect(out, [DISKS], regression="box").records
    assert len(found) == 3 and boxes.shape == (3, 4) and set(classes) == {0} and set(batch) == {0}
    assert np.allclose(boxes, [r.box for r in found]) and np.allclose(scores, [r.score for r in found])
    recorded = {p.key: p.value for p in onnx.load(str(out)).metadata_props}["fc2conv_onnx.detector"]
    assert json.loads(recorded)["regression"] == "box" and json.loads(recorded)["threshold"] == 0.5


def test_the_detector_check_fails_on_a_detector_that_differs(tmp_path, monkeypatch):
    """A detector whose boxes have x and y swapped is refused, and nothing is written."""
    from fc2conv_onnx.rewrite import detector_graph
    real = detector_graph.detector_nodes

    def swapped(parts, settings, opset):
        nodes, constants = real(parts, settings, opset)
        for node in nodes:
            if node.op_type == "Concat" and len(node.input) == 4 and node.input[0].startswith(detector_graph.PREFIX):
                node.input[0], node.input[1] = node.input[1], node.input[0]  # x and y swapped
                break
        return nodes, constants
    monkeypatch.setattr(detector_graph, "detector_nodes", swapped)
    out = tmp_path / "wrong.onnx"
    with pytest.raises(ValidationError, match="does not give detect's detections"):
        fc2conv_onnx.convert_file(FIXTURES / "dress_detector.onnx", out, emit_detections=True)
    assert not out.exists()


def test_the_command_line_writes_json_csv_and_drawings(converted, tmp_path):
    code, stdout, stderr = cli("detect", converted[0], DISKS, "-o", tmp_path / "d.json", "--scales", "1,0.5,0.25",
                               "--draw", tmp_path / "d.png")
    assert code == 0, stderr
    records = json.loads((tmp_path / "d.json").read_text())
    assert len(records) == 6 and set(records[0]) == {"image", "box", "score", "class", "scale", "cell"}
    assert "6 in 1 picture(s)" in stdout and Image.open(tmp_path / "d.png").size == (768, 512)
    code, stdout, stderr = cli("detect", converted[0], DISKS, FIXTURES / "spots.png", "-o", tmp_path / "d.csv",
                               "--min-size", "32", "--max-size", "128", "--scale-step", "2", "--draw", tmp_path / "all")
    assert code == 0, stderr
    lines = (tmp_path / "d.csv").read_text().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS) and len(lines) == 7
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["disks.png", "spots.png"]
    (tmp_path / "one").mkdir()
    assert cli("detect", converted[0], DISKS, "-o", tmp_path / "e.json", "--draw", tmp_path / "one")[0] == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["disks.png"]
    code, stdout, stderr = cli("detect", converted[0], DISKS, "-o", "-", "--class", "0", "--threshold", "0.9")
    assert code == 0 and json.loads(stdout) and "written: standard output" in stderr


def test_pictures_of_any_8_bit_mode_give_the_same_answer_and_16_bit_ones_are_refused(converted, tmp_path):
    gray = np.asarray(Image.open(DISKS).convert("L"))
    for mode in ("L", "RGBA", "P"):
        Image.fromarray(gray).convert(mode).save(tmp_path / f"{mode}.png")
        found = fc2conv_onnx.detect(converted[0], [tmp_path / f"{mode}.png"], scales=(1, 0.5, 0.25))
        assert len(found.records) == 6 and not matches(found.records)[1], mode
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # Pillow would clip it to white
    with pytest.raises(InputError, match="16 or 32 bits"):
        fc2conv_onnx.detect(converted[0], [tmp_path / "deep.png"])


def test_logits_are_said_and_softmax_of_one_class_refused(tmp_path):
    out = tmp_path / "spot.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "bright_spot_detector.onnx", out)
    found = fc2conv_onnx.detect(out, [FIXTURES / "spots.png"], threshold=0.3)
    assert found.logits and "logits" in found.to_text()
    assert not fc2conv_onnx.detect(out, [FIXTURES / "spots.png"], activation="sigmoid", threshold=0.3).logits
    with pytest.raises(InputError, match="softmax over one class"):
        fc2conv_onnx.detect(out, [FIXTURES / "spots.png"], activation="softmax")


@pytest.mark.parametrize("args, code, words", [
    (["--scales", "1", "--min-size", "32"], 2, "cannot go together"),
    (["--class", "3"], 3, "classes 0 to 0"),
    (["--regression", "nope"], 3, "no such output"),
    (["--regression", "score"], 3, "needs 4"),
    (["--iou", "2"], 2, "between 0 and 1"),
    (["--scales", "1,0.1"], 3, "at scale 0.1 is smaller than the model"),
    (["--min-size", "500"], 3, "no scale holds"),
    (["--scale-step", "1"], 3, "must be above 1"),
])
def test_bad_detect_requests_get_one_line(converted, tmp_path, args, code, words):
    got, _, stderr = cli("detect", converted[0], DISKS, "-o", tmp_path / "d.json", *args)
    lines = stderr.strip().splitlines()
    assert got == code and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert words is None or words in stderr
    assert not (tmp_path / "d.json").exists()


def test_convert_refuses_detection_flags_without_emit_and_unusable_outputs(tmp_path):
    code, _, stderr = cli("convert", FIXTURES / "spot_finder.onnx", "-o", tmp_path / "x.onnx", "--iou", "0.3")
    assert code == 2 and "--emit-detections" in stderr
    code, _, stderr = cli("convert", FIXTURES / "spot_finder.onnx", "-o", tmp_path / "x.onnx", "--emit-detections",
                          "--regression", "score")
    # (its one output is the score: as its own regression it is refused before the channel count matters)
    assert code == 3 and "both the score output and the regression" in stderr and not (tmp_path / "x.onnx").exists()
    code, _, stderr = cli("convert", FIXTURES / "caffe2_alexnet_opset9_inputs.onnx", "-o", tmp_path / "x.onnx",
                          "--emit-detections")
    assert code == 3 and "opset 11" in stderr


def test_one_session_serves_every_picture_and_scale_and_progress_counts_the_runs(converted, monkeypatch):
    from fc2conv_onnx.apps import maps
    opened = []
    real = maps.ort.file_session
    monkeypatch.setattr(maps.ort, "file_session", lambda *a, **k: opened.append(1) or real(*a, **k))
    calls = []
    found = fc2conv_onnx.detect(converted[0], [DISKS, FIXTURES / "spots.png"], scales=(1, 0.5, 0.25),
                                progress=lambda done, total: calls.append((done, total)))
    assert len(opened) == 1 and calls == [(i, 6) for i in range(1, 7)]
    record = json.loads(json.dumps(found.to_dict()))
    assert record["scales"] == {str(DISKS): [1.0, 0.5, 0.25], str(FIXTURES / "spots.png"): [1.0, 0.5, 0.25]}
    assert len(record["detections"]) == 6 and record["settings"]["output_name"] == "score"
    with pytest.raises(TypeError, match="unknown detection setting"):
        fc2conv_onnx.detect(converted[0], [DISKS], thresold=0.3)
    assert {r.image for r in found.records} == {str(DISKS)}  # the spots scene has no disk of these sizes


def test_the_readme_picture_is_what_the_commands_make(tmp_path):
    """docs/detect.png comes from the README's two commands (compared pixel by pixel, allowing the labels'
    text, whose font differs between Pillow versions)."""
    model = tmp_path / "spot_finder_fcn.onnx"
    assert cli("convert", FIXTURES / "spot_finder.onnx", "-o", model)[0] == 0
    out = tmp_path / "detect.png"
    code, _, stderr = cli("detect", model, DISKS, "-o", tmp_path / "disks.json", "--min-size", "32", "--max-size",
                          "128", "--scale-step", "2", "--regression", "box", "--draw", out)
    assert code == 0, stderr
    made, shipped = np.asarray(Image.open(out)), np.asarray(Image.open(FIXTURES.parent / "docs" / "detect.png"))
    assert made.shape == shipped.shape == (512, 768, 3)
    assert (made == shipped).all(axis=-1).mean() > 0.995


def test_a_model_without_cells_to_place_is_refused_with_the_reason(tmp_path):
    """A kept global pool gives one prediction per image: there is no window to make a box of."""
    kept = tmp_path / "kept.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "spot_finder_pooled.onnx", kept)
    code, _, stderr = cli("detect", kept, DISKS, "-o", tmp_path / "d.json")
    assert code == 3 and "one prediction per image" in stderr and not (tmp_path / "d.json").exists()
    code, _, stderr = cli("convert", FIXTURES / "spot_finder_pooled.onnx", "-o", tmp_path / "x.onnx",
                          "--emit-detections")
    assert code == 3 and "one prediction per image" in stderr and not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("stem, options", [
    ("torch_dynamo_static", {}),           # PyTorch names its output "scores": the detector's get a prefix
    ("torch_ts_fp16", {}),                 # fp16 maps: cast to float32 for NonMaxSuppression, as detect does
    ("tf_keras_nhwc_opset13", {}),         # tf2onnx, NHWC
    ("torch_alexnet_qdq_per_tensor", {}),  # QDQ
    ("timm_convnext_ts", {"pooling": "window"}),
])
def test_models_from_real_exporters_get_a_proven_detector(stem, options):
    model = FIXTURES / "exported" / f"{stem}.onnx"
    original_outputs = [o.name for o in onnx.load(str(model)).graph.output]
    every = DetectionSettings(threshold=-1e3)  # every cell's best class is a candidate: suppression does the work
    conversion = fc2conv_onnx.convert_with_report(model, emit_detections=every, **options)
    outputs = [o.name for o in conversion.model.graph.output]
    expected = [("detection_" if "scores" in original_outputs else "") + name
                for name in ("boxes", "scores", "classes", "batch_index")]
    assert outputs == original_outputs + expected
    assert conversion.report.checks[-1].check == "detections"
    # Independently of the tool's own check: onnxruntime runs the written model on a random input, and its
    # detections are detect's numpy steps applied to its own maps.
    import onnxruntime as ort

    from fc2conv_onnx.prove import detector_check
    from fc2conv_onnx.rewrite import detector_graph
    planned = fc2conv_onnx.inspect(model, **options)
    plain = fc2conv_onnx.convert(model, validate=False, **options)  # the maps the detector reads
    parts = detector_graph.detector_parts(plain, planned.plan, planned.geometry, DetectionSettings())
    assert parts.outputs == tuple(expected)
    image = conversion.model.graph.input[0]
    nhwc = parts.geometry.layout == "channels_last"
    size = tuple(w + 3 * s for w, s in zip(parts.geometry.window, parts.geometry.stride))
    shape = (1, *size, 3) if nhwc else (1, 3, *size)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(image.type.tensor_type.elem_type)
    session = ort.InferenceSession(conversion.model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(None, {image.name: np.random.default_rng(5).uniform(0, 1, shape).astype(dtype)})
    ran = dict(zip(outputs, values))
    scores = ran[parts.scores]
    want = detector_check.expected(np.moveaxis(scores, -1, 1) if nhwc else scores, None, parts,
                                   replace(every, output_name=parts.scores), size)
    got = tuple(ran[name] for name in expected)
    assert len(want[1]) > 0 and detector_check.compare("", got, want, max(size)) == ""

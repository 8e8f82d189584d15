"""Cascades: each box detect keeps is looked at again by further classifiers on its image crop. Every test computes
what a stage should give by hand - the crop cut with Pillow (which fills what lies past the picture with zeros),
resized with Pillow, the classifier run with onnxruntime - and compares numbers."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from test_cli import cli

import fc2conv_onnx
from fc2conv_onnx import DetectionSettings, InputError, Preprocessing, Stage
from fc2conv_onnx.model.detections import best_first, clipped

from conftest import FIXTURES

DISKS = FIXTURES / "disks.png"
ORIGINAL = FIXTURES / "spot_finder.onnx"
NHWC = FIXTURES / "spot_finder_nhwc.onnx"
#: A first stage that keeps many boxes (15 on the scene), for the stages to sort out.
LOOSE = dict(threshold=0.05, iou=0.9)


def by_hand(records, threshold, *, square=False, transpose=False, regression=False, scale=255.0, iou=0.5,
            picture=DISKS, model=ORIGINAL, size=(32, 32)):
    """A classifier (NCHW, input "image" of `size`, height x width; the spot finder by default) rescoring `records`
    as a stage should: each box (made square about its centre when asked) rounded to whole pixels, cut from the
    picture, resized to its input (box filter when it shrinks, else bilinear; to width x height swapped when it
    reads crops transposed, then transposed), / scale; kept above the threshold, moved by its "box" output,
    suppressed."""
    picture = Image.open(picture).convert("RGB")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    kept = []
    for record in records:
        x1, y1, x2, y2 = record.box
        if square:
            side, cx, cy = max(x2 - x1, y2 - y1), (x1 + x2) / 2, (y1 + y2) / 2
            x1, y1, x2, y2 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
        cut = [int(v) for v in np.round([x1, y1, x2, y2])]
        crop = picture.crop(cut)
        target = (size[0], size[1]) if transpose else (size[1], size[0])  # Pillow's (width, height)
        shrinks = crop.size[0] >= target[0] and crop.size[1] >= target[1]
        crop = crop.resize(target, Image.BOX if shrinks else Image.BILINEAR)
        if transpose:
            crop = crop.transpose(Image.Transpose.TRANSPOSE)
        pixels = (np.asarray(crop, np.float32) / np.float32(scale)).transpose(2, 0, 1)[None]
        results = session.run(["score", "box"] if regression else ["score"], {"image": pixels})
        score = float(results[0].ravel()[0])
        if score > threshold:
            box = np.asarray(cut, np.float32)
            if regression:
                box = box + results[1].ravel().astype(np.float32) * np.asarray(
                    [cut[2] - cut[0], cut[3] - cut[1]] * 2, np.float32)
            box = clipped(box[None], (picture.size[1], picture.size[0]))[0]
            kept.append(record.__class__(record.image, tuple(box.tolist()), score, 0, record.scale, record.cell))
    return best_first(kept, iou)


def scored(**settings):
    """A stage's settings reading the spot finder's "score" output."""
    return DetectionSettings(output_name="score", **settings)


def same(got, expected):
    assert len(got) == len(expected) > 0
    for a, b in zip(sorted(got, key=lambda r: r.cell), sorted(expected, key=lambda r: r.cell)):
        assert a.cell == b.cell and a.score == pytest.approx(b.score, abs=1e-5)
        np.testing.assert_allclose(a.box, b.box, atol=1e-3)


def test_a_stage_gives_its_classifier_on_each_kept_box(spot_finder):
    """The map's boxes, rescored by the original classifier on their crops: its own scores, as by hand; and a
    stage's threshold drops boxes the map kept."""
    plain = fc2conv_onnx.detect(spot_finder, [DISKS], **LOOSE).records
    for threshold in (0.01, 0.5):
        got = fc2conv_onnx.detect(spot_finder, [DISKS], **LOOSE,
                                  cascade=[Stage(ORIGINAL, scored(threshold=threshold, iou=0.9))]).records
        same(got, by_hand(plain, threshold, iou=0.9))
    assert 0 < len(by_hand(plain, 0.5, iou=0.9)) < len(plain)


@pytest.fixture(scope="module")
def on_noise(tmp_path_factory):
    """The dress detector converted, a noise picture, and its 64x128 boxes at two scales (not square, some resized
    down, some up)."""
    folder = tmp_path_factory.mktemp("noise")
    converted = folder / "dress_fcn.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "dress_detector.onnx", converted)
    noise = folder / "noise.png"
    Image.fromarray((np.random.default_rng(5).random((256, 192, 3)) * 255).astype(np.uint8)).save(noise)
    first = dict(threshold=0.0, iou=0.9, scales=(1.0, 0.8))
    return converted, noise, first, fc2conv_onnx.detect(converted, [noise], **first).records


@pytest.mark.parametrize("square", [False, True])
def test_squared_and_regressed_crops_as_by_hand(on_noise, square):
    """The spot finder on the boxes: squared or not (cut partly past the picture: zeros), resized to 32x32, moved by
    the stage's own regression. Noise and non-square boxes make squaring change the numbers."""
    converted, noise, first, proposals = on_noise
    stage = Stage(ORIGINAL, scored(threshold=0.0, regression="box", iou=0.9), square=square)
    got = fc2conv_onnx.detect(converted, [noise], **first, cascade=[stage]).records
    expected = by_hand(proposals, 0.0, square=square, regression=True, iou=0.9, picture=noise)
    same(got, expected)
    other = by_hand(proposals, 0.0, square=not square, regression=True, iou=0.9, picture=noise)
    assert sorted(r.score for r in other) != pytest.approx(sorted(r.score for r in expected), abs=1e-5)


@pytest.mark.parametrize("transpose", [False, True])
def test_a_transposed_stage_reads_its_crops_as_w_by_h(on_noise, transpose):
    """The dress detector (random weights, 128x64) as a stage: read as W x H, its crops are cut 128 wide and 64
    high, then transposed; its numbers differ from the crops read as they are."""
    converted, noise, first, proposals = on_noise
    stage = Stage(FIXTURES / "dress_detector.onnx", scored(threshold=0.0, iou=0.9), transpose=transpose)
    got = fc2conv_onnx.detect(converted, [noise], **first, cascade=[stage]).records
    hand = dict(iou=0.9, picture=noise, model=FIXTURES / "dress_detector.onnx", size=(128, 64))
    expected = by_hand(proposals, 0.0, transpose=transpose, **hand)
    same(got, expected)
    other = by_hand(proposals, 0.0, transpose=not transpose, **hand)
    assert sorted(r.score for r in other) != pytest.approx(sorted(r.score for r in expected), abs=1e-5)


def test_stages_run_in_order_and_a_channels_last_classifier_reads_the_same(spot_finder):
    """Two stages: the second rescoring what the first kept; the tf2onnx (NHWC) spot finder gives what the NCHW one
    gives; preprocessing is the stage's own."""
    plain = fc2conv_onnx.detect(spot_finder, [DISKS], threshold=0.3).records
    first = Stage(ORIGINAL, scored(threshold=0.2))
    second = Stage(NHWC, scored(threshold=0.4), Preprocessing(scale=200.0))
    got = fc2conv_onnx.detect(spot_finder, [DISKS], threshold=0.3, cascade=[first, second]).records
    same(got, by_hand(by_hand(plain, 0.2), 0.4, scale=200.0))
    alone = fc2conv_onnx.detect(spot_finder, [DISKS], threshold=0.3,
                                cascade=[Stage(NHWC, scored(threshold=0.2))]).records
    same(alone, by_hand(plain, 0.2))


def test_the_detector_runs_the_cascade_on_batches_as_detect_does(spot_finder):
    stage = Stage(ORIGINAL, scored(threshold=0.5))
    expected = fc2conv_onnx.detect(spot_finder, [DISKS], threshold=0.3, cascade=[stage]).records
    pixels = np.asarray(Image.open(DISKS).convert("RGB"))
    rows = fc2conv_onnx.Detector(spot_finder, threshold=0.3, cascade=[stage])({"image": [pixels], "id": ["d"]})
    assert sorted(rows["score"].tolist()) == pytest.approx(sorted(r.score for r in expected), abs=1e-6)


def test_the_command_line_reads_a_cascade_file(spot_finder, tmp_path):
    """--cascade FILE: stages keyed like detect's flags, models relative to the file's folder; the records are the
    API's."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "stage.onnx").write_bytes(ORIGINAL.read_bytes())
    (tmp_path / "c.json").write_text(json.dumps([{"model": "m/stage.onnx", "threshold": 0.2, "square": True,
                                                  "pixel-scale": 255, "class": 0, "output": "score"}]))
    code, _, stderr = cli("detect", spot_finder, DISKS, "-o", tmp_path / "r.json", "--threshold", "0.3",
                          "--cascade", tmp_path / "c.json")
    assert code == 0, stderr
    records = json.loads((tmp_path / "r.json").read_text())
    plain = fc2conv_onnx.detect(spot_finder, [DISKS], threshold=0.3).records
    expected = by_hand(plain, 0.2, square=True)
    assert sorted(r["score"] for r in records) == pytest.approx(sorted(r.score for r in expected), abs=1e-5)
    assert fc2conv_onnx.read_cascade(tmp_path / "c.json")[0].settings.classes == (0,)


@pytest.mark.parametrize("content, message", [
    ("{}", "must hold a list of stages"),
    ("[]", "must hold a list of stages"),
    ("[{\"threshold\": 0.5}]", "stage 1: give the classifier's file as \"model\""),
    ("[{\"model\": \"s.onnx\", \"treshold\": 0.5}]", "stage 1: unknown key 'treshold'; the keys are model"),
    ("[{\"model\": \"s.onnx\", \"iou\": 2, \"output\": \"score\"}]", "stage 1: iou 2"),
    ("[{\"model\": \"s.onnx\", \"layout\": \"chw\"}]", "layout 'chw'"),
    ("[{\"model\": \"s.onnx\", \"size\": [0, 3]}]", "size"),
    ("[{\"model\": \"s.onnx\"", "is not JSON"),
    ("[{\"model\": \"missing.onnx\"}]", "missing.onnx"),
    ("[{\"model\": \"s.onnx\", \"output\": \"nope\"}]", "has no output 'nope'"),
    ("[{\"model\": \"s.onnx\", \"output\": \"score\", \"size\": [24, 24]}]", "its crops are 32x32, not the"),
    ("[{\"model\": \"s.onnx\", \"threshold\": 0.2, \"regression\": \"score\", \"output\": \"box\"}]",
     "has 1 values a crop; it needs 4"),
])
def test_a_bad_cascade_file_is_refused_in_one_line(spot_finder, tmp_path, content, message):
    (tmp_path / "s.onnx").write_bytes(ORIGINAL.read_bytes())
    (tmp_path / "c.json").write_text(content)
    code, _, stderr = cli("detect", spot_finder, DISKS, "-o", tmp_path / "r.json", "--cascade", tmp_path / "c.json")
    assert code == 3 and message in stderr and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "r.json").exists()


def test_a_stage_with_two_score_outputs_must_say_which(spot_finder):
    with pytest.raises(InputError, match="say which holds the scores"):
        fc2conv_onnx.detect(spot_finder, [DISKS], cascade=[Stage(ORIGINAL)])


def test_no_output_over_a_cascade_file_or_its_models(spot_finder, tmp_path):
    (tmp_path / "s.onnx").write_bytes(ORIGINAL.read_bytes())
    cascade = tmp_path / "c.json"
    cascade.write_text(json.dumps([{"model": "s.onnx", "output": "score"}]))
    for output in (cascade, tmp_path / "s.onnx"):
        before = output.read_bytes()
        code, _, stderr = cli("detect", spot_finder, DISKS, "-o", output, "--cascade", cascade)
        assert code == 3 and "reads" in stderr or "is" in stderr, stderr
        assert code == 3 and output.read_bytes() == before


@pytest.mark.parametrize("value, message", [
    ("c.json", None), (42, "cascade is a cascade file's path or a list of Stage"),
    ([], "at least one"), (["s.onnx"], "a list of Stage"),
])
def test_the_api_takes_a_file_or_stages(spot_finder, tmp_path, monkeypatch, value, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.onnx").write_bytes(ORIGINAL.read_bytes())
    (tmp_path / "c.json").write_text(json.dumps([{"model": "s.onnx", "output": "score"}]))
    if message is None:
        assert fc2conv_onnx.detect(spot_finder, [DISKS], cascade=value).records
    else:
        with pytest.raises(InputError, match=message):
            fc2conv_onnx.detect(spot_finder, [DISKS], cascade=value)


def test_a_detector_with_a_cascade_pickles_without_its_sessions(spot_finder):
    import pickle

    stage = Stage(ORIGINAL, scored(threshold=0.5))
    detector = fc2conv_onnx.Detector(spot_finder, threshold=0.3, cascade=[stage])
    pixels = np.asarray(Image.open(DISKS).convert("RGB"))
    first = detector({"image": [pixels], "id": ["d"]})
    copy = pickle.loads(pickle.dumps(detector))
    assert copy.cascade is not None and copy.cascade._opened == []
    again = copy({"image": [pixels], "id": ["d"]})
    assert again["score"].tolist() == first["score"].tolist() and len(first["score"]) > 0


def test_a_stage_checks_its_own_fields():
    with pytest.raises(InputError, match="square must be true or false"):
        Stage(ORIGINAL, square="yes")
    with pytest.raises(InputError, match="model is a file path"):
        Stage(3)
    assert Stage(ORIGINAL, size=[24, 24]).size == (24, 24)


def test_scale_iou_suppresses_within_each_scale_before_across(spot_finder, tmp_path):
    """--scale-iou T (MTCNN's first stage): each scale's boxes suppressed at T first, then all of them at --iou - as
    by hand from detect's own candidates; a value outside [0, 1] is a usage error."""
    everything = fc2conv_onnx.detect(spot_finder, [DISKS], threshold=0.05, iou=1.0, scales=(1.0, 0.8)).records
    by_scale = [kept for scale in (1.0, 0.8) for kept in best_first([r for r in everything if r.scale == scale], 0.2)]
    expected = best_first(by_scale, 0.9)
    got = fc2conv_onnx.detect(spot_finder, [DISKS], threshold=0.05, iou=0.9, scales=(1.0, 0.8), scale_iou=0.2).records
    assert [(r.box, r.score) for r in got] == [(r.box, r.score) for r in expected]
    plain = fc2conv_onnx.detect(spot_finder, [DISKS], threshold=0.05, iou=0.9, scales=(1.0, 0.8)).records
    assert len(got) < len(plain)
    code, _, stderr = cli("detect", spot_finder, DISKS, "-o", tmp_path / "r.json", "--scale-iou", "1.5")
    assert code == 2 and "--scale-iou 1.5 is not between 0 and 1" in stderr


def test_a_stage_reads_pixels_as_the_detector_unless_it_says(on_noise):
    """A stage that gives no preprocessing and no transpose takes the detector's (MTCNN's nets share theirs); one
    that gives them keeps its own."""
    converted, noise, first, _ = on_noise
    reading = dict(preprocessing=Preprocessing(scale=200.0), transpose=True)
    proposals = fc2conv_onnx.detect(converted, [noise], **first, **reading).records
    hand = dict(iou=0.9, picture=noise, model=FIXTURES / "dress_detector.onnx", size=(128, 64))
    inherits = Stage(FIXTURES / "dress_detector.onnx", scored(threshold=0.0, iou=0.9))
    got = fc2conv_onnx.detect(converted, [noise], **first, **reading, cascade=[inherits]).records
    same(got, by_hand(proposals, 0.0, transpose=True, scale=200.0, **hand))
    own = Stage(FIXTURES / "dress_detector.onnx", scored(threshold=0.0, iou=0.9), Preprocessing(), transpose=False)
    got = fc2conv_onnx.detect(converted, [noise], **first, **reading, cascade=[own]).records
    same(got, by_hand(proposals, 0.0, **hand))

"""The refining stage: with every cell proposed, `detect --refine ORIGINAL` gives exactly what a sliding window of
the original classifier over image crops gives at the converted stride (computed here by hand, with onnxruntime and
Pillow alone) - on the dress detector, whose padded trunk makes its map differ from those crops, as the test shows;
with the default proposals it keeps those boxes on the shipped scene while sending fewer crops."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from test_cli import cli

import fc2conv_onnx
from fc2conv_onnx import InputError
from fc2conv_onnx.model.detections import Detection, best_first

from conftest import FIXTURES

DISKS = FIXTURES / "disks.png"
ORIGINAL = FIXTURES / "spot_finder.onnx"
WINDOW, STRIDE = 32, 4  # the spot finder's window and its trunk's stride


def sliding_window(threshold: float, regression: bool) -> list:
    """The original classifier on every 32x32 crop of the scene, 4 pixels apart; boxes above the threshold,
    moved by its box output when asked, then suppressed as detect suppresses."""
    pixels = np.asarray(Image.open(DISKS).convert("RGB"), np.float32) / np.float32(255)
    height, width = pixels.shape[:2]
    cells = [(i, j) for i in range((height - WINDOW) // STRIDE + 1) for j in range((width - WINDOW) // STRIDE + 1)]
    crops = np.stack([pixels[i * STRIDE:i * STRIDE + WINDOW, j * STRIDE:j * STRIDE + WINDOW].transpose(2, 0, 1)
                      for i, j in cells])
    session = ort.InferenceSession(str(ORIGINAL), providers=["CPUExecutionProvider"])
    runs = [session.run(["score", "box"], {"image": crop[None]}) for crop in crops]  # its batch is fixed at 1
    scores, boxes = np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])
    found = []
    for (i, j), score, offsets in zip(cells, scores.reshape(len(cells), -1)[:, 0], boxes.reshape(len(cells), 4)):
        if score > threshold:
            box = np.array([j * STRIDE, i * STRIDE, j * STRIDE + WINDOW, i * STRIDE + WINDOW], np.float32)
            if regression:
                box = np.clip(box + offsets * WINDOW, 0, [width, height, width, height])
            found.append(Detection(str(DISKS), tuple(box.tolist()), float(score), 0, 1.0, (i, j)))
    return best_first(found, 0.5)


def dress_sliding_window(picture, threshold: float, suppress: bool = True) -> list:
    """The dress detector (128x64 window, stride 32) on every crop of `picture`, by hand (suppressed as detect
    suppresses, unless `suppress` is False)."""
    pixels = np.asarray(picture, np.float32) / np.float32(255)
    height, width = pixels.shape[:2]
    cells = [(i, j) for i in range((height - 128) // 32 + 1) for j in range((width - 64) // 32 + 1)]
    session = ort.InferenceSession(str(FIXTURES / "dress_detector.onnx"), providers=["CPUExecutionProvider"])
    found = []
    for i, j in cells:
        crop = pixels[i * 32:i * 32 + 128, j * 32:j * 32 + 64].transpose(2, 0, 1)[None]
        score = float(session.run(["score"], {"image": crop})[0].ravel()[0])
        if score > threshold:
            box = (float(j * 32), float(i * 32), float(j * 32 + 64), float(i * 32 + 128))
            found.append(Detection("p", box, score, 0, 1.0, (i, j)))
    return best_first(found, 0.5) if suppress else found


def test_refining_gives_the_classifier_on_its_crops_where_the_map_differs(tmp_path):
    """The dress detector's trunk pads: its map is the head on the whole frame's features, not the crops. With
    every cell proposed, refining gives the sliding window's boxes and scores; the map alone does not."""
    converted = tmp_path / "dress_fcn.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "dress_detector.onnx", converted)
    picture = Image.fromarray((np.random.default_rng(5).random((256, 192, 3)) * 255).astype(np.uint8))
    picture.save(tmp_path / "p.png")
    every = dress_sliding_window(picture, -1.0)
    threshold = float(np.median([r.score for r in every]))  # about half the windows pass
    expected = dress_sliding_window(picture, threshold)
    settings = dict(threshold=threshold, iou=0.5)
    refined = fc2conv_onnx.detect(converted, [tmp_path / "p.png"], refine=FIXTURES / "dress_detector.onnx",
                                  proposal_threshold=-1.0, **settings).records
    _same(refined, expected)
    plain = fc2conv_onnx.detect(converted, [tmp_path / "p.png"], **settings).records
    assert {(r.cell, round(r.score, 5)) for r in plain} != {(r.cell, round(r.score, 5)) for r in expected}


def _same(got: list, expected: list) -> None:
    assert len(got) == len(expected) > 0
    for a, b in zip(sorted(got, key=lambda r: r.cell), sorted(expected, key=lambda r: r.cell)):
        assert a.cell == b.cell and a.score == pytest.approx(b.score, abs=1e-5)
        np.testing.assert_allclose(a.box, b.box, atol=1e-3)


@pytest.mark.parametrize("regression", [False, True])
def test_every_cell_proposed_gives_the_sliding_window_of_the_original(spot_finder, regression):
    extra = {"regression": "box"} if regression else {}
    for threshold in (0.5, 0.9):
        got = fc2conv_onnx.detect(spot_finder, [DISKS], refine=ORIGINAL, proposal_threshold=-1.0, threshold=threshold,
                                  **extra).records
        _same(got, sliding_window(threshold, regression))


def test_the_default_proposals_keep_the_boxes_and_send_fewer_crops(spot_finder, monkeypatch):
    from fc2conv_onnx.apps import refine

    sent = []
    real = refine.Refiner._crops

    def counted(self, feed, cells, grid, geometry):
        sent.append(len(cells))
        return real(self, feed, cells, grid, geometry)

    monkeypatch.setattr(refine.Refiner, "_crops", counted)
    got = fc2conv_onnx.detect(spot_finder, [DISKS], refine=ORIGINAL).records
    _same(got, sliding_window(0.5, regression=False))
    cells = ((256 - WINDOW) // STRIDE + 1) * ((384 - WINDOW) // STRIDE + 1)
    assert 0 < sum(sent) < cells / 4, (sum(sent), cells)  # the map proposes a few windows, not all of them


def test_the_command_line_refines_and_refuses_what_it_cannot(spot_finder, fixture_path, tmp_path):
    code, _, stderr = cli("detect", spot_finder, DISKS, "-o", tmp_path / "r.json", "--refine", ORIGINAL)
    assert code == 0, stderr
    records = json.loads((tmp_path / "r.json").read_text())
    expected = sliding_window(0.5, regression=False)
    assert sorted(r["score"] for r in records) == pytest.approx(sorted(r.score for r in expected), abs=1e-5)
    code, _, stderr = cli("detect", spot_finder, DISKS, "-o", tmp_path / "x.json", "--proposal-threshold", "0.2")
    assert code == 2 and "--refine" in stderr
    code, _, stderr = cli("detect", spot_finder, DISKS, "-o", tmp_path / "x.json", "--refine",
                          fixture_path("dress_detector"))
    assert code == 3 and "give the classifier it was converted from" in stderr and stderr.count("\n") == 1, stderr
    code, _, stderr = cli("detect", spot_finder, DISKS, "-o", ORIGINAL, "--refine", ORIGINAL)
    assert code == 3 and "the original model" in stderr, stderr
    with pytest.raises(InputError, match="logits"):
        fc2conv_onnx.detect(spot_finder, [DISKS], refine=ORIGINAL, output_name="box")


def test_the_gap_command_measures_the_map_against_the_crops(tmp_path):
    """`gap` gives the median, 95th percentile and max of |map - classifier on the crop| and the cells that decide
    the other way: here against the converted model and the original run by hand."""
    converted = tmp_path / "dress_fcn.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "dress_detector.onnx", converted)
    picture = Image.fromarray((np.random.default_rng(5).random((256, 192, 3)) * 255).astype(np.uint8))
    picture.save(tmp_path / "p.png")
    crops = {r.cell: r.score for r in dress_sliding_window(picture, -1.0, suppress=False)}
    pixels = (np.asarray(picture, np.float32) / np.float32(255)).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"])
    grid = session.run(["score"], {"image": pixels})[0][0, 0]
    threshold = float(np.median(list(crops.values())))
    gaps = np.array([abs(grid[cell] - score) for cell, score in crops.items()])
    flipped = sum((grid[cell] > threshold) != (score > threshold) for cell, score in crops.items())
    measured = fc2conv_onnx.gap(converted, FIXTURES / "dress_detector.onnx", tmp_path / "p.png", threshold=threshold)
    assert measured.cells == len(crops) == grid.size
    assert measured.median == pytest.approx(float(np.median(gaps)), abs=1e-6)
    assert measured.p95 == pytest.approx(float(np.percentile(gaps, 95)), abs=1e-6)
    assert measured.max == pytest.approx(float(gaps.max()), abs=1e-6) and measured.max > 0
    assert measured.flipped == flipped > 0
    code, stdout, stderr = cli("gap", converted, FIXTURES / "dress_detector.onnx", tmp_path / "p.png", "--threshold",
                               str(threshold), "--json")
    assert code == 0 and json.loads(stdout)["flipped"] == flipped, stderr
    code, _, stderr = cli("gap", converted, FIXTURES / "spot_finder.onnx", tmp_path / "p.png")
    assert code == 3 and "give the classifier it was converted from" in stderr, stderr


RINGS = FIXTURES / "rings.png"
RING_CLASSIFIER = FIXTURES / "exported" / "ring_classifier.onnx"


def ring_sliding_window(threshold: float, iou: float = 0.5) -> list:
    """The trained ring classifier (32x32 crops, pixels / 255) on every crop of the rings scene 4 pixels apart (its
    converted stride), in batches, by hand; suppressed as detect suppresses."""
    pixels = (np.asarray(Image.open(RINGS).convert("RGB"), np.float32) / np.float32(255)).transpose(2, 0, 1)
    height, width = pixels.shape[1:]
    cells = [(i, j) for i in range((height - 32) // 4 + 1) for j in range((width - 32) // 4 + 1)]
    crops = np.stack([pixels[:, i * 4:i * 4 + 32, j * 4:j * 4 + 32] for i, j in cells])
    session = ort.InferenceSession(str(RING_CLASSIFIER), providers=["CPUExecutionProvider"])
    scores = np.concatenate([session.run(["score"], {"image": crops[k:k + 256]})[0] for k in range(0, len(crops), 256)])
    found = [Detection(str(RINGS), (float(j * 4), float(i * 4), float(j * 4 + 32), float(i * 4 + 32)), float(s), 0,
                       1.0, (i, j)) for (i, j), s in zip(cells, scores[:, 0]) if s > threshold]
    return best_first(found, iou)


def test_a_trained_classifier_refined_gives_its_sliding_window(tmp_path):
    """On a CNN trained on crops (fixtures/train_rings.py) whose trunk pads, the map alone puts a box where the
    classifier on the crop does not; with the default proposals (cells above half the threshold), refining returns
    exactly the sliding window's boxes with its scores within 1e-4: at 0.5 the four rings; with no suppression at
    0.01, every window that scores, middling scores too."""
    converted = tmp_path / "rings_fcn.onnx"
    fc2conv_onnx.convert_file(RING_CLASSIFIER, converted)
    for threshold, iou, least in ((0.5, 0.5, 4), (0.01, 1.0, 15)):
        expected = ring_sliding_window(threshold, iou)
        refined = fc2conv_onnx.detect(converted, [RINGS], threshold=threshold, iou=iou, refine=RING_CLASSIFIER).records
        assert len(refined) == len(expected) >= least
        for a, b in zip(sorted(refined, key=lambda r: r.cell), sorted(expected, key=lambda r: r.cell)):
            assert a.cell == b.cell and a.box == b.box and a.score == pytest.approx(b.score, abs=1e-4)
    plain = fc2conv_onnx.detect(converted, [RINGS], threshold=0.5).records
    assert len(plain) > len(ring_sliding_window(0.5))  # the map's own boxes: one more than the classifier's


def test_a_channels_last_classifier_refines_as_its_channels_first_twin(spot_finder, tmp_path):
    """The spot finder as tf2onnx writes it (NHWC input, MatMul + Add): its crops are cut channels last, and its
    refined boxes and scores are the NCHW twin's - the sliding window's."""
    nhwc = FIXTURES / "spot_finder_nhwc.onnx"
    converted = tmp_path / "nhwc_fcn.onnx"
    fc2conv_onnx.convert_file(nhwc, converted)
    got = fc2conv_onnx.detect(converted, [DISKS], refine=nhwc, proposal_threshold=-1.0, regression="box").records
    _same(got, sliding_window(0.5, regression=True))

"""--transpose: a model that reads pictures as W x H (ported from Caffe or Matlab, as MTCNN's nets) runs on each
picture transposed, and its boxes come back in the picture's frame. Proven by symmetry: on a picture stored
transposed, `transpose=True` finds exactly the boxes the plain run finds on the picture itself, swapped."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_cli import cli

import fc2conv_onnx
from fc2conv_onnx import Detector, InputError

from conftest import FIXTURES

DISKS = FIXTURES / "disks.png"


def _swapped(box):
    return (box[1], box[0], box[3], box[2])


@pytest.mark.parametrize("extra", [{}, {"min_size": 32, "max_size": 96, "scale_step": 1.5}])
def test_a_transposed_picture_gives_the_plain_runs_boxes_swapped(spot_finder, tmp_path, extra):
    Image.open(DISKS).transpose(Image.Transpose.TRANSPOSE).save(tmp_path / "t.png")
    plain = fc2conv_onnx.detect(spot_finder, [DISKS], **extra).records
    turned = fc2conv_onnx.detect(spot_finder, [tmp_path / "t.png"], transpose=True, **extra).records
    assert len(plain) == len(turned) > 0
    for a, b in zip(sorted(plain, key=lambda r: (r.scale, r.cell)), sorted(turned, key=lambda r: (r.scale, r.cell))):
        assert (a.cell, a.scale, a.score) == (b.cell, b.scale, b.score)
        np.testing.assert_allclose(_swapped(a.box), b.box, atol=1e-4)


def test_a_transposed_nets_box_offsets_are_in_the_pictures_frame(spot_finder, tmp_path):
    """MTCNN's ported nets give x1, y1, x2, y2 offsets of the picture they were handed (their packages apply
    them so): the window is swapped back to the picture's frame, and the offsets added there as they are."""
    Image.open(DISKS).transpose(Image.Transpose.TRANSPOSE).save(tmp_path / "t.png")
    every = dict(iou=1.0)  # nothing suppressed: the same cells in every run
    windows = {r.cell: np.array(r.box) for r in fc2conv_onnx.detect(spot_finder, [DISKS], **every).records}
    moved = {r.cell: np.array(r.box) for r in fc2conv_onnx.detect(spot_finder, [DISKS], regression="box",
                                                                 **every).records}
    turned = fc2conv_onnx.detect(spot_finder, [tmp_path / "t.png"], transpose=True, regression="box", **every).records
    assert len(turned) == len(windows) > 0
    height, width = 384, 256  # t.png's
    for record in turned:
        offsets = moved[record.cell] - windows[record.cell]  # the net's offsets times the (square) window
        expected = np.clip(np.array(_swapped(windows[record.cell])) + offsets, 0, [width, height, width, height])
        np.testing.assert_allclose(record.box, expected, atol=1e-3)


def test_the_detector_and_the_command_line_transpose_too(spot_finder, tmp_path):
    pixels = np.asarray(Image.open(DISKS).convert("RGB"))
    plain = Detector(spot_finder)({"image": [pixels], "id": ["p"]})
    turned = Detector(spot_finder, transpose=True)({"image": [np.ascontiguousarray(pixels.swapaxes(0, 1))],
                                                   "id": ["p"]})
    for x, y in (("x1", "y1"), ("y1", "x1"), ("x2", "y2"), ("y2", "x2")):
        np.testing.assert_allclose(plain[x], turned[y])
    assert np.array_equal(plain["score"], turned["score"])
    Image.open(DISKS).transpose(Image.Transpose.TRANSPOSE).save(tmp_path / "t.png")
    code, _, stderr = cli("detect", spot_finder, tmp_path / "t.png", "-o", tmp_path / "x.json", "--transpose")
    assert code == 0, stderr
    drawn = fc2conv_onnx.heatmap(spot_finder, tmp_path / "t.png", tmp_path / "h.png", transpose=True)
    straight = fc2conv_onnx.heatmap(spot_finder, DISKS, tmp_path / "s.png")
    assert (drawn.grid, drawn.data_range) == (straight.grid, straight.data_range)
    # Drawn over the picture as stored (its frame, not the model's): the size of any heatmap of that picture.
    fc2conv_onnx.heatmap(spot_finder, tmp_path / "t.png", tmp_path / "n.png")
    assert Image.open(tmp_path / "h.png").size == Image.open(tmp_path / "n.png").size
    with pytest.raises(InputError, match="transpose must be True or False"):
        Detector(spot_finder, transpose="yes")


def test_the_detector_in_the_model_gives_detects_transposed_boxes(tmp_path):
    """convert --emit-detections --transpose: fed a picture transposed (as such a model is), the appended detector
    gives exactly detect --transpose's boxes on the picture, in the picture's frame, regression included."""
    import onnxruntime as ort

    settings = fc2conv_onnx.DetectionSettings(regression="box", threshold=0.5)
    fc2conv_onnx.convert_file(FIXTURES / "spot_finder.onnx", tmp_path / "det.onnx", emit_detections=settings,
                              transpose=True)
    fc2conv_onnx.convert_file(FIXTURES / "spot_finder.onnx", tmp_path / "map.onnx")
    expected = fc2conv_onnx.detect(tmp_path / "map.onnx", [DISKS], settings, transpose=True).records
    pixels = np.asarray(Image.open(DISKS).convert("RGB"), np.float32) / np.float32(255)
    fed = np.ascontiguousarray(pixels.transpose(2, 1, 0)[None])  # [1, C, W, H]: the picture as the model reads it
    session = ort.InferenceSession(str(tmp_path / "det.onnx"), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(["boxes", "scores"], {"image": fed})
    assert len(scores) == len(expected) > 0
    np.testing.assert_allclose(scores, [r.score for r in expected], atol=1e-6)
    np.testing.assert_allclose(boxes, [r.box for r in expected], atol=1e-3)
    assert not np.allclose(boxes, boxes[:, [1, 0, 3, 2]])  # the frames differ: a missing swap would show
    code, _, stderr = cli("convert", FIXTURES / "spot_finder.onnx", "-o", tmp_path / "x.onnx", "--transpose")
    assert code == 2 and "--transpose sets the detector of --emit-detections" in stderr

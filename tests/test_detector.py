"""The Detector: detect's engine, called on batches as Ray Data calls it (a dict of numpy columns in, one out).
Its rows are detect's records, picture for picture; it pickles without its session and opens the model where
it is called."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

import fc2conv_onnx
from fc2conv_onnx.apps.records import CSV_COLUMNS

from conftest import FIXTURES

PICTURES = [FIXTURES / "disks.png", FIXTURES / "spots.png"]
SETTINGS = dict(min_size=32, max_size=128, scale_step=2, regression="box", threshold=0.5)


def _rows_of(found, key):
    """detect's records as the Detector's columns, picture by picture."""
    return [(key(r.image), *r.box, r.score, r.klass, r.scale, *r.cell) for r in found.records]


def _rows(columns, key_column):
    """The rows, checked to be named as detect's CSV columns (the key as "image", and under its batch name)."""
    names = (key_column, "x1", "y1", "x2", "y2", "score", "class", "scale", "row", "column")
    assert len({len(columns[n]) for n in names}) == 1 and set(columns) == set(names) | {"image"}
    assert list(columns["image"]) == list(columns[key_column])
    assert set(CSV_COLUMNS) - {"label"} <= set(columns)
    return [tuple(v.item() if hasattr(v, "item") else v for v in row) for row in zip(*(columns[n] for n in names))]


def test_a_batch_of_paths_gives_detects_records_picture_for_picture(spot_finder):
    found = fc2conv_onnx.detect(spot_finder, PICTURES, **SETTINGS)
    detector = fc2conv_onnx.Detector(spot_finder, **SETTINGS)
    columns = detector({"path": np.asarray([str(p) for p in PICTURES], dtype=object)})
    got = _rows(columns, "path")
    assert len(got) == len(found.records) > 3
    for picture in PICTURES:  # each picture's rows best first, as detect's are
        assert [r for r in got if r[0] == str(picture)] == [r for r in _rows_of(found, str) if r[0] == str(picture)]
    assert columns["score"].dtype == np.float32 and columns["class"].dtype == np.int64


def test_a_batch_of_pixels_with_ids_gives_the_same_rows(spot_finder):
    detector = fc2conv_onnx.Detector(spot_finder, **SETTINGS)
    pixels = [np.asarray(Image.open(p).convert("RGB")) for p in PICTURES]
    from_files = _rows(detector({"path": [str(p) for p in PICTURES]}), "path")
    ids = np.asarray([7, 9])
    from_pixels = _rows(detector({"image": np.asarray(pixels, dtype=object), "id": ids}), "id")
    names = {7: str(PICTURES[0]), 9: str(PICTURES[1])}
    assert [(names[r[0]], *r[1:]) for r in from_pixels] == from_files
    same_size = np.stack([pixels[0], pixels[0]])  # read_images of one size: one 4-D array
    doubled = _rows(detector({"image": same_size, "path": np.asarray(["a.png", "b.png"])}), "path")
    assert [r[1:] for r in doubled if r[0] == "a.png"] == [r[1:] for r in doubled if r[0] == "b.png"] == \
        [r[1:] for r in from_files if r[0] == str(PICTURES[0])]


def test_a_batch_with_nothing_found_has_empty_columns_of_their_types(spot_finder):
    columns = fc2conv_onnx.Detector(spot_finder, threshold=0.999999)({"path": [str(PICTURES[1])]})
    assert all(len(v) == 0 for v in columns.values())
    assert columns["x1"].dtype == np.float32 and columns["row"].dtype == np.int64


def test_a_detector_pickles_without_its_session_and_opens_the_model_where_it_runs(spot_finder, tmp_path):
    missing = fc2conv_onnx.Detector(tmp_path / "nowhere.onnx")  # nothing is opened yet
    with pytest.raises(fc2conv_onnx.InputError, match="does not exist"):
        missing({"path": [str(PICTURES[0])]})
    detector = fc2conv_onnx.Detector(spot_finder, threads=1, **SETTINGS)
    first = detector({"path": [str(PICTURES[0])]})
    assert detector._opened is not None
    copy = pickle.loads(pickle.dumps(detector))
    assert copy._opened is None
    again = copy({"path": [str(PICTURES[0])]})
    assert _rows(again, "path") == _rows(first, "path")


@pytest.mark.parametrize("batch, words", [
    ({"image": [np.zeros((64, 64, 3), np.uint8)]}, "needs an 'id' or 'path' column"),
    ({"pixels": [1]}, "needs a 'path' column"),
    ([str(PICTURES[0])], "a dict of columns"),
    ({"image": [np.zeros((64, 64, 3), np.float32)], "id": [1]}, "float32 pixels"),
    ({"image": [np.zeros((64, 64, 2), np.uint8)], "id": [1]}, "shape [64, 64, 2]"),
    ({"image": [np.zeros((64, 64, 3), np.uint8)], "id": [1, 2]}, "has 2 rows and its pictures 1"),
    ({"path": [3]}, "must hold picture paths"),
    ({"path": ["/no/such/picture.png"]}, "does not exist"),
    ({"image": [np.zeros((8, 8, 3), np.uint8)], "id": ["tiny"]}, "(tiny)"),
])
def test_a_batch_it_cannot_use_is_refused_with_the_reason(spot_finder, batch, words):
    with pytest.raises(fc2conv_onnx.InputError, match=None) as refused:
        fc2conv_onnx.Detector(spot_finder)(batch)
    assert words in str(refused.value)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_threads_must_be_a_whole_number_of_at_least_one(spot_finder, threads):
    with pytest.raises(fc2conv_onnx.InputError, match="threads"):
        fc2conv_onnx.Detector(spot_finder, threads=threads)


def test_detect_takes_folders_and_patterns_of_pictures(spot_finder, tmp_path):
    """`detect MODEL DIR/` runs over the pictures in the folder (not its subfolders, not other files), by name;
    a quoted pattern as well; a folder without pictures is refused with its name."""
    import shutil

    from test_cli import cli

    frames = tmp_path / "frames"
    (frames / "sub").mkdir(parents=True)
    for picture in PICTURES:
        shutil.copy(picture, frames / picture.name.upper())  # DISKS.PNG: extensions in any case
    shutil.copy(PICTURES[0], frames / "sub" / "deeper.png")
    (frames / "notes.txt").write_text("not a picture")
    code, _, stderr = cli("detect", spot_finder, frames, "-o", tmp_path / "d.json", "--draw", tmp_path / "drawn")
    assert code == 0, stderr
    expected = fc2conv_onnx.detect(spot_finder, [frames / "DISKS.PNG", frames / "SPOTS.PNG"])
    import json
    assert json.loads((tmp_path / "d.json").read_text()) == [r.to_dict() for r in expected.records]
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["DISKS.png", "SPOTS.png"]
    by_pattern = fc2conv_onnx.detect(spot_finder, str(frames / "D*.PNG"))
    assert list(by_pattern.scales) == [str(frames / "DISKS.PNG")]
    (tmp_path / "empty").mkdir()
    code, _, stderr = cli("detect", spot_finder, tmp_path / "empty", "-o", tmp_path / "e.json")
    assert code == 3 and "holds no picture" in stderr and not (tmp_path / "e.json").exists()
    code, _, stderr = cli("detect", spot_finder, str(tmp_path / "*.gif"), "-o", tmp_path / "e.json")
    assert code == 3 and "pattern" in stderr and "holds no picture" in stderr


def test_a_model_file_onnxruntime_cannot_load_is_refused_in_one_line(spot_finder, tmp_path):
    """detect opens a model file with onnxruntime alone: a file that is not a model, empty or cut short is exit
    3, in the tool's words and without onnxruntime's decorations."""
    from test_cli import cli

    forms = {"text.onnx": b"not a model\n", "empty.onnx": b"", "cut.onnx": spot_finder.read_bytes()[:3000]}
    for name, data in forms.items():
        (tmp_path / name).write_bytes(data)
        code, stdout, stderr = cli("detect", tmp_path / name, PICTURES[0], "-o", tmp_path / "d.json")
        assert code == 3 and stderr.count("\n") == 1, stderr
        assert f"model '{tmp_path / name}' does not load in onnxruntime: " in stderr
        assert "Load model from" not in stderr and "ONNXRuntimeError" not in stderr
    assert not (tmp_path / "d.json").exists()

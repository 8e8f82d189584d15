"""The API checks its arguments as the CLI checks its flags: every bad value is an InputError naming the
parameter, before anything runs; numpy's numbers are numbers. And one Detector serves several threads."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import fc2conv_onnx
from fc2conv_onnx import DetectionSettings, Detector, InputError
from fc2conv_onnx.apps.preprocessing import Preprocessing

from conftest import FIXTURES

DISKS, SPOTS = FIXTURES / "disks.png", FIXTURES / "spots.png"


@pytest.mark.parametrize("make, words", [
    (lambda: Preprocessing(scale=float("nan")), "scale must be a finite number"),
    (lambda: Preprocessing(mean=float("inf")), "mean must be a finite number"),
    (lambda: Preprocessing(scale="abc"), "scale must be a number"),
    (lambda: Preprocessing(std=[1.0, None]), "std must be a number"),
    (lambda: DetectionSettings(classes=[0.5]), "must be a whole number"),
    (lambda: DetectionSettings(classes=[True]), "must be a whole number"),
    (lambda: DetectionSettings(threshold="high"), "threshold must be a number"),
    (lambda: DetectionSettings(output_name=3), "output_name must be"),
])
def test_bad_records_are_refused_naming_the_parameter(make, words):
    with pytest.raises(InputError, match=words):
        make()


@pytest.mark.parametrize("arguments, words", [
    ({"min_size": "32"}, "min_size must be a number"),
    ({"max_size": float("nan")}, "max_size must be a positive number"),
    ({"scale_step": 0}, "scale_step must be a positive number"),
    ({"preprocessing": "rgb"}, "preprocessing must be a Preprocessing"),
    ({"progress": 5}, "progress must be a function"),
    ({"threads": 4096}, "threads must be a whole number from 1 to 256"),
    ({"threads": 2.0}, "threads must be a whole number"),
    ({"settings": {"threshold": 0.9}}, "settings must be a DetectionSettings"),
])
def test_bad_detect_arguments_are_refused_before_anything_runs(spot_finder, arguments, words, monkeypatch):
    from fc2conv_onnx.model import ort

    def no_session(*args, **kwargs):
        raise AssertionError("a session was opened for a call that should be refused")

    monkeypatch.setattr(ort, "file_session", no_session)
    with pytest.raises(InputError, match=words):
        fc2conv_onnx.detect(spot_finder, [DISKS], **arguments)


def test_numpy_numbers_are_numbers(spot_finder):
    found = fc2conv_onnx.detect(spot_finder, [DISKS], scales=[np.float32(1)], threshold=np.float64(0.5),
                                classes=np.array([0]), min_size=None, preprocessing=Preprocessing(scale=np.int64(255)))
    assert found.records == fc2conv_onnx.detect(spot_finder, [DISKS]).records


@pytest.mark.parametrize("batch, words", [
    ({"path": str(DISKS)}, "one value per row"),
    ({"image": np.zeros((1, 64, 64, 3), np.uint8), "id": [[1, 2]]}, "one name or number per row"),
    ({"image": np.zeros((2, 64, 64, 3), np.uint8), "id": ["a"]}, "1 rows and its pictures 2"),
])
def test_a_bad_batch_is_refused_before_any_picture_runs(spot_finder, batch, words):
    detector = Detector(spot_finder)
    with pytest.raises(InputError, match=words):
        detector(batch)
    assert detector._opened is None  # refused before the model was even opened


def test_one_detector_serves_several_threads(spot_finder):
    """Three threads, 240 calls on pictures that differ: each call gets its own picture's rows (a shared input
    buffer gave 32-84 of 240 calls another picture's)."""
    disks = np.asarray(fc2conv_onnx.apps.pictures.read_image(DISKS).convert("RGB"))
    pictures = [disks, disks[::-1].copy(), disks[:, ::-1].copy(), np.ascontiguousarray(disks[:128])]
    detector = Detector(spot_finder)
    expected = [detector({"image": [p], "id": [k]}) for k, p in enumerate(pictures)]
    assert len({len(e["x1"]) for e in expected}) > 1 or any(
        not np.array_equal(expected[0]["x1"], e["x1"]) for e in expected[1:])  # the pictures' rows differ
    wrong, lock = [], threading.Lock()

    def work(offset: int) -> None:
        for call in range(80):
            k = (call + offset) % len(pictures)
            got = detector({"image": [pictures[k]], "id": [k]})
            if not all(np.array_equal(got[c], expected[k][c]) for c in expected[k]):
                with lock:
                    wrong.append(k)

    threads = [threading.Thread(target=work, args=(offset,)) for offset in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []

"""Pictures in parallel inside one process: detect's records with several workers are those of one picture after
another, in input order; the pool keeps at most its window of items in flight; the cores are shared."""
from __future__ import annotations

import threading
import time

import pytest
from test_cli import cli

import fc2conv_onnx
from fc2conv_onnx import InputError
from fc2conv_onnx.apps import parallel

from conftest import FIXTURES

PICTURES = [FIXTURES / "disks.png", FIXTURES / "spots.png", FIXTURES / "rings.png"] * 3


def test_several_workers_give_one_after_anothers_records_in_order(spot_finder, tmp_path):
    pictures = []
    for index, picture in enumerate(PICTURES):  # nine distinct files (a picture is refused twice)
        pictures.append(tmp_path / f"{index}{picture.suffix}")
        pictures[-1].write_bytes(picture.read_bytes())
    settings = dict(min_size=32, max_size=96, scale_step=1.5, regression="box", threshold=0.3)
    one = fc2conv_onnx.detect(spot_finder, pictures, workers=1, **settings).records
    for workers, threads in ((2, None), (3, 1), (4, 2)):
        many = fc2conv_onnx.detect(spot_finder, pictures, workers=workers, threads=threads, **settings).records
        assert [(r.image, r.box, r.score, r.scale, r.cell) for r in many] == \
            [(r.image, r.box, r.score, r.scale, r.cell) for r in one]
    code, _, stderr = cli("detect", spot_finder, *pictures, "-o", tmp_path / "r.json", "--workers", "2",
                          "--threads", "1")
    assert code == 0, stderr
    assert cli("detect", spot_finder, *pictures, "-o", tmp_path / "r.json", "--workers", "0")[0] == 2
    with pytest.raises(InputError, match="workers"):
        fc2conv_onnx.detect(spot_finder, pictures, workers=0)


def test_ordered_map_keeps_the_order_and_its_window():
    """Items that finish out of order come back in order, and no more than the window is taken ahead."""
    taken, running, most = [], [0], [0]
    lock = threading.Lock()

    def items():
        for item in range(20):
            taken.append(item)
            yield item

    def slow(item):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002 * (item % 3))
        with lock:
            running[0] -= 1
        return item * 10

    results = []
    for result in parallel.ordered_map(slow, items(), workers=3, ahead=4):
        results.append(result)
        assert len(taken) <= len(results) + 4
    assert results == [item * 10 for item in range(20)] and most[0] <= 3


def test_a_failure_comes_where_its_item_would_and_the_rest_is_dropped():
    started = []

    def failing(item):
        started.append(item)
        if item == 2:
            raise ValueError("item 2")
        return item

    got = []
    with pytest.raises(ValueError, match="item 2"):
        for result in parallel.ordered_map(failing, range(100), workers=2, ahead=3):
            got.append(result)
    assert got == [0, 1] and len(started) < 100


def test_the_cores_are_shared_between_the_workers(monkeypatch):
    monkeypatch.setattr(parallel, "cores", lambda: 8)
    assert parallel.plan_threads(None, None) == (8, 1)
    assert parallel.plan_threads(2, None) == (2, 4)
    assert parallel.plan_threads(None, None, items=3) == (3, 2)
    assert parallel.plan_threads(3, 5) == (3, 5)

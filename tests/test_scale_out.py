"""The scale-out recipe of docs/scale-out.md, run on a local Ray cluster of this machine's 2 cores: Ray Data
calls the Detector on batches in actors of their own, and the rows it writes are detect's, picture for
picture. Needs the `ray` extra (pip install '.[ray]')."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

import fc2conv_onnx

from conftest import FIXTURES

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install '.[ray]' (Ray has no wheel for Python "
                                        f"{sys.version_info.major}.{sys.version_info.minor})"
                          if sys.version_info < (3, 10) else "Ray is not installed: pip install '.[ray]'")

PICTURES = [FIXTURES / "disks.png", FIXTURES / "spots.png"]
SETTINGS = dict(min_size=32, max_size=128, scale_step=2, regression="box", threshold=0.5)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _detects_rows(model, pictures, key=str):
    found = fc2conv_onnx.detect(model, pictures, **SETTINGS)
    return sorted((key(r.image), *r.box, r.score, r.klass, r.scale) for r in found.records)


def _frame_rows(frame, key_column):
    columns = [key_column, "x1", "y1", "x2", "y2", "score", "class", "scale"]
    return sorted(tuple(v.item() if isinstance(v, np.generic) else v for v in row)
                  for row in frame[columns].itertuples(index=False, name=None))


def test_paths_through_two_actors_give_detects_rows(cluster, spot_finder):
    paths = [str(p) for p in PICTURES]
    frame = (ray.data.from_items([{"path": p} for p in paths])
             .map_batches(fc2conv_onnx.Detector, fn_constructor_args=(str(spot_finder),),
                          fn_constructor_kwargs={**SETTINGS, "threads": 1}, batch_size=1, batch_format="numpy",
                          compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1)
             .to_pandas())
    assert len(frame) > 3 and _frame_rows(frame, "path") == _detects_rows(spot_finder, paths)


def test_read_images_to_parquet_gives_detects_rows(cluster, spot_finder, tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for picture in PICTURES:
        shutil.copy(picture, folder / picture.name)
    (ray.data.read_images(str(folder), include_paths=True, mode="RGB")
     .map_batches(fc2conv_onnx.Detector, fn_constructor_args=(str(spot_finder),), fn_constructor_kwargs=SETTINGS,
                  batch_size=8, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1))
     .write_parquet(str(tmp_path / "found")))
    import pandas

    rows = _frame_rows(pandas.read_parquet(tmp_path / "found"), "path")
    assert len(rows) > 3 and rows == _detects_rows(spot_finder, sorted(folder.iterdir()))

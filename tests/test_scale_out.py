"""The scale-out recipe of docs/scale-out.md, run on a local Ray cluster of this machine's 2 cores: Ray Data
calls the Detector on batches in actors of their own, and the rows it writes are detect's, picture for
picture. Needs the `ray` extra (pip install '.[ray]')."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

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


RECIPE_SETTINGS = dict(min_size=64, max_size=256, threshold=0.8)  # what the documented recipe asks


def recipe(name: str) -> str:
    """The code block of docs/scale-out.md that starts with `# recipe: name`, as written."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "scale-out.md").read_text()
    blocks = re.findall(r"```python\n(# recipe: (\w+)\n.*?)```", text, re.S)
    return next(code for code, title in blocks if title == name)


def run_recipe(code: str, **values) -> dict:
    """Run a documented recipe with its placeholders' values replaced (`name = ...` lines) and the cluster
    already up (`ray.init()` is the test's); its variables after the run."""
    for name, value in values.items():
        code, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", code, flags=re.M)
        assert count == 1, name
    code = code.replace("ray.init()", "pass")
    scope: dict = {}
    exec(compile(code, "docs/scale-out.md", "exec"), scope)
    return scope


def test_the_pictures_recipe_runs_as_written_with_two_actors_on_two_cpus(cluster, spot_finder, tmp_path):
    """The documented read_images form, two actors of one thread on this 2-CPU cluster: it used to sit
    backpressured for ever; the reads now fit beside the actors. Its rows are detect's."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    for picture in PICTURES:
        shutil.copy(picture, folder / picture.name)
    scope = run_recipe(recipe("pictures"), model=str(spot_finder), pictures=str(folder),
                       output=str(tmp_path / "found"))
    assert scope["actors"] == 2 and scope["threads"] == 1
    import pandas

    rows = _frame_rows(pandas.read_parquet(tmp_path / "found"), "path")
    expected = fc2conv_onnx.detect(spot_finder, sorted(folder.iterdir()), **RECIPE_SETTINGS)
    assert len(rows) >= 3 and rows == sorted((r.image, *r.box, r.score, r.klass, r.scale) for r in expected.records)


def test_the_videos_recipe_gives_detects_records_on_the_video(cluster, spot_finder, tmp_path):
    pytest.importorskip("av")
    from test_video import encode, frames_of

    video = tmp_path / "clip.mkv"
    encode(frames_of(4), video)
    settings = recipe("pictures").split("\nfound = ")[0]  # its imports and settings, where the videos recipe goes on
    scope = run_recipe(settings + "\n" + recipe("videos"), model=str(spot_finder), videos=[str(video)])
    frame = scope["found"].to_pandas()
    got = sorted(zip(frame["frame"], frame["time"], frame["x1"], frame["y1"], frame["score"]))
    expected = fc2conv_onnx.detect(spot_finder, video, **RECIPE_SETTINGS).records
    want = sorted((r.frame, r.time, r.box[0], r.box[1], r.score) for r in expected)
    assert len(got) == len(want) > 3
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=1e-6)

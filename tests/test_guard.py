"""No write destroys what another file needs: the one output guard (every writer, CLI and API), no deletion
by a name's pattern, and every byte of a stream accounted for. Each test is a repro that failed on the code
before the guard (issue 30); each result is checked by loading and running the models it must not damage."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import ENV, cli
from test_files import data_files, run, with_external_data
from test_outputs_and_caps import disk_full_at

import fc2conv_onnx
from fc2conv_onnx import InputError
from fc2conv_onnx.model import guard, writes

from conftest import FIXTURES

DISKS = FIXTURES / "disks.png"
STEM = "dress_detector"


def _pair(folder: Path, name: str = "m.onnx") -> Path:
    """The spot finder converted into `folder` with its weights in a data file."""
    folder.mkdir(exist_ok=True)
    out = folder / name
    fc2conv_onnx.convert_file(FIXTURES / "spot_finder.onnx", out, external_data=True, validate=False)
    return out


def _boxes(model: Path) -> list:
    return [r.box for r in fc2conv_onnx.detect(model, [DISKS]).records]


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("how", ["detect -o", "heatmap -o", "detect --draw", "save", "draw", "convert -o"])
def test_no_output_is_a_data_file_the_model_names(tmp_path, how):
    model = _pair(tmp_path)
    [data] = data_files(tmp_path, "m.onnx")
    expected, before = _boxes(model), _snapshot(tmp_path)
    target = tmp_path / data
    if how in ("save", "draw"):
        found = fc2conv_onnx.detect(model, [DISKS])
        with pytest.raises(InputError, match="a data file of the model"):
            found.save(target) if how == "save" else found.draw(DISKS, target)
    else:
        args = {"detect -o": ("detect", model, DISKS, "-o", target),
                "heatmap -o": ("heatmap", model, DISKS, "-o", target),
                "detect --draw": ("detect", model, DISKS, "-o", tmp_path / "x.json", "--draw", target),
                "convert -o": ("convert", model, "-o", target)}[how]
        code, _, stderr = cli(*args)
        assert code == 3 and "a data file of" in stderr and stderr.count("\n") == 1, stderr
    assert _snapshot(tmp_path) == before
    assert _boxes(model) == expected  # the pair still loads and finds the same boxes


def test_the_api_never_writes_over_the_model_or_a_picture(spot_finder, tmp_path):
    model, picture = tmp_path / "m.onnx", tmp_path / "p.png"
    shutil.copy(spot_finder, model)
    shutil.copy(DISKS, picture)
    found = fc2conv_onnx.detect(model, [picture])
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match="is the model"):
        found.save(model)
    with pytest.raises(InputError, match="is the picture"):
        found.draw(picture, picture)
    with pytest.raises(InputError, match="is the picture"):
        found.save(tmp_path / "." / "p.png")
    assert _snapshot(tmp_path) == before
    found.save(tmp_path / "found.json")  # another name is written
    assert (tmp_path / "found.json").exists()


def test_an_input_whose_data_file_has_an_outputs_name_is_never_removed(fixture_path, tmp_path):
    """Its data file is named like one this tool would give `out.onnx`: the run reads it, and nothing may
    remove it - not the sweep of a killed run's leftovers, not the replacement of out.onnx."""
    source = with_external_data(fixture_path(STEM), tmp_path, location="out.onnx.0123456789ab.data")
    held = (tmp_path / "out.onnx.0123456789ab.data").read_bytes()
    expected = run(source)[0]
    for _ in range(2):
        assert cli("convert", source, "-o", tmp_path / "out.onnx")[0] == 0
        assert (tmp_path / "out.onnx.0123456789ab.data").read_bytes() == held
        np.testing.assert_allclose(run(source)[0], expected)
        np.testing.assert_allclose(run(tmp_path / "out.onnx")[0].reshape(expected.shape), expected, rtol=1e-5,
                                   atol=1e-6)


def test_nothing_a_model_file_still_names_is_lost_by_rename_copy_or_reconvert(tmp_path):
    """`convert a -o staging.onnx --external-data && mv staging.onnx v1.onnx; convert b -o staging.onnx` (the
    earlier sweep removed v1's weights), a copy of a replaced model, and detect writing a name a model once
    had: every model file keeps every file it names, and gives the same boxes."""
    staging = _pair(tmp_path, "staging.onnx")
    expected = _boxes(staging)
    os.rename(staging, tmp_path / "v1.onnx")
    _pair(tmp_path, "staging.onnx")
    shutil.copy(tmp_path / "staging.onnx", tmp_path / "copy.onnx")
    for _ in range(2):  # replaced twice: the copy's data file is the replaced model's
        _pair(tmp_path, "staging.onnx")
    os.rename(tmp_path / "staging.onnx", tmp_path / "model.onnx")
    assert cli("detect", tmp_path / "model.onnx", DISKS, "-o", tmp_path / "staging.onnx")[0] == 0
    for name in ("v1.onnx", "copy.onnx", "model.onnx"):
        assert _boxes(tmp_path / name) == expected, name


def test_a_replaced_models_data_file_is_left_and_said(tmp_path):
    out = _pair(tmp_path)
    [first] = data_files(tmp_path, "m.onnx")
    code, _, stderr = cli("convert", FIXTURES / "spot_finder.onnx", "-o", out, "--external-data", "--no-validate")
    assert code == 0 and first in stderr and "left in place" in stderr, stderr
    assert first in data_files(tmp_path, "m.onnx") and len(data_files(tmp_path, "m.onnx")) == 2


def test_a_leftover_is_removed_only_when_it_carries_the_uncommitted_mark(tmp_path):
    """What a killed run leaves carries an extended attribute only a running write sets; a file of the same
    name without it (the user's, or one this tool committed) is never removed."""
    out = _pair(tmp_path)
    marked, unmarked = tmp_path / ".m.onnx.abcdefgh.tmp", tmp_path / "m.onnx.0123456789ab.data"
    temporary_unmarked = tmp_path / ".m.onnx.zyxwvuts.tmp"
    for path in (marked, unmarked, temporary_unmarked):
        path.write_bytes(b"left")
    try:
        os.setxattr(marked, "user.fc2conv_onnx.uncommitted", b"1")
    except OSError:
        pytest.skip("this file system has no extended attributes")
    fc2conv_onnx.convert_file(FIXTURES / "spot_finder.onnx", out, external_data=True, validate=False)
    assert not marked.exists()
    assert unmarked.read_bytes() == b"left" and temporary_unmarked.read_bytes() == b"left"


class _Trickle:
    """A binary stream that takes at most `step` bytes a write (a pipe under load), and none after `limit`."""

    def __init__(self, step: int, limit: int = 1 << 40) -> None:
        self.step, self.limit, self.got = step, limit, bytearray()

    def write(self, data) -> int:
        taken = bytes(data[:min(self.step, self.limit - len(self.got))])
        self.got += taken
        return len(taken)

    def flush(self) -> None:
        pass


def test_a_stream_that_takes_part_of_a_write_gets_the_rest_or_the_run_fails():
    data = os.urandom(10_000)
    stream = _Trickle(333)
    writes.write_stream(data, stream)
    assert bytes(stream.got) == data
    with pytest.raises(fc2conv_onnx.Fc2ConvError) as failed:
        writes.write_stream(data, _Trickle(333, limit=4096))
    assert failed.value.exit_code == 7 and "4096 of the 10000 bytes" in str(failed.value)


def _process(*args, stdin=None, stdout=subprocess.PIPE, shell_suffix=""):
    command = [sys.executable, "-m", "fc2conv_onnx", *map(str, args)]
    if shell_suffix:
        command = ["bash", "-c", " ".join(f"'{c}'" for c in command) + " " + shell_suffix]
    return subprocess.run(command, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=ENV, timeout=120)


def test_a_reader_that_stops_early_is_exit_7(tmp_path):
    command = [sys.executable, "-m", "fc2conv_onnx", "convert", str(FIXTURES / STEM) + ".onnx", "-o", "-"]
    done = subprocess.run(["bash", "-c", " ".join(command) + " | head -c 4096 > /dev/null; "
                           "exit ${PIPESTATUS[0]}"], capture_output=True, env=ENV, timeout=120)
    assert done.returncode == 7, done.stderr


def test_a_report_stream_that_fails_never_undoes_a_written_result(tmp_path):
    out = tmp_path / "out.onnx"
    done = _process("convert", FIXTURES / "spot_finder.onnx", "-o", out, shell_suffix="> /dev/full")
    assert done.returncode == 0 and b"the report was not written" in done.stderr, done.stderr
    assert fc2conv_onnx.read_geometry(out)
    done = _process("convert", FIXTURES / "spot_finder.onnx", "-o", "-", shell_suffix="2> /dev/full")
    assert done.returncode == 0 and fc2conv_onnx.read_geometry(done.stdout)  # the model whole; its report lost
    done = _process("inspect", FIXTURES / "spot_finder.onnx", shell_suffix="> /dev/full")  # the report is the result
    assert done.returncode == 6 and done.stderr.count(b"\n") == 1 and b"Traceback" not in done.stderr, done.stderr


def test_a_closed_report_pipe_is_exit_7_and_a_closed_stderr_no_error(tmp_path):
    reader = subprocess.Popen([sys.executable, "-m", "fc2conv_onnx", "inspect", str(FIXTURES / "spot_finder.onnx")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    reader.stdout.close()  # before the process writes its report
    _, stderr = reader.communicate(timeout=120)
    assert reader.returncode == 7 and b"Traceback" not in stderr, stderr
    out = tmp_path / "out.onnx"
    done = _process("convert", FIXTURES / "spot_finder.onnx", "-o", out, shell_suffix="2>&-")
    assert done.returncode == 0 and fc2conv_onnx.read_geometry(out)
    onnx_bytes = out.read_bytes()
    done = _process("convert", tmp_path / "missing.onnx", "-o", out, shell_suffix="2>&-")
    assert done.returncode == 3  # its own exit code, not 'internal error'
    assert out.read_bytes() == onnx_bytes


def test_standard_inputs_file_is_an_input(fixture_path, tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(fixture_path(STEM), model)
    before = model.read_bytes()
    with open(model, "rb") as stdin:
        done = _process("convert", "-", "-o", model, stdin=stdin)
    assert done.returncode == 3 and b"standard input's file" in done.stderr, done.stderr
    assert model.read_bytes() == before


def test_a_folder_name_is_never_written_as_a_file_and_draw_makes_it(spot_finder, tmp_path):
    code, _, stderr = cli("detect", spot_finder, DISKS, "-o", str(tmp_path / "newdir") + "/")
    assert code == 3 and "ends with '/'" in stderr and not (tmp_path / "newdir").exists(), stderr
    code, _, stderr = cli("detect", spot_finder, DISKS, "-o", tmp_path / "x.json", "--draw",
                          str(tmp_path / "drawn") + "/")
    assert code == 0, stderr
    assert [p.name for p in (tmp_path / "drawn").iterdir()] == ["disks.png"]


def test_a_failed_draw_removes_every_folder_it_made(spot_finder, tmp_path, monkeypatch):
    disk_full_at(monkeypatch, 2)
    code, _, stderr = cli("detect", spot_finder, DISKS, FIXTURES / "spots.png", "-o", tmp_path / "x.json", "--draw",
                          tmp_path / "a" / "b" / "c")
    assert code == 6, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_guard_is_linear_in_outputs_and_inputs(tmp_path, monkeypatch):
    """10,000 pictures with --draw took minutes when every output was compared with every input; the guard
    looks each one up in a set. Counted in calls to os.stat, which a pairwise check makes n^2 of."""
    def cost(count: int) -> int:
        folder = tmp_path / str(count)
        folder.mkdir()
        pictures = [folder / f"p{i}.png" for i in range(count)]
        for picture in pictures:
            picture.write_bytes(b"x")
        calls = [0]
        real = os.stat

        def counted(*args, **kwargs):
            calls[0] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(guard.os, "stat", counted)
        reads = guard.pictures_read(FIXTURES / "spot_finder.onnx", pictures)
        guard.check_outputs([(f"drawing {i}", folder / "out" / f"p{i}.png") for i in range(count)], reads,
                            folder_to_make=folder / "out")
        monkeypatch.setattr(guard.os, "stat", real)
        return calls[0]

    small, large = cost(300), cost(600)
    assert large <= 2.2 * small, (small, large)


def test_a_folder_of_drawings_is_listed_once_not_once_a_drawing(spot_finder, tmp_path, monkeypatch):
    """The sweep for a killed run's leftovers listed the drawing folder for every drawing: 10,000 drawings were
    10^8 names matched (163 s; 48 s once listed once, benchmarks/many_pictures.py)."""
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for index in range(5):
        shutil.copy(DISKS, pictures / f"p{index}.png")
    drawn, listings, real = tmp_path / "drawn", [], os.listdir

    def listed(path="."):
        listings.append(Path(path))
        return real(path)

    monkeypatch.setattr(writes.os, "listdir", listed)
    code, _, stderr = cli("detect", spot_finder, pictures, "-o", tmp_path / "x.json", "--draw", drawn)
    assert code == 0, stderr
    assert listings.count(drawn) == 1, listings
    monkeypatch.undo()
    assert len(list(drawn.iterdir())) == 5

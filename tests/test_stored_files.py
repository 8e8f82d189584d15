"""External data is opened as onnx opens it, and weights that change during a run are never written: the
location spellings onnx reads and refuses, a folder swapped for a link between the check and the read, a data
file rewritten or cut short after validation. Every conversion that is allowed is run in onnxruntime."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from test_files import STEM, relocate, run, with_external_data

import fc2conv_onnx
from fc2conv_onnx import InputError
from fc2conv_onnx.cli import main
from fc2conv_onnx.model import stored_files, weights, writes

#: Locations beneath a model folder laid out by `_folder`, and whether onnx reads them.
LOCATIONS = {
    "w.bin": True,
    "sub/w.bin": True,
    "./w.bin": True,
    "sub//w.bin": True,
    "sub/./w.bin": True,
    "sub/../w.bin": True,  # lexically inside: onnx normalises before opening
    "subln/../w.bin": True,  # the link is normalised away, never opened
    "nothing/../w.bin": True,
    "a\\b.bin": True,  # on POSIX a backslash is part of the name
    "sub\\w.bin": False,  # ... so this names no file
    "w.bin/": False,
    "sub": False,
    ".": False,
    "": False,
    "~/w.bin": False,
    " w.bin": False,
    "../m/w.bin": False,
    "sub/../../m/w.bin": False,
    "link_in.bin": False,  # a link, even to a file inside the folder
    "link_out.bin": False,
    "subln/w.bin": False,  # a link to a folder inside it
    "dirlink/o.bin": False,  # a link to a folder outside it
    "fifo": False,
}


def _folder(tmp_path):
    """A model folder with files, sub-folders, links in and out, and a FIFO; and the folder outside it."""
    folder, outside = tmp_path / "m", tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    outside.mkdir()
    for path in (folder / "w.bin", folder / "sub" / "w.bin", folder / "a\\b.bin", outside / "o.bin"):
        path.write_bytes(b"x" * 64)
    os.symlink("w.bin", folder / "link_in.bin")
    os.symlink("../out/o.bin", folder / "link_out.bin")
    os.symlink("../out", folder / "dirlink")
    os.symlink("sub", folder / "subln")
    os.mkfifo(folder / "fifo")
    return folder


def _opens(open_file, folder, location):
    try:
        os.close(open_file(folder, location))
        return True
    except (InputError, onnx.checker.ValidationError):
        return False


@pytest.mark.skipif(os.name != "posix", reason="the spellings are POSIX paths")
def test_this_tool_opens_exactly_the_locations_onnx_opens(tmp_path):
    folder = _folder(tmp_path)
    ours = {location: _opens(lambda f, where: stored_files.open_beneath(f, where, "x"), folder, location)
            for location in LOCATIONS}
    assert ours == LOCATIONS


@pytest.mark.skipif(os.name != "posix", reason="the spellings are POSIX paths")
def test_the_table_is_what_onnx_itself_does(tmp_path):
    from onnx.onnx_cpp2py_export import checker

    if not hasattr(checker, "_open_external_data"):
        pytest.skip(f"onnx {onnx.__version__} has no external-data opener of its own to compare with")
    folder = _folder(tmp_path)
    theirs = {location: _opens(lambda f, where: checker._open_external_data(str(f), where, "t", True), folder, location)
              for location in LOCATIONS}
    assert theirs == LOCATIONS


def test_a_file_whose_name_holds_a_backslash_is_read_as_onnx_reads_it(fixture_path, tmp_path):
    path = with_external_data(fixture_path(STEM), tmp_path / "model", location="a\\b.bin")
    out = tmp_path / "out.onnx"
    fc2conv_onnx.convert_file(path, out)
    np.testing.assert_allclose(run(out)[0].reshape(-1), run(path)[0].reshape(-1), rtol=1e-5, atol=1e-6)


def _convert(capsys, path, out):
    """`convert path -o out` in this process (the test changes files from inside the run): exit code, stderr."""
    code = main(["convert", str(path), "-o", str(out)])
    return code, capsys.readouterr().err


def _swap_after_the_check(monkeypatch, action):
    """Run `action` once the model's files have been checked and before any weight is read."""
    checked = weights.Weights.of_file.__func__

    def of_file(cls, *args, **kwargs):
        result = checked(cls, *args, **kwargs)
        action()
        return result

    monkeypatch.setattr(weights.Weights, "of_file", classmethod(of_file))


def test_a_folder_swapped_for_a_link_between_the_check_and_the_read_is_refused(fixture_path, tmp_path,
                                                                               monkeypatch):
    path = with_external_data(fixture_path(STEM), tmp_path / "model" / "sub")
    (tmp_path / "model" / "sub" / "model.onnx").rename(tmp_path / "model" / "model.onnx")
    path = tmp_path / "model" / "model.onnx"
    relocate(path, "sub/weights.bin")
    decoy = tmp_path / "elsewhere"
    decoy.mkdir()
    data = (tmp_path / "model" / "sub" / "weights.bin").read_bytes()
    (decoy / "weights.bin").write_bytes(bytes(len(data)))  # same size, other bytes

    def swap():
        (tmp_path / "model" / "sub").rename(tmp_path / "model" / "sub.old")
        os.symlink(decoy, tmp_path / "model" / "sub")

    _swap_after_the_check(monkeypatch, swap)
    out = tmp_path / "out.onnx"
    with pytest.raises(InputError, match="symbolic link|changed during the run"):
        fc2conv_onnx.convert_file(path, out)
    assert not out.exists()


@pytest.mark.parametrize("how", ["rewritten in place", "replaced", "cut short"])
def test_a_data_file_that_changes_after_validation_is_never_written(fixture_path, tmp_path, monkeypatch, capsys,
                                                                    how):
    path = with_external_data(fixture_path(STEM), tmp_path / "model")
    data = tmp_path / "model" / "weights.bin"
    size = data.stat().st_size
    saved = writes.save_model

    def change_then_save(*args, **kwargs):  # after validation, before the write
        if how == "rewritten in place":
            with open(data, "r+b") as stream:
                stream.write(np.random.default_rng(1).bytes(size))
        elif how == "replaced":
            data.with_name("new.bin").write_bytes(np.random.default_rng(1).bytes(size))
            os.replace(data.with_name("new.bin"), data)
        else:
            os.truncate(data, size // 2)
        return saved(*args, **kwargs)

    monkeypatch.setattr(writes, "save_model", change_then_save)
    out = tmp_path / "out.onnx"
    code, stderr = _convert(capsys, path, out)
    assert code == 3, stderr
    assert "changed during the run" in stderr and "Traceback" not in stderr
    assert not out.exists() and not any(p.name.startswith("out.onnx") for p in tmp_path.iterdir())


def test_a_data_file_cut_short_before_its_weights_are_read_is_exit_3(fixture_path, tmp_path, monkeypatch, capsys):
    path = with_external_data(fixture_path(STEM), tmp_path / "model")
    data = tmp_path / "model" / "weights.bin"
    _swap_after_the_check(monkeypatch, lambda: os.truncate(data, data.stat().st_size // 2))
    code, stderr = _convert(capsys, path, tmp_path / "out.onnx")
    assert code == 3 and "changed during the run" in stderr and "Traceback" not in stderr, stderr


def test_a_model_file_removed_before_its_weights_are_read_is_exit_3(fixture_path, tmp_path, monkeypatch, capsys):
    import shutil

    path = tmp_path / "model.onnx"
    shutil.copy(fixture_path(STEM), path)  # its large weights stay in the file until read
    _swap_after_the_check(monkeypatch, lambda: path.unlink())
    code, stderr = _convert(capsys, path, tmp_path / "out.onnx")
    assert code == 3 and "changed during the run" in stderr and "Traceback" not in stderr, stderr

"""One commit point for every write: at every instant OUT holds the complete previous pair (model + data
file) or the complete new one. Proven by killing a real process before each file-system step of a write,
by SIGTERM and SIGINT at each step, by two conversions racing to one output, and by refusing special files.
Every pair left is loaded by onnxruntime and its numbers compared with the two models it may be."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_cli import ENV, cli
from test_files import data_files, run

import fc2conv_onnx
from fc2conv_onnx import InputError

STEM = "dress_detector"

#: Runs a conversion to argv[2] from argv[1] and, at the argv[3]-th file-system call made by fc2conv_onnx's
#: writing module, sends itself signal argv[4] (SIGKILL: no code runs after it). Prints the number of calls
#: when the conversion ends.
STEPPER = r"""
import os, signal, sys
from fc2conv_onnx import cli
from fc2conv_onnx.model import writes
limit, number, count = int(sys.argv[3]), int(sys.argv[4]), [0]
def counted(real):
    def call(*args, **kwargs):
        if sys._getframe(1).f_code.co_filename == writes.__file__:
            count[0] += 1
            if count[0] == limit:
                os.kill(os.getpid(), number)
        return real(*args, **kwargs)
    return call
for name in ("open", "replace", "unlink", "fsync", "fchmod", "close"):
    setattr(os, name, counted(getattr(os, name)))
writes.tempfile.mkstemp = counted(writes.tempfile.mkstemp)
code = cli.main(["convert", sys.argv[1], "-o", sys.argv[2], "--external-data", "--no-validate"])
print(count[0])
sys.exit(code)
"""


def scores(path):
    return run(path)[0].ravel()  # the dress detector on test_files' seeded image


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """The dress detector (old) and the same model with other weights (new), each converted once: a pair of
    one read with the data file of the other would load and run, and give other numbers."""
    folder = tmp_path_factory.mktemp("models")
    old, new = folder / "old.onnx", folder / "new.onnx"
    shutil.copy(Path(__file__).resolve().parents[1] / "fixtures" / f"{STEM}.onnx", old)
    model = onnx.load(str(old))
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32:
            tensor.CopyFrom(numpy_helper.from_array(values[::-1].copy() * 1.5, tensor.name))
    onnx.save(model, str(new))
    expected = {}
    for path in (old, new):
        converted = folder / f"{path.stem}_converted.onnx"
        fc2conv_onnx.convert_file(path, converted, external_data=True)
        expected[path.stem] = scores(converted)
    assert not np.allclose(expected["old"], expected["new"])
    return old, new, expected


def previous_pair(folder: Path, old: Path) -> Path:
    folder.mkdir()
    out = folder / "out.onnx"
    fc2conv_onnx.convert_file(old, out, external_data=True, validate=False)
    return out


def which(out: Path, expected) -> str:
    """'old' or 'new': the complete pair `out` holds (fails on anything else)."""
    got = scores(out)
    matches = [name for name, values in expected.items() if np.allclose(got, values, rtol=1e-4, atol=1e-5)]
    assert len(matches) == 1, f"{out} holds neither pair whole: {got[:4]}"
    return matches[0]


def step(out: Path, new: Path, limit: int, number: int):
    done = subprocess.run([sys.executable, "-c", STEPPER, str(new), str(out), str(limit), str(number)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    return done


def _has_extended_attributes(folder: Path) -> bool:
    probe = folder / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.fc2conv_onnx.probe", b"1")
        return True
    except (OSError, AttributeError):
        return False
    finally:
        probe.unlink()


def steps_of_a_write(tmp_path, old, new) -> int:
    out = previous_pair(tmp_path / "count", old)
    done = step(out, new, 0, signal.SIGKILL)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.processes
def test_a_kill_before_any_step_of_a_write_leaves_one_whole_pair(two_models, tmp_path):
    old, new, expected = two_models
    total = steps_of_a_write(tmp_path, old, new)
    assert total >= 8
    seen, unreferenced_left = set(), []
    marks = _has_extended_attributes(tmp_path)  # without them, a killed run's temporaries are never removed
    for limit in range(1, total + 1):
        folder = tmp_path / f"kill{limit}"
        out = previous_pair(folder, old)
        old_data = _data_of(out)
        old_bytes = old_data.read_bytes()
        done = step(out, new, limit, signal.SIGKILL)
        assert done.returncode == -signal.SIGKILL, done.stderr
        seen.add(which(out, expected))
        after_kill = _data_of(out)
        # The next run removes the killed run's temporaries (they carry the uncommitted mark), and no data
        # file any model named: the old pair's is whole, and so is the killed run's once it committed.
        fc2conv_onnx.convert_file(new, out, external_data=True, validate=False)
        assert which(out, expected) == "new"
        assert old_data.read_bytes() == old_bytes
        names = sorted(p.name for p in folder.iterdir() if marks or not p.name.endswith(".tmp"))
        assert names == ["out.onnx"] + data_files(folder), names
        extra = set(data_files(folder)) - {old_data.name, after_kill.name, _data_of(out).name}
        unreferenced_left += [limit] * len(extra)
    assert seen == {"old", "new"}  # the commit was among the steps
    # Only a kill between the mark's removal and the commit leaves a data file nothing names (never removed,
    # as a file no run can tell from a committed one): the commit's own step.
    assert len(unreferenced_left) <= 1, unreferenced_left


@pytest.mark.processes
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_at_any_step_removes_temporaries_and_keeps_one_whole_pair(two_models, tmp_path, number):
    old, new, expected = two_models
    total = steps_of_a_write(tmp_path, old, new)
    for limit in range(1, total + 1):
        folder = tmp_path / f"signal{limit}"
        out = previous_pair(folder, old)
        before = sorted(p.name for p in folder.iterdir())
        done = step(out, new, limit, number)
        held = which(out, expected)
        left = sorted(p.name for p in folder.iterdir())
        if held == "old":  # stopped before the commit: exit 128 + signal, the folder as it was
            assert done.returncode == 128 + number and "interrupted" in done.stderr, done.stderr
            assert left == before
        else:  # the signal waited for the commit; the replaced pair's data file is left
            assert left == sorted(before + [_data_of(out).name])


@pytest.mark.processes
def test_concurrent_conversions_to_one_output_end_with_one_whole_pair(two_models, tmp_path):
    old, new, expected = two_models
    out = previous_pair(tmp_path / "race", old)
    for _ in range(3):
        runs = [subprocess.Popen([sys.executable, "-m", "fc2conv_onnx", "convert", str(model), "-o", str(out),
                                  "--external-data", "--no-validate"], env=ENV, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE) for model in (old, new, new, old)]
        assert [r.wait(timeout=120) for r in runs] == [0] * 4
        which(out, expected)
        assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def _data_of(out: Path):
    """The data file the model at `out` refers to (None if it cannot be read now)."""
    try:
        model = onnx.load(str(out), load_external_data=False)
    except Exception:
        return None
    names = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return out.parent / names.pop() if len(names) == 1 else None


def test_a_reader_of_an_older_out_finds_its_own_data_file_or_none(two_models, tmp_path):
    """A reader has read OUT and not yet its data file (a server reloading, a slow disk) while OUT is
    replaced three times: the name it holds never comes to hold another conversion's weights."""
    old, new, _ = two_models
    out = previous_pair(tmp_path / "reader", old)
    data = _data_of(out)
    held = data.read_bytes()
    for model in (old, new, new):
        fc2conv_onnx.convert_file(model, out, external_data=True, validate=False)
        assert not data.exists() or data.read_bytes() == held


READER = r"""
import os, sys, time, hashlib, onnx
out, stop, seen = sys.argv[1], sys.argv[2], {}
while not os.path.exists(stop):
    try:
        model = onnx.load(out, load_external_data=False)
    except Exception:
        continue
    names = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    time.sleep(0.02)  # a reader that opens the data file a little after the model
    for name in names:
        try:
            with open(os.path.join(os.path.dirname(out), name), "rb") as data:
                digest = hashlib.sha256(data.read()).hexdigest()
        except FileNotFoundError:  # the pair was replaced and removed meanwhile: load again
            continue
        if seen.setdefault(name, digest) != digest:
            print("MIXED", name)
            sys.exit(1)
print(len(seen))
"""


@pytest.mark.processes
def test_readers_racing_with_conversions_never_see_a_name_change_its_bytes(two_models, tmp_path):
    """Real processes: a reader loading OUT and then its data file, while conversions of two models replace
    OUT; every data-file name it meets keeps the bytes it first had (on the earlier protocol the freed
    `OUT.data` came back with the other model's weights)."""
    old, new, expected = two_models
    out = previous_pair(tmp_path / "readers", old)
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(out), str(stop)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for models in ((new, old), (old, new), (new, new), (old, old)):
            runs = [subprocess.Popen([sys.executable, "-m", "fc2conv_onnx", "convert", str(model), "-o", str(out),
                                      "--external-data", "--no-validate"], env=ENV, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE) for model in models]
            assert [r.wait(timeout=120) for r in runs] == [0, 0]
    finally:
        stop.touch()
        stdout, stderr = reader.communicate(timeout=60)
    assert reader.returncode == 0, stdout + stderr
    assert int(stdout.split()[-1]) >= 2  # it met several pairs
    which(out, expected)
    fc2conv_onnx.convert_file(new, out, external_data=True, validate=False)  # removes what the races left
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.onnx"] + data_files(out.parent)


def test_special_files_are_refused_as_outputs_and_inputs(fixture_path, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    os.symlink(fifo, tmp_path / "link")
    for target, why in ((fifo, "device, FIFO or socket"), (tmp_path / "link", "symbolic link"),
                        (Path(os.devnull), "a system folder"), (Path("/dev/stdout"), "symbolic link")):
        code, _, stderr = cli("convert", fixture_path(STEM), "-o", target)
        assert code == 3 and why in stderr and stderr.count("\n") == 1, stderr
        assert stat.S_ISFIFO(fifo.stat().st_mode) and os.path.islink("/dev/stdout")
    for command in (["convert", fifo, "-o", tmp_path / "o.onnx"], ["inspect", fifo], ["validate", fifo, fifo]):
        code, _, stderr = cli(*command)  # would block forever reading a FIFO
        assert code == 3 and "not a regular file" in stderr, stderr


def test_a_replaced_model_keeps_its_permissions(fixture_path, tmp_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    os.chmod(out, 0o600)
    fc2conv_onnx.convert_file(fixture_path(STEM), out, validate=False)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("in_place", [False, True])
def test_a_replaced_model_keeps_its_owner_and_never_a_set_id_bit(fixture_path, tmp_path, in_place):
    out = tmp_path / "out.onnx"
    shutil.copy(fixture_path(STEM), out)
    os.chown(out, 4321, 4322)
    os.chmod(out, 0o6755)
    source = out if in_place else fixture_path(STEM)
    fc2conv_onnx.convert_file(source, out, in_place=in_place, validate=False)
    status = out.stat()
    assert (status.st_uid, status.st_gid) == (4321, 4322)
    assert stat.S_IMODE(status.st_mode) == 0o755
    assert fc2conv_onnx.read_geometry(out)


def test_unusable_output_names_are_refused_up_front(fixture_path, tmp_path):
    with pytest.raises(InputError, match="too long"):
        fc2conv_onnx.convert_file(fixture_path(STEM), tmp_path / ("a" * 250 + ".onnx"))
    code, _, stderr = cli("convert", fixture_path(STEM), "-o", tmp_path / ("b" * 300))
    assert code == 3 and stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_failed_commit_keeps_the_previous_pair_and_says_nothing_was_written(two_models, tmp_path, monkeypatch):
    """The model's rename is the one commit: when it fails, the previous pair is whole, the new data file is
    gone, and the error says nothing was written."""
    from fc2conv_onnx.model import writes

    old, new, expected = two_models
    out = previous_pair(tmp_path / "commit", old)
    before = sorted(p.name for p in out.parent.iterdir())
    real = os.replace

    def failing(source, target):
        if Path(target) == out:
            raise PermissionError(13, "Permission denied")
        return real(source, target)

    monkeypatch.setattr(writes.os, "replace", failing)
    with pytest.raises(InputError, match="nothing was written"):
        fc2conv_onnx.convert_file(new, out, external_data=True, validate=False)
    monkeypatch.undo()
    assert sorted(p.name for p in out.parent.iterdir()) == before
    assert which(out, expected) == "old"


def test_a_short_write_to_a_file_is_a_full_disk_not_a_success(tmp_path):
    """Every byte written to an output file is counted: a write that takes fewer bytes than given is refused."""
    from fc2conv_onnx import ResourceError
    from fc2conv_onnx.model import writes

    class Short:
        def write(self, data):
            return len(data) - 1

    with pytest.raises(ResourceError, match="no space left to write"):
        with writes._disk_errors(tmp_path / "out.jsonl"):
            writes._write_whole(Short(), b"a frame's records\n")

"""Reading and writing files: weights read where they lie, external data in and out, path safety, in-place,
atomic writes that lose nothing. Every written model is loaded back with onnx and run in onnxruntime."""
from __future__ import annotations

import errno
import os
import re
import shutil
import stat

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from test_cli import cli

import fc2conv_onnx
from fc2conv_onnx import InputError
from fc2conv_onnx.errors import ResourceError
from fc2conv_onnx.model import io, skeleton, weights

from conftest import FIXTURES

STEM = "dress_detector"


TRAINING = (1, 3, 128, 64)  # the dress detector's input


def run(path, shape=TRAINING):
    """Outputs of the model file at `path` on a seeded input (external data resolved by onnxruntime)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return session.run(None, {session.get_inputs()[0].name: image})


def with_external_data(source, folder, location="weights.bin"):
    """`source` saved into `folder` with every initializer in one external-data file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(onnx.load(str(source)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)
    return path


def data_files(folder, output_name="out.onnx"):
    """The data files the tool wrote for `output_name` in `folder` (named OUT.<12 hex digits>.data)."""
    pattern = re.escape(output_name) + r"\.[0-9a-f]{12}\.data"
    return sorted(p.name for p in folder.iterdir() if re.fullmatch(pattern, p.name))


def relocate(path, location):
    """Point every external tensor of the model at `path` to `location` (offsets kept)."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


def test_a_model_is_read_without_its_large_weights_and_written_back_bit_exact(fixture_path, tmp_path):
    source = fixture_path(STEM)
    loaded = io.read_model(source)
    original = onnx.load(str(source))
    detached = [t.name for t in loaded.model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    big = [t.name for t in original.graph.initializer if len(t.raw_data) >= skeleton.DETACH_BYTES]
    assert detached == big and big  # the skeleton holds no large raw_data
    assert loaded.model.ByteSize() < original.ByteSize() / 4
    for tensor in loaded.model.graph.initializer:
        expected = numpy_helper.to_array(next(t for t in original.graph.initializer if t.name == tensor.name))
        np.testing.assert_array_equal(loaded.weights.array(tensor), expected)
    back = onnx.ModelProto.FromString(loaded.weights.embedded_bytes(loaded.model))
    assert back.SerializeToString(deterministic=True) == original.SerializeToString(deterministic=True)


def test_external_data_in_gives_external_data_out_even_when_every_such_tensor_was_rewritten(tmp_path):
    """The spot finder's only large tensor is its head's weight, which the conversion replaces."""
    source = FIXTURES / "spot_finder.onnx"
    path = with_external_data(source, tmp_path / "in")
    out = tmp_path / "out.onnx"
    report = fc2conv_onnx.convert_file(path, out)
    [data] = data_files(tmp_path)
    assert report.external_data == str(tmp_path / data)
    image = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(run(out, image.shape)[0].reshape(-1), run(source, image.shape)[0].reshape(-1),
                               rtol=1e-5, atol=1e-6)


def test_external_data_in_gives_external_data_out_and_the_same_numbers(fixture_path, tmp_path):
    embedded_out = tmp_path / "embedded.onnx"
    fc2conv_onnx.convert_file(fixture_path(STEM), embedded_out)
    source = with_external_data(fixture_path(STEM), tmp_path / "in")
    out = tmp_path / "out" / "converted.onnx"
    out.parent.mkdir()
    report = fc2conv_onnx.convert_file(source, out)
    [data] = data_files(out.parent, "converted.onnx")
    assert report.external_data == str(out.parent / data)
    assert sorted(p.name for p in out.parent.iterdir()) == ["converted.onnx", data]
    skeleton = onnx.load(str(out), load_external_data=False)
    kernel = max(skeleton.graph.initializer, key=lambda t: np.prod(t.dims))
    assert kernel.data_location == onnx.TensorProto.EXTERNAL
    assert out.stat().st_size < 64 << 10
    larger = (1, 3, 160, 96)
    np.testing.assert_array_equal(run(out, larger)[0], run(embedded_out, larger)[0])
    onnx.checker.check_model(str(out), full_check=True)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("external", [True, False])
def test_the_weights_go_where_they_are_asked_to(fixture_path, tmp_path, external):
    source = with_external_data(fixture_path(STEM), tmp_path / "in") if not external else fixture_path(STEM)
    out = tmp_path / "out.onnx"
    report = fc2conv_onnx.convert_file(source, out, external_data=external)
    assert len(data_files(tmp_path)) == external
    assert (report.external_data is not None) == external
    onnx.checker.check_model(str(out), full_check=True)
    expected = run(fixture_path(STEM))[0]
    np.testing.assert_allclose(run(out)[0].reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)


def _outside_copy(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("case", ["absolute", "parent", "symlink", "missing", "short"])
def test_unsafe_external_data_is_refused_before_anything_is_read(fixture_path, tmp_path, monkeypatch, case):
    path = with_external_data(fixture_path(STEM), tmp_path / "model")
    data = tmp_path / "model" / "weights.bin"
    outside = _outside_copy(tmp_path)
    shutil.copy(data, outside / "weights.bin")
    if case == "absolute":
        relocate(path, str(outside / "weights.bin"))
    elif case == "parent":
        relocate(path, "../outside/weights.bin")
    elif case == "symlink":
        os.symlink(outside / "weights.bin", tmp_path / "model" / "link.bin")
        relocate(path, "link.bin")
    elif case == "missing":
        relocate(path, "gone.bin")
    else:
        with open(data, "r+b") as stream:
            stream.truncate(data.stat().st_size - 4)
    words = {"absolute": "absolute path", "parent": "climbs out", "symlink": "symbolic link",
             "missing": "does not exist", "short": "past the end"}[case]

    def no_reading(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(weights.Weights, "array", no_reading)
    monkeypatch.setattr(weights.Weights, "_write_payload", no_reading)
    with pytest.raises(InputError, match=words):
        fc2conv_onnx.inspect(path)
    out = tmp_path / "out.onnx"
    code, stdout, stderr = cli("convert", path, "-o", out)
    assert code == 3 and stderr.count("\n") == 1 and words in stderr and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".out*"))


def test_external_data_outside_initializers_is_refused(fixture_path, tmp_path):
    model = onnx.load(str(fixture_path(STEM)))
    name = model.graph.initializer[0].name
    value = onnx.helper.make_tensor(name + "_c", onnx.TensorProto.FLOAT, [300], np.zeros(300, np.float32))
    value.ClearField("float_data")
    value.data_location = onnx.TensorProto.EXTERNAL
    for key, entry in (("location", "c.bin"), ("offset", "0"), ("length", "1200")):
        value.external_data.add(key=key, value=entry)
    (tmp_path / "c.bin").write_bytes(bytes(1200))
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], [name + "_c"], value=value))
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InputError, match="not an initializer of the main graph"):
        fc2conv_onnx.inspect(path)


def test_in_place_needs_to_be_asked_for(fixture_path, tmp_path):
    path = tmp_path / "model.onnx"
    shutil.copy(fixture_path(STEM), path)
    before = path.read_bytes()
    code, _, stderr = cli("convert", path, "-o", path)
    assert code == 3 and "--in-place" in stderr and path.read_bytes() == before
    expected = run(fixture_path(STEM))[0]
    code, stdout, stderr = cli("convert", path, "-o", path, "--in-place")
    assert code == 0, stderr
    assert fc2conv_onnx.read_geometry(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    np.testing.assert_allclose(run(path)[0].reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)


def test_in_place_with_external_data_replaces_both_files(fixture_path, tmp_path):
    path = with_external_data(fixture_path(STEM), tmp_path, location="model.onnx.data")
    expected = run(path)[0]
    code, _, stderr = cli("convert", path, "-o", tmp_path / "model.onnx")
    assert code == 3 and "--in-place" in stderr
    os.chmod(path, 0o600)
    os.chmod(tmp_path / "model.onnx.data", 0o640)
    assert cli("convert", path, "-o", path, "--in-place")[0] == 0
    # The new data file takes a fresh name (the old one is referred to until the model's rename commits);
    # the replaced one is left (a copy of the old model may name it); the files keep the model's permissions.
    [data] = data_files(tmp_path, "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.onnx", "model.onnx.data", data])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / data).stat().st_mode) == 0o600
    np.testing.assert_allclose(run(path)[0].reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)


def test_the_output_never_writes_over_the_inputs_data_file(fixture_path, tmp_path):
    """A model whose weights are in 'out.onnx.data': out.onnx gets its data file under a free name."""
    path = with_external_data(fixture_path(STEM), tmp_path, location="out.onnx.data")
    data = (tmp_path / "out.onnx.data").read_bytes()
    expected = run(path)[0]
    report = fc2conv_onnx.convert_file(path, tmp_path / "out.onnx")
    [first] = data_files(tmp_path)
    assert report.external_data == str(tmp_path / first)
    assert (tmp_path / "out.onnx.data").read_bytes() == data
    np.testing.assert_allclose(run(tmp_path / "out.onnx")[0].reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)
    # Converted again over that output: the input's data file is kept, and so is the replaced output's (a
    # copy of that model may name it); the new one takes a new name.
    fc2conv_onnx.convert_file(path, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx.data").read_bytes() == data
    second = (set(data_files(tmp_path)) - {first}).pop()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.onnx", "out.onnx", first, second,
                                                                 "out.onnx.data"])
    np.testing.assert_allclose(run(tmp_path / "out.onnx")[0].reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("external", [False, True])
def test_a_failed_write_keeps_the_previous_output_and_leaves_nothing(fixture_path, tmp_path, monkeypatch, external):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    (tmp_path / "out.onnx.data").write_bytes(b"previous data")
    calls = []

    def failing(self, tensor, stream):
        calls.append(tensor.name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, tensor, stream)

    original = weights.Weights._write_payload
    monkeypatch.setattr(weights.Weights, "_write_payload", failing)
    with pytest.raises(ResourceError, match="no space left") as raised:
        fc2conv_onnx.convert_file(fixture_path(STEM), out, external_data=external, validate=False)
    assert raised.value.exit_code == 6
    assert out.read_bytes() == b"previous" and (tmp_path / "out.onnx.data").read_bytes() == b"previous data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]


@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage"])
def test_damaged_files_get_one_line(fixture_path, tmp_path, damage):
    data = bytearray(fixture_path(STEM).read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        data[10:40] = bytes(b ^ 0xFF for b in data[10:40])
    else:
        data = bytearray(b"\x0f" * 1000)
    path = tmp_path / "bad.onnx"
    path.write_bytes(bytes(data))
    code, _, stderr = cli("convert", path, "-o", tmp_path / "out.onnx")
    assert code == 3 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert not (tmp_path / "out.onnx").exists()


def test_a_link_at_the_output_is_refused_and_a_link_at_a_data_name_left_alone(fixture_path, tmp_path):
    """A rename onto a link would replace the link, not the file it names (as root, `-o /dev/stdout` replaced
    the system's link): a link at OUT is refused before any work. A link at a data file's name is never
    written through (the data file takes a free name), so nothing outside the folder changes."""
    outside = _outside_copy(tmp_path)
    (outside / "model.onnx").write_bytes(b"keep me")
    (outside / "data").write_bytes(b"keep me too")
    folder = tmp_path / "out"
    folder.mkdir()
    os.symlink(outside / "model.onnx", folder / "out.onnx")
    os.symlink(outside / "data", folder / "out.onnx.data")
    code, _, stderr = cli("convert", fixture_path(STEM), "-o", folder / "out.onnx", "--external-data")
    assert code == 3 and "symbolic link" in stderr and stderr.count("\n") == 1, stderr
    assert (folder / "out.onnx").is_symlink() and (outside / "model.onnx").read_bytes() == b"keep me"
    os.unlink(folder / "out.onnx")
    fc2conv_onnx.convert_file(fixture_path(STEM), folder / "out.onnx", external_data=True)
    assert (outside / "model.onnx").read_bytes() == b"keep me" and (outside / "data").read_bytes() == b"keep me too"
    assert (folder / "out.onnx.data").is_symlink()
    assert len(data_files(folder)) == 1
    onnx.checker.check_model(str(folder / "out.onnx"), full_check=True)


def test_validation_writes_no_temporary_copy_of_the_weights(fixture_path, tmp_path, monkeypatch):
    """The weights reach onnxruntime and the checker as arrays, never as a copy in the temporary folder (a
    sparse multi-GiB external file would become a full one there): the only temporaries are the output's,
    in the output's folder."""
    import tempfile

    def in_the_output_folder_only(real):
        def make(*args, **kwargs):
            assert kwargs.get("dir") == tmp_path, f"a temporary file outside the output folder: {kwargs}"
            return real(*args, **kwargs)
        return make

    path = with_external_data(fixture_path(STEM), tmp_path / "in")
    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, name, in_the_output_folder_only(getattr(tempfile, name)))
    report = fc2conv_onnx.convert_file(path, tmp_path / "o.onnx", external_data=True)
    assert any(check.check == "windows" for check in report.checks)

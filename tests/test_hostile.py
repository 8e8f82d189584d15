"""Crafted and unusual inputs: the tool reads every tensor as onnx does (property-tested over storage forms),
refuses what the onnx checker refuses, cannot be made to take a file's bytes for its own arrays, gives each
failure its documented exit code, and prints names from the model with control characters escaped."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from test_cli import cli
from test_files import run

import fc2conv_onnx
from fc2conv_onnx.errors import InputError, ResourceError
from fc2conv_onnx.model import io, runtime, writes

STEM = "dress_detector"

DTYPES = [np.float32, np.float16, np.float64, np.int64, np.int32, np.int8, np.uint8, np.uint16, np.bool_]
#: How a tensor's values are stored: raw_data, the typed field of its type, or an external-data file (at an
#: offset in a file shared with other tensors, or alone in its own).
STORAGES = ["raw", "typed", "external shared", "external alone"]


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 12), min_size=0, max_size=3)))
    values = draw(st.integers(0, 2**31)).__index__()
    rng = np.random.default_rng(values)
    array = (rng.integers(0, 2, shape).astype(bool) if dtype == np.bool_ else
             (rng.standard_normal(shape) * 100).astype(dtype))
    storage = draw(st.sampled_from(STORAGES))
    if array.size == 0 and storage.startswith("external"):
        storage = "raw"  # onnx.save never writes one; onnx < 1.17 reads a "length" of 0 as "to the end of the file"
    return array, storage, draw(st.integers(0, 40))


def write_model(folder: Path, drawn) -> Path:
    """A model whose outputs are its initializers (through Identity), each stored as drawn."""
    initializers, nodes, outputs = [], [], []
    shared = bytearray()
    for index, (array, storage, padding) in enumerate(drawn):
        name = f"t{index}"
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        if storage == "typed":
            tensor = helper.make_tensor(name, elem, array.shape, array.ravel().tolist(), raw=False)
        else:
            tensor = numpy_helper.from_array(array, name)
        if storage.startswith("external"):
            data = tensor.raw_data
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            if storage == "external shared":
                shared.extend(b"\xee" * padding)
                entries = {"location": "shared.bin", "offset": str(len(shared)), "length": str(len(data))}
                shared.extend(data)
            else:
                (folder / f"{name}.bin").write_bytes(data)
                entries = {"location": f"{name}.bin"}
            for key, value in entries.items():
                tensor.external_data.add(key=key, value=value)
        initializers.append(tensor)
        nodes.append(helper.make_node("Identity", [name], [f"out{index}"]))
        outputs.append(helper.make_tensor_value_info(f"out{index}", elem, array.shape))
    (folder / "shared.bin").write_bytes(bytes(shared))
    graph = helper.make_graph(nodes, "storage", [], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tensors(), min_size=1, max_size=6))
def test_every_storage_form_is_read_as_onnx_reads_it_and_written_back_the_same(drawn):
    with tempfile.TemporaryDirectory() as folder:
        path = write_model(Path(folder), drawn)
        expected = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
        loaded = io.read_model(path)
        for tensor in loaded.model.graph.initializer:
            got = loaded.weights.array(tensor)
            assert got.dtype == expected[tensor.name].dtype and got.shape == expected[tensor.name].shape
            assert got.tobytes() == expected[tensor.name].tobytes(), tensor.name
        for external in (False, True):
            out = Path(folder) / f"written_{external}.onnx"
            writes.save_model(loaded.model, loaded.weights, out, external_data=external)
            again = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
            assert {k: v.tobytes() for k, v in again.items()} == {k: v.tobytes() for k, v in expected.items()}


def test_a_tensor_both_external_and_embedded_is_refused_like_the_checker_does(tmp_path):
    array = np.arange(600, dtype=np.float32)
    path = write_model(tmp_path, [(array, "external alone", 0)])
    model = onnx.load(str(path), load_external_data=False)
    model.graph.initializer[0].raw_data = (array * 0).tobytes()  # onnx and onnxruntime read the file
    path.write_bytes(model.SerializeToString())
    with pytest.raises(onnx.checker.ValidationError, match="externally"):
        onnx.checker.check_model(str(path))
    code, _, stderr = cli("inspect", path)
    assert code == 3 and "also holds its bytes" in stderr
    small = tmp_path / "small"  # the same with a tensor the reader keeps in the skeleton
    small.mkdir()
    path = write_model(small, [(np.arange(4, dtype=np.float32), "external alone", 0)])
    model = onnx.load(str(path), load_external_data=False)
    model.graph.initializer[0].raw_data = bytes(16)
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InputError, match="also holds its bytes"):
        io.read_model(path)


@pytest.mark.parametrize("name", ["(held in memory #0)", "held:0"])
def test_no_file_name_reaches_the_tools_own_arrays(fixture_path, tmp_path, name):
    """A model file and an external-data file named like keys of the arrays the tool makes (this tool's old
    key, and its new one without the NUL byte no file name can hold) are read as files: the converted model
    gives the original's numbers."""
    (tmp_path / "external").mkdir()
    (tmp_path / "embedded").mkdir()
    path = tmp_path / "external" / "model.onnx"
    onnx.save(onnx.load(str(fixture_path(STEM))), str(path), save_as_external_data=True, location=name,
              size_threshold=0)
    embedded = tmp_path / "embedded" / name
    shutil.copy(fixture_path(STEM), embedded)
    expected = run(fixture_path(STEM))[0]
    for source in (path, embedded):
        out = tmp_path / "out.onnx"
        fc2conv_onnx.convert_file(source, out, external_data=True)
        np.testing.assert_allclose(run(out)[0].reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)


def damaged(fixture_path, tmp_path, how: str) -> Path:
    """The dress detector damaged in one way."""
    model = onnx.load(str(fixture_path(STEM)))
    largest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    smallest = min((t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT),
                   key=lambda t: len(t.raw_data))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if how in ("NUL in a location", "a 5000-character location"):
        largest.ClearField("raw_data")
        largest.data_location = TensorProto.EXTERNAL
        largest.external_data.add(key="location", value="a\0b" if how.startswith("NUL") else "a" * 5000)
    elif how == "float_data longer than its shape":
        values = numpy_helper.to_array(smallest).ravel().tolist()
        smallest.ClearField("raw_data")
        smallest.float_data.extend(values + [1.0, 2.0])
    elif how == "a negative dim":
        dims[2].dim_value = -5
    elif how == "batch 0":
        dims[0].dim_value = 0
    elif how == "a sparse initializer":
        sparse = onnx.SparseTensorProto(dims=[4])
        sparse.values.CopyFrom(numpy_helper.from_array(np.ones(1, np.float32), "sparse"))
        sparse.indices.CopyFrom(numpy_helper.from_array(np.zeros(1, np.int64), "sparse_indices"))
        model.graph.sparse_initializer.append(sparse)
    path = tmp_path / "damaged.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("how", ["NUL in a location", "a 5000-character location", "float_data longer than its shape",
                                 "a negative dim", "batch 0", "a sparse initializer"])
def test_damaged_models_are_bad_input(fixture_path, tmp_path, how):
    path = damaged(fixture_path, tmp_path, how)
    code, stdout, stderr = cli("convert", path, "-o", tmp_path / "out.onnx")
    assert code == 3 and stderr.count("\n") == 1 and "internal error" not in stderr, stderr
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("args, code", [
    (["--seed", "-1"], 2),
    (["--validate-size", "99999x99999"], 2),  # past the 65536 a size flag may ask for on one axis
    (["--validate-size", "30000x30000"], 3),  # within it, but the model's input there takes more than 1 GiB
])
def test_unusable_flag_values_get_their_codes(fixture_path, tmp_path, args, code):
    done = cli("convert", fixture_path(STEM), "-o", tmp_path / "out.onnx", *args)
    assert done[0] == code and done[2].count("\n") == 1, done[2]


def test_an_over_long_input_path_is_bad_input(tmp_path):
    code, _, stderr = cli("convert", "/tmp/" + "a" * 300 + ".onnx", "-o", tmp_path / "out.onnx")
    assert code == 3 and "cannot be read" in stderr


def test_a_damaged_converted_marker_is_bad_input(fixture_path, tmp_path):
    converted = tmp_path / "converted.onnx"
    fc2conv_onnx.convert_file(fixture_path(STEM), converted)
    model = onnx.load(str(converted))
    for prop in model.metadata_props:
        if prop.key == "fc2conv_onnx.converted":
            prop.value = prop.value[: len(prop.value) // 2]
    converted.write_bytes(model.SerializeToString())
    Image = pytest.importorskip("PIL.Image")
    Image.new("RGB", (64, 128)).save(tmp_path / "image.png")
    code, _, stderr = cli("heatmap", converted, tmp_path / "image.png", "-o", tmp_path / "map.png")
    assert code == 3 and "metadata is damaged" in stderr, stderr


@pytest.mark.parametrize("message, error", [
    ("[ONNXRuntimeError] : 1 : FAIL : Load model from bytes failed: Node (x) Op (Foo) kernel is not supported",
     InputError),
    ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : std::bad_alloc", ResourceError),
])
def test_an_original_onnxruntime_cannot_run_is_bad_input_and_memory_is_a_resource(fixture_path, monkeypatch,
                                                                                  message, error):
    real = runtime.Session.__init__

    def failing(self, model, weights=None, *args):
        if not any(p.key == "fc2conv_onnx.converted" for p in model.metadata_props):
            raise RuntimeError(message)
        real(self, model, weights, *args)

    monkeypatch.setattr(runtime.Session, "__init__", failing)
    with pytest.raises(error) as raised:
        fc2conv_onnx.convert(str(fixture_path(STEM)))
    assert "ONNXRuntimeError" not in str(raised.value)


def test_names_with_control_characters_are_escaped_in_reports(fixture_path, tmp_path):
    model = onnx.load(str(fixture_path(STEM)))
    gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
    gemm.name = "fc\nwritten: /etc/passwd\x1b[31m"
    path = tmp_path / "named.onnx"
    path.write_bytes(model.SerializeToString())
    for command in (["convert", path, "-o", tmp_path / "out.onnx"], ["inspect", path]):
        code, stdout, stderr = cli(*command)
        assert code == 0, stderr
        assert "\x1b" not in stdout + stderr and "\\x1b[31m" in stdout
        assert not any(line.startswith("written: /etc/passwd") for line in stdout.splitlines())

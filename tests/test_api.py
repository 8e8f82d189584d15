"""The Python API an export script uses."""
from __future__ import annotations

import subprocess
import sys

import onnx
import pytest

import fc2conv_onnx


def test_convert_accepts_a_model_and_leaves_it_unchanged(fixture_path):
    original = onnx.load(str(fixture_path("two_heads")))
    before = original.SerializeToString()
    converted = fc2conv_onnx.convert(original)
    assert original.SerializeToString() == before
    assert converted is not original and {n.op_type for n in converted.graph.node} >= {"Conv", "Softmax"}


def test_convert_accepts_a_path(fixture_path):
    conversion = fc2conv_onnx.convert_with_report(fixture_path("trunk_1d"))
    assert conversion.report.source.endswith("trunk_1d.onnx")
    assert "Conv 16 kernel [6, 8, 16]" in conversion.report.to_text()


def test_convert_file_returns_the_report(fixture_path, tmp_path):
    report = fc2conv_onnx.convert_file(fixture_path("trunk_3d"), tmp_path / "out.onnx")
    assert report.output == str(tmp_path / "out.onnx") and report.validated
    assert onnx.load(str(tmp_path / "out.onnx")).graph.input[0].type.tensor_type.shape.dim[2].dim_param == "D"


def test_nothing_to_convert_carries_the_report(fixture_path):
    with pytest.raises(fc2conv_onnx.NothingToConvertError) as caught:
        fc2conv_onnx.convert(fixture_path("mlp_on_vector"))
    assert caught.value.exit_code == 4
    assert caught.value.report.plan.skipped[0].reason.startswith("input 'vector' is not a flattened")


def test_importing_the_package_does_not_import_onnxruntime():
    code = "import sys, fc2conv_onnx; sys.exit('onnxruntime' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_a_model_is_taken_in_every_form_an_export_script_holds(fixture_path, tmp_path):
    """A path, a ModelProto, bytes, a binary file object, torch's ONNXProgram (anything of torch.onnx with a
    model_proto; torch is not needed) and an onnx_ir model all convert to the same model; anything else is
    an InputError that names what can be given."""
    import io as stdio

    path = fixture_path("dress_detector")
    proto = onnx.load(str(path))
    expected = fc2conv_onnx.convert(str(path)).SerializeToString()

    class ONNXProgram:  # what torch.onnx.export(..., dynamo=True) returns, as far as the tool looks at it
        __module__ = "torch.onnx._internal.exporter._onnx_program"
        model_proto = proto

    with open(path, "rb") as stream:
        sources = [proto, path.read_bytes(), bytearray(path.read_bytes()), stream, stdio.BytesIO(path.read_bytes()),
                   ONNXProgram()]
        for source in sources:
            assert fc2conv_onnx.convert(source).SerializeToString() == expected, type(source)
    onnx_ir = pytest.importorskip("onnx_ir")
    assert fc2conv_onnx.inspect(onnx_ir.serde.deserialize_model(proto)).plan.heads
    for wrong in (42, stdio.StringIO("text"), b"", b"\x0f" * 100):
        with pytest.raises(fc2conv_onnx.InputError) as raised:
            fc2conv_onnx.convert(wrong)
        assert "\n" not in str(raised.value)
    with pytest.raises(fc2conv_onnx.InputError, match="ONNXProgram"):
        fc2conv_onnx.inspect(3.5)


def test_every_public_name_resolves():
    """The package's names load where `__init__` says they live (a module that moves must take its entry along)."""
    for name in fc2conv_onnx.__all__:
        assert getattr(fc2conv_onnx, name) is not None, name

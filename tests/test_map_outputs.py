"""A model that is fully convolutional already (MTCNN's P-Net, any FCN classifier of crops): `convert` writes it as
it is with its geometry recorded, proven on the image itself - each cell of a larger input equals the original
run on that cell's window alone - so detect can place its cells; and refuses what would change it."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from test_cli import cli

import fc2conv_onnx
from fc2conv_onnx import NothingToConvertError

from builders import ModelBuilder


def fcn(layout: str = "nchw", size=(12, 12), pad: int = 0, batch="N") -> onnx.ModelProto:
    """A P-Net-like classifier of 12x12 crops: Conv 3x3 + Relu, MaxPool 2, Conv 3x3 + Relu, Conv 3x3 + Relu, then
    a 1x1 Conv to 2 classes with a Softmax and a 1x1 Conv to 4 box offsets (no linear layer). NHWC as tf2onnx
    writes Keras: Transposes in and out, the Softmax on the last axis."""
    b = ModelBuilder(opset=13, seed=4)
    last = layout == "nhwc"
    image = b.input("image", [batch, *size, 3] if last else [batch, 3, *size])
    x = b.node("Transpose", [image], perm=[0, 3, 1, 2]) if last else image
    x = b.node("Relu", [b.conv(x, 3, 6, 2, pad=pad)])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Relu", [b.conv(x, 6, 8, 2, pad=pad)])
    x = b.node("Relu", [b.conv(x, 8, 8, 2, pad=pad)])
    scores, boxes = b.conv(x, 8, 2, 2, kernel=1, pad=0), b.conv(x, 8, 4, 2, kernel=1, pad=0)
    if last:
        scores = b.node("Transpose", [scores], perm=[0, 2, 3, 1])
        boxes = b.node("Transpose", [boxes], perm=[0, 2, 3, 1], output=b.output("box"))
        b.node("Softmax", [scores], b.output("prob"), axis=-1)
    else:
        b.node("Softmax", [scores], b.output("prob"), axis=1)
        b.node("Identity", [boxes], b.output("box"))
    return b.build(f"fcn_{layout}")


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_written_as_it_is_with_its_geometry_and_every_cell_is_its_crop(layout, tmp_path):
    """Converted, each cell of a 40x52 input equals the original on that cell's 12x12 window - computed here by
    hand with onnxruntime, every cell; the geometry says stride 2, window 12."""
    source = tmp_path / "fcn.onnx"
    onnx.save(fcn(layout), source)
    report = fc2conv_onnx.convert_file(source, tmp_path / "out.onnx")
    geometry = fc2conv_onnx.read_geometry(tmp_path / "out.onnx")["prob"]
    assert (geometry.stride, geometry.window, geometry.offset) == ((2, 2), (12, 12), (0, 0))
    assert {c.check for c in report.checks} == {"training size", "geometry", "windows"}
    last = layout == "nhwc"
    pixels = np.random.default_rng(3).random((1, 40, 52, 3) if last else (1, 3, 40, 52), dtype=np.float32)
    converted = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    maps = dict(zip(["prob", "box"], converted.run(["prob", "box"], {"image": pixels})))
    grid = maps["prob"].shape[1:3] if last else maps["prob"].shape[2:]
    assert tuple(grid) == ((40 - 12) // 2 + 1, (52 - 12) // 2 + 1)
    for i in range(grid[0]):
        for j in range(grid[1]):
            crop = pixels[:, 2 * i:2 * i + 12, 2 * j:2 * j + 12] if last else pixels[:, :, 2 * i:2 * i + 12,
                                                                                      2 * j:2 * j + 12]
            for name, value in zip(["prob", "box"], original.run(["prob", "box"], {"image": crop})):
                cell = maps[name][0, i, j] if last else maps[name][0, :, i, j]
                np.testing.assert_allclose(cell, value.ravel(), atol=1e-5)


def test_detect_runs_the_map_and_a_cascade_stage_on_it(tmp_path):
    """The FCN converted is a first stage for detect (its regression too), and the same FCN at its crop size is a
    cascade stage; the boxes are the cells' windows moved by the offsets, by hand."""
    source = tmp_path / "fcn.onnx"
    onnx.save(fcn(), source)
    fc2conv_onnx.convert_file(source, tmp_path / "out.onnx")
    picture = (np.random.default_rng(8).random((30, 34, 3)) * 255).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "p.png")
    found = fc2conv_onnx.detect(tmp_path / "out.onnx", [tmp_path / "p.png"], classes=(1,), threshold=0.0, iou=1.0,
                                regression="box").records
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    pixels = (picture.astype(np.float32) / np.float32(255)).transpose(2, 0, 1)[None]
    assert len(found) == 10 * 12
    for record in found:
        i, j = record.cell
        prob, box = session.run(["prob", "box"], {"image": pixels[:, :, 2 * i:2 * i + 12, 2 * j:2 * j + 12]})
        assert record.score == pytest.approx(float(prob.ravel()[1]), abs=1e-5)
        window = np.array([2 * j, 2 * i, 2 * j + 12, 2 * i + 12], np.float32)
        expected = np.clip(window + box.ravel() * 12, 0, [34, 30, 34, 30])
        np.testing.assert_allclose(record.box, expected, atol=1e-3)
    stage = fc2conv_onnx.Stage(source, fc2conv_onnx.DetectionSettings(output_name="prob", classes=(1,),
                                                                        threshold=0.5, iou=1.0))
    staged = fc2conv_onnx.detect(tmp_path / "out.onnx", [tmp_path / "p.png"], classes=(1,), threshold=0.0, iou=1.0,
                                 cascade=[stage]).records
    assert sorted(r.score for r in staged) == pytest.approx(sorted(r.score for r in found if r.score > 0.5), abs=1e-5)


def test_a_padded_fcn_has_its_grid_proven_and_says_its_cells_are_not_crops(tmp_path):
    source = tmp_path / "fcn.onnx"
    onnx.save(fcn(pad=1, size=(16, 16)), source)
    with pytest.raises(NothingToConvertError, match="output 'prob' is 8x8 at the input size 16x16: give "
                                                    "--input-size as the crop its cells classify"):
        fc2conv_onnx.convert(str(source))
    onnx.save(fcn(pad=1, size=(2, 2)), source)
    report = fc2conv_onnx.convert_file(source, tmp_path / "out.onnx")
    assert {c.check for c in report.checks} == {"training size", "geometry"}
    assert "the trunk pads" in report.to_text()


def test_the_command_line_converts_an_fcn_and_refuses_what_would_change_it(tmp_path):
    source = tmp_path / "fcn.onnx"
    onnx.save(fcn(batch="N", size=("H", "W")), source)
    code, out, stderr = cli("convert", source, "-o", tmp_path / "out.onnx", "--input-size", "12")
    assert code == 0, stderr
    assert "fully convolutional already" in out and "stride 2x2, window 12x12" in out
    code, _, stderr = cli("convert", source, "-o", tmp_path / "x.onnx")
    assert code == 3 and "--input-size" in stderr
    code, _, stderr = cli("convert", source, "-o", tmp_path / "x.onnx", "--input-size", "20")
    assert code == 4 and "nor is it fully convolutional already: output 'prob' is 5x5 at the input size 20x20" \
        in stderr, stderr
    for flags in (["--stride", "1"], ["--output-layout", "channels_last"], ["--pooling", "window"]):
        code, _, stderr = cli("convert", source, "-o", tmp_path / "x.onnx", "--input-size", "12", *flags)
        assert code == 4 and f"{flags[0]} {flags[1]} cannot apply: the model is fully convolutional already" \
            in stderr, stderr
    assert not (tmp_path / "x.onnx").exists()
    code, out, _ = cli("inspect", source, "--input-size", "12")
    assert code == 0 and "map -> prob, box" in out

"""The heatmap command: a PNG of the class map over the image, the hottest region where the pattern is."""
from __future__ import annotations

import subprocess
import sys
from io import BytesIO

import numpy as np
import pytest
from PIL import Image
from test_cli import ENV, cli

import fc2conv_onnx
from fc2conv_onnx.apps import drawing
from fc2conv_onnx.apps.preprocessing import Preprocessing, model_input
from fc2conv_onnx.cli import main
from fc2conv_onnx.model.layout import CHANNELS_LAST

from conftest import FIXTURES


def spot_scene(path, height=96, width=128, centre=(60, 84), radius=4):
    rows, columns = np.mgrid[:height, :width]
    gray = 30 + 200 * np.exp(-((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2) / (2 * radius ** 2))
    Image.fromarray(np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)).save(path)
    return path


@pytest.fixture(scope="module")
def spot_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "spot_fcn.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "bright_spot_detector.onnx", out, stride=2)
    return out


def hottest_centroid(picture: np.ndarray) -> np.ndarray:
    """Where the map's top colour is, in the picture (drawn fully opaque)."""
    distance = np.abs(picture[..., :3].astype(int) - drawing.colour(np.array([1.0]))[0].astype(int)).sum(axis=-1)
    rows, columns = np.nonzero(distance <= distance.min() + 12)
    return np.array([rows.mean(), columns.mean()])


@pytest.mark.parametrize("centre", [(60, 84), (30, 40)])
def test_the_hottest_region_lands_on_the_planted_spot(spot_model, tmp_path, centre):
    image = spot_scene(tmp_path / "scene.png", centre=centre)
    out = tmp_path / "heat.png"
    drawn = fc2conv_onnx.heatmap(spot_model, image, out, alpha=1.0)
    picture = np.asarray(Image.open(out))
    factor = drawn.enlargement
    assert factor == 4 and picture.shape[0] == 96 * factor and picture.shape[1] > 128 * factor  # 512 wide at least
    hottest = hottest_centroid(picture[:, :128 * factor]) / factor
    assert np.abs(hottest - np.array(centre)).max() <= 3, hottest
    assert drawn.grid == ((96 - 32) // 2 + 1, (128 - 32) // 2 + 1) and drawn.geometry.stride == (2, 2)


def test_panels_for_the_top_classes_and_the_command_line(tmp_path):
    converted = tmp_path / "two.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "two_heads.onnx", converted)
    picture = Image.fromarray((np.random.default_rng(1).random((40, 36, 3)) * 255).astype(np.uint8))
    picture.save(tmp_path / "noise.png")
    out = tmp_path / "top.png"
    code, stdout, stderr = cli("heatmap", converted, tmp_path / "noise.png", "-o", out, "--top", "3",
                               "--mean", "0.5", "--std", "0.25", "--range=-100,100")
    assert code == 0, stderr
    factor = 13  # 40 pixels high: drawn 13 times larger, 520 pixels
    width, height = Image.open(out).size
    assert height == 40 * factor and width > 3 * 36 * factor
    # The summary gives the data's range, and says the colour bar's when --range set it.
    assert "(colour bar -100 .. 100)" in stdout and "values -100 .. 100 " not in stdout
    assert "written:" in stdout


def test_the_default_output_is_the_one_with_class_scores_and_preprocessing_takes_scalars(tmp_path):
    """two_heads has logits, probabilities (a Softmax) and a box: the picture shows the probabilities; the
    API takes mean and std as one number, as the command line does."""
    converted = tmp_path / "two.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "two_heads.onnx", converted)
    Image.fromarray((np.random.default_rng(2).random((40, 36, 3)) * 255).astype(np.uint8)).save(tmp_path / "n.png")
    drawn = fc2conv_onnx.heatmap(converted, tmp_path / "n.png", tmp_path / "o.png",
                                 preprocessing=Preprocessing(mean=127.5 / 255, std=0.5))
    assert drawn.model_output == "probabilities"
    assert 0.0 <= drawn.data_range[0] <= drawn.data_range[1] <= 1.0 and drawn.value_range == drawn.data_range
    with pytest.raises(fc2conv_onnx.InputError, match="mean must be a number"):
        Preprocessing(mean="grey")


@pytest.mark.parametrize("prep", [Preprocessing(), Preprocessing(scale=1.0, mean=127.5, std=128.0),
                                  Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
                                  Preprocessing(mean=(1.0, 2.0, 3.0), std=0.5, channels="bgr"),
                                  Preprocessing(mean=0.5, std=0.25, channels="gray")],
                         ids=["default", "scalars", "imagenet", "bgr", "gray"])
@pytest.mark.parametrize("layout", ["NCHW", CHANNELS_LAST])
def test_model_input_is_the_preprocessing_formula_pixel_by_pixel(prep, layout):
    """The input is made by looking pixels up in a table of the 256 values per channel: it must equal
    (value / scale - mean) / std computed on the picture in float32, in channel order and layout."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    channels = 1 if prep.channels == "gray" else 3
    pixels = np.asarray(image.convert("L"))[..., None] if channels == 1 else rgb
    pixels = pixels[..., ::-1] if prep.channels == "bgr" else pixels
    expected = (pixels.astype(np.float32) / np.float32(prep.scale) - np.asarray(prep.mean, np.float32)) / \
        np.asarray(prep.std, np.float32)
    expected = expected[None] if layout == CHANNELS_LAST else expected.transpose(2, 0, 1)[None]
    made = model_input(image, channels, layout, prep)
    assert made.dtype == np.float32 and made.flags.c_contiguous and made.shape == expected.shape
    np.testing.assert_array_equal(made, expected)
    with pytest.raises(fc2conv_onnx.InputError, match="--mean has 2 values; give 1 or 3"):
        model_input(image, 3, layout, Preprocessing(mean=(1.0, 2.0)))


def test_the_colour_bar_labels_fit(spot_model, tmp_path):
    """Labels like 4.69e-05 are measured and the bar made wide enough for them."""
    from PIL import ImageDraw
    image = spot_scene(tmp_path / "scene.png", centre=(40, 40))
    out = tmp_path / "small.png"
    fc2conv_onnx.heatmap(spot_model, image, out, value_range=(-4.6912e-05, 1.2345e-05))
    width = Image.open(out).size[0]
    label = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength("-4.69e-05")
    panel = 128 * 4
    assert width - panel >= 3 * drawing.BAR_MARGIN + drawing.BAR_STRIPE + label


@pytest.mark.parametrize("args, words", [
    (["--class", "7"], "classes 0 to 0"),
    (["--range", "1,0"], "LOW < HIGH"),
    (["--mean", "0.1,0.2"], "--mean has 2 values"),
    (["--channels", "gray"], "gives 1 channel"),
])
def test_bad_heatmap_requests_get_one_line(spot_model, tmp_path, args, words):
    image = spot_scene(tmp_path / "scene.png")
    out = tmp_path / "heat.png"
    code, _, stderr = cli("heatmap", spot_model, image, "-o", out, *args)
    assert code == 3 and words in stderr and stderr.count("\n") == 1, stderr
    assert not out.exists()


def test_unconverted_models_and_small_or_broken_images_are_refused(spot_model, tmp_path):
    image = spot_scene(tmp_path / "scene.png")
    with pytest.raises(fc2conv_onnx.InputError, match="convert it first"):
        fc2conv_onnx.heatmap(FIXTURES / "bright_spot_detector.onnx", image, tmp_path / "o.png")
    small = spot_scene(tmp_path / "small.png", height=20, width=20, centre=(10, 10))
    with pytest.raises(fc2conv_onnx.InputError, match="smaller than the model's 32x32 window"):
        fc2conv_onnx.heatmap(spot_model, small, tmp_path / "o.png")
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    with pytest.raises(fc2conv_onnx.InputError, match="not a readable picture"):
        fc2conv_onnx.heatmap(spot_model, tmp_path / "broken.png", tmp_path / "o.png")
    assert not (tmp_path / "o.png").exists()


def test_the_readme_picture_is_what_the_commands_make(tmp_path):
    """docs/heatmap.png comes from the two commands in docs/heatmap.md (compared away from the text labels, whose
    font, and so the colour bar's width, differs between Pillow versions)."""
    model = tmp_path / "spot_fcn.onnx"
    assert cli("convert", FIXTURES / "bright_spot_detector.onnx", "-o", model, "--stride", "2")[0] == 0
    out = tmp_path / "heatmap.png"
    assert cli("heatmap", model, FIXTURES / "spots.png", "-o", out)[0] == 0
    made, shipped = np.asarray(Image.open(out)), np.asarray(Image.open(FIXTURES.parent / "docs" / "heatmap.png"))
    assert made.shape[0] == shipped.shape[0]
    scene = Image.open(FIXTURES / "spots.png")
    width = scene.size[0] * drawing.enlargement(scene)  # drawn 3 times larger: 240 -> 720
    np.testing.assert_array_equal(made[16:, :width], shipped[16:, :width])  # the panel below its label
    np.testing.assert_array_equal(made[:, width:width + 20], shipped[:, width:width + 20])  # the colour bar


def test_resize_makes_objects_window_sized_before_the_model_sees_them(spot_model, tmp_path):
    """A spot twice the size the model looks for, in a picture twice as large: --resize 0.5 (or 96x128)
    puts the hottest region on it, in the resized picture's pixels."""
    image = spot_scene(tmp_path / "big.png", height=192, width=256, centre=(120, 168), radius=8)
    for resize, args in ((0.5, ["--resize", "0.5"]), ((96, 128), ["--resize", "96x128"])):
        out = tmp_path / "resized.png"
        drawn = fc2conv_onnx.heatmap(spot_model, image, out, alpha=1.0, resize=resize)
        picture = np.asarray(Image.open(out))
        factor = drawn.enlargement
        assert picture.shape[0] == 96 * factor
        hottest = hottest_centroid(picture[:, :128 * factor]) / factor
        assert np.abs(hottest - np.array((60, 84))).max() <= 3, hottest
        assert cli("heatmap", spot_model, image, "-o", out, *args)[0] == 0
    assert cli("heatmap", spot_model, image, "-o", out, "--resize", "0")[0] == 2


def test_an_output_without_geometry_says_why(tmp_path):
    converted = tmp_path / "same.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "exported" / "timm_same_padding_ts.onnx", converted)
    Image.new("RGB", (64, 64)).save(tmp_path / "i.png")
    with pytest.raises(fc2conv_onnx.InputError, match="geometry is unknown: "):
        fc2conv_onnx.heatmap(converted, tmp_path / "i.png", tmp_path / "o.png")


def test_scales_find_a_spot_twice_the_window_size_where_it_is(spot_model, tmp_path):
    """A spot twice the size the model looks for: at scale 0.5 it is window-sized, and the map (drawn over
    the whole-size picture) is hottest on it; --scales 1,0.5 draws one map of both runs."""
    image = spot_scene(tmp_path / "big.png", height=96, width=256, centre=(50, 170), radius=8)
    out = tmp_path / "scales.png"
    drawn = fc2conv_onnx.heatmap(spot_model, image, out, alpha=1.0, scales=(0.5,))
    picture = np.asarray(Image.open(out))
    factor = drawn.enlargement
    hottest = hottest_centroid(picture[:, :256 * factor]) / factor
    assert np.abs(hottest - np.array((50, 170))).max() <= 4, hottest
    both = fc2conv_onnx.heatmap(spot_model, image, out, scales=(1.0, 0.5))
    assert both.scales == (1.0, 0.5) and both.data_range[1] >= drawn.data_range[1]
    code, stdout, _ = cli("heatmap", spot_model, image, "-o", out, "--scales", "1,0.5")
    assert code == 0 and "at scales 1, 0.5" in stdout
    assert cli("heatmap", spot_model, image, "-o", out, "--scales", "1,0")[0] == 2
    code, _, stderr = cli("heatmap", spot_model, image, "-o", out, "--scales", "0.25")
    assert code == 3 and "at scale 0.25 is smaller than the model's" in stderr


def test_heatmap_writes_its_png_to_standard_output_and_refuses_a_terminal(spot_model, tmp_path, monkeypatch, capsys):
    """-o - : the same PNG bytes as -o FILE on stdout, the summary on stderr, no file named '-'; when stdout
    is a terminal, a usage error rather than binary on the screen."""
    scene = spot_scene(tmp_path / "scene.png")
    assert cli("heatmap", spot_model, scene, "-o", tmp_path / "file.png")[0] == 0
    done = subprocess.run([sys.executable, "-m", "fc2conv_onnx", "heatmap", str(spot_model), str(scene), "-o", "-"],
                          capture_output=True, env=ENV, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and done.stdout == (tmp_path / "file.png").read_bytes()
    assert b"written: standard output" in done.stderr and not (tmp_path / "-").exists()
    assert Image.open(BytesIO(done.stdout)).size == Image.open(tmp_path / "file.png").size
    buffer = BytesIO()  # the API takes a binary file object too
    assert fc2conv_onnx.heatmap(spot_model, scene, buffer).output == "a file object"
    assert buffer.getvalue() == done.stdout
    with pytest.raises(fc2conv_onnx.InputError, match="file name or a binary file object, not int"):
        fc2conv_onnx.heatmap(spot_model, scene, 3)  # type: ignore[arg-type]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["heatmap", str(spot_model), str(scene), "-o", "-"]) == 2
    assert "standard output, which is a terminal" in capsys.readouterr().err

"""Preprocessing flags that cannot be confused: the pixel divisor is --pixel-scale (--scale, one letter from the
pyramid's --scales, stays as its older spelling and says so), and numbers that turn every pixel into nearly
one value (a mean in pixel units after the default division by 255) are warned about with what to try."""
from __future__ import annotations

import pytest
from test_cli import cli

import fc2conv_onnx
from fc2conv_onnx.apps.preprocessing import Preprocessing

from conftest import FIXTURES


@pytest.mark.parametrize("flags, warned", [
    (["--mean", "127.5", "--std", "128"], "give --pixel-scale 1"),
    (["--pixel-scale", "1", "--mean", "127.5", "--std", "128"], ""),
    (["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"], ""),
    ([], ""),
    (["--scale", "1", "--mean", "127.5", "--std", "128"], "now spelled --pixel-scale"),
])
def test_detect_warns_about_numbers_that_flatten_the_picture(spot_finder, tmp_path, flags, warned):
    code, _, stderr = cli("detect", spot_finder, FIXTURES / "disks.png", "-o", tmp_path / "d.json", *flags)
    assert code == 0
    assert (warned in stderr) if warned else stderr == "", stderr


def test_the_older_and_newer_spelling_together_are_a_usage_error(spot_finder, tmp_path):
    code, _, stderr = cli("heatmap", spot_finder, FIXTURES / "disks.png", "-o", tmp_path / "h.png",
                                  "--scale", "1", "--pixel-scale", "1")
    assert code == 2 and "give one of them" in stderr
    assert not (tmp_path / "h.png").exists()


def test_the_older_spelling_still_divides_the_pixels(spot_finder, tmp_path):
    assert cli("detect", spot_finder, FIXTURES / "disks.png", "-o", tmp_path / "a.json",
                          "--scale", "255")[0] == 0
    assert cli("detect", spot_finder, FIXTURES / "disks.png", "-o", tmp_path / "b.json")[0] == 0
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


def test_unusual_says_nothing_for_usual_numbers():
    assert Preprocessing().unusual() == ""
    assert Preprocessing(pixel_scale=1.0, mean=127.5, std=128.0).unusual() == ""
    assert Preprocessing(pixel_scale=1.0, mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4)).unusual() == ""
    assert "nearly one value" in Preprocessing(mean=127.5, std=128.0).unusual()


def test_raw_pixels_are_called_unusual_and_the_command_warns(spot_finder, tmp_path):
    """--pixel-scale 1 alone feeds 0..255: most networks take 0..1 or standardised values (MTCNN then finds 899
    "faces"); the warning says so, and what to give."""
    assert "values up to the hundreds" in Preprocessing(pixel_scale=1.0).unusual()
    code, _, stderr = cli("detect", spot_finder, FIXTURES / "disks.png", "-o", tmp_path / "a.json", "--pixel-scale",
                          "1")
    assert code == 0 and "turn pixels 0..255 into 0..255: values up to the hundreds" in stderr
    assert "give --pixel-scale 255, or --mean and --std" in stderr


def test_the_fields_are_named_like_the_flags_and_the_older_name_still_works():
    assert Preprocessing(pixel_scale=1.0) == Preprocessing(scale=1.0)
    assert Preprocessing(scale=2.0).pixel_scale == 2.0 and Preprocessing(pixel_scale=2.0).scale == 2.0
    with pytest.raises(fc2conv_onnx.InputError, match="older name of pixel_scale"):
        Preprocessing(pixel_scale=2.0, scale=3.0)


def test_help_and_reports_say_what_the_command_does(tmp_path, capsys):
    from fc2conv_onnx import cli as command_line

    with pytest.raises(SystemExit):
        command_line.main(["detect", "--help"])
    assert "--json" not in capsys.readouterr().out  # detect has no --json
    converted = tmp_path / "dress.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "dress_detector.onnx", converted)
    assert command_line.main(["validate", str(FIXTURES / "dress_detector.onnx"), str(converted)]) == 0
    out = capsys.readouterr().out
    assert "1 head(s) checked against the converted model" in out and "to convert" not in out
    # a --pooling mode the head cannot have: the refusal, not the plan of another mode
    assert command_line.main(["inspect", str(FIXTURES / "dress_detector.onnx"), "--pooling", "none"]) == 4
    printed = capsys.readouterr()
    assert printed.out == "" and "--pooling none cannot apply" in printed.err

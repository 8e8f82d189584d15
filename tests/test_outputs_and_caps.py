"""What is read is checked and no command destroys an input (issue 22): a forged converted marker is bad input
(exit 3) for detect and heatmap; no detect or heatmap output may be one of its inputs or another of its outputs;
numbers from flags are finite and capped."""
from __future__ import annotations

import json
import os

import onnx
import pytest
from test_cli import cli

import fc2conv_onnx
from fc2conv_onnx import InputError
from fc2conv_onnx.model import runtime
from fc2conv_onnx.model.marker import CONVERTED_KEY

from conftest import FIXTURES

DISKS = FIXTURES / "disks.png"


def forged(path, tmp_path, change) -> str:
    """A copy of the converted model whose marker's first head's geometry is changed by `change`."""
    model = onnx.load(str(path))
    prop = next(p for p in model.metadata_props if p.key == CONVERTED_KEY)
    marker = json.loads(prop.value)
    change(marker, marker["heads"][0]["geometry"])
    prop.value = marker if isinstance(marker, str) else json.dumps(marker)
    out = tmp_path / "forged.onnx"
    out.write_bytes(model.SerializeToString())
    return str(out)


def _set(field, value):
    def change(marker, geometry):
        geometry[field] = value
    return change


def _layer(field, value):
    def change(marker, geometry):
        geometry["layers"][0][field] = value
    return change


def _head(field, value):
    def change(marker, geometry):
        marker["heads"][0][field] = value
    return change


FORGERIES = {
    "stride NaN": _set("stride", [float("nan"), 4]), "stride inf": _set("stride", [float("inf"), 4]),
    "stride 0": _set("stride", [0, 4]), "stride negative": _set("stride", [-4, 4]),
    "stride 1e30": _set("stride", [1e30, 4]), "stride a dict": _set("stride", {"a": 1}),
    "stride an int": _set("stride", 4), "stride a string": _set("stride", "4x4"),
    "window 0": _set("window", [0, 16]), "window negative": _set("window", [-16, 16]),
    "offset NaN": _set("offset", [float("nan"), 0]), "input an int": _set("input", 3),
    "size_step 0": _set("size_step", [0, 1]), "a layer stride 0": _layer("stride", [0, 1]),
    "one value too few": _set("window", [16]), "geometry a list": _head("geometry", [1, 2]),
    "geometry null": _head("geometry", None), "geometry a string": _head("geometry", "stride"),
    "layouts not an object": _head("output_layouts", [1]),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_forged_marker_is_refused_as_bad_input_by_detect(spot_finder, tmp_path, name):
    model = forged(spot_finder, tmp_path, FORGERIES[name])
    with pytest.raises(InputError, match="metadata is damaged"):
        fc2conv_onnx.detect(model, [DISKS])


def test_deeply_nested_marker_json_is_bad_input_not_a_crash(spot_finder, tmp_path):
    model = onnx.load(str(spot_finder))
    prop = next(p for p in model.metadata_props if p.key == CONVERTED_KEY)
    prop.value = "[" * 100000 + "]" * 100000
    path = tmp_path / "nested.onnx"
    path.write_bytes(model.SerializeToString())
    code, stdout, stderr = cli("heatmap", path, DISKS, "-o", tmp_path / "map.png")
    assert code == 3 and "metadata is damaged" in stderr and "Traceback" not in stderr, stderr
    assert not (tmp_path / "map.png").exists()


def test_the_cli_says_exit_3_for_a_forged_stride(spot_finder, tmp_path):
    model = forged(spot_finder, tmp_path, FORGERIES["stride NaN"])
    code, _, stderr = cli("detect", model, DISKS, "-o", tmp_path / "found.json")
    assert code == 3 and stderr.count("\n") == 1 and "'stride'" in stderr, stderr
    assert not (tmp_path / "found.json").exists()


def _same_bytes_after(paths, run):
    before = {str(p): open(p, "rb").read() for p in paths}
    result = run()
    assert {str(p): open(p, "rb").read() for p in paths} == before
    return result


@pytest.mark.parametrize("case", ["detect -o picture", "detect -o model", "heatmap -o picture", "heatmap -o model",
                                  "detect --draw picture", "detect --draw folder of the pictures",
                                  "detect -o and --draw the same", "detect -o through a link to the picture"])
def test_no_output_is_an_input_or_another_output(spot_finder, tmp_path, case):
    import shutil

    model, picture = tmp_path / "m.onnx", tmp_path / "p.png"
    shutil.copy(spot_finder, model)
    shutil.copy(DISKS, picture)
    other = tmp_path / "q.png"
    shutil.copy(DISKS, other)
    link = tmp_path / "link.json"
    os.symlink(picture, link)
    args = {
        "detect -o picture": ("detect", model, picture, "-o", picture),
        "detect -o model": ("detect", model, picture, "-o", model),
        "heatmap -o picture": ("heatmap", model, picture, "-o", picture),
        "heatmap -o model": ("heatmap", model, picture, "-o", model),
        "detect --draw picture": ("detect", model, picture, "-o", tmp_path / "x.json", "--draw", picture),
        "detect --draw folder of the pictures": ("detect", model, picture, other, "-o", tmp_path / "x.json",
                                                 "--draw", tmp_path),
        "detect -o and --draw the same": ("detect", model, picture, "-o", tmp_path / "x.png", "--draw",
                                          tmp_path / "x.png"),
        "detect -o through a link to the picture": ("detect", model, picture, "-o", link),
    }[case]
    code, _, stderr = _same_bytes_after([model, picture, other], lambda: cli(*args))
    why = {"detect -o and --draw the same": "give each output its own name",
           "detect -o through a link to the picture": "is a symbolic link"}.get(case, "never writes over what it reads")
    assert code == 3 and why in stderr and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.png").exists()


def test_the_draw_folder_is_not_made_when_the_run_is_refused(spot_finder, tmp_path):
    folder = tmp_path / "drawings"
    code, _, _ = cli("detect", tmp_path / "missing.onnx", DISKS, DISKS.parent / "spots.png", "-o",
                     tmp_path / "x.json", "--draw", folder)
    assert code == 3 and not folder.exists()


SPOTS = FIXTURES / "spots.png"


@pytest.mark.parametrize("flags, code, words", [
    (["--scales", "nan"], 2, "finite"), (["--scales", "inf"], 2, "finite"), (["--mean", "nan"], 2, "finite"),
    (["--std", "nan"], 2, "finite"), (["--scale", "inf"], 2, "finite"), (["--scale-step", "nan"], 2, "finite"),
    (["--threshold", "nan"], 2, "finite"), (["--draw", ""], 2, "empty name"),
    (["--scales", ",".join(["1"] * 101)], 2, "at most 100"),
    (["--scales", "1e9"], 3, "more than the 67108864"), (["--scales", "1e300"], 3, "more than the 67108864"),
    (["--min-size", "1e-300"], 3, "more than the 100 this tool runs"),
    (["--scale-step", "1.0000001", "--min-size", "32", "--max-size", "256"], 3, "more than the 100 this tool runs"),
])
def test_detect_numbers_are_finite_and_capped(spot_finder, tmp_path, flags, code, words):
    got, _, stderr = cli("detect", spot_finder, SPOTS, "-o", tmp_path / "x.json", *flags)
    assert got == code and words in stderr, stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("flags, code, words", [
    (["--resize", "inf"], 2, "at most 65536"), (["--resize", "100000x100000"], 2, "at most 65536"),
    (["--resize", "20000x20000"], 3, "more than the 67108864"), (["--scales", "100"], 3, "more than the 67108864"),
    (["--top", "0"], 2, "positive whole number"), (["--top", "-5"], 2, "positive whole number"),
    (["--range=nan,1"], 2, "finite"), (["--alpha", "nan"], 2, "finite"),
])
def test_heatmap_numbers_are_finite_and_capped(spot_finder, tmp_path, flags, code, words):
    got, _, stderr = cli("heatmap", spot_finder, SPOTS, "-o", tmp_path / "x.png", *flags)
    assert got == code and words in stderr, stderr
    assert not (tmp_path / "x.png").exists()


def test_an_input_size_is_capped_like_a_declared_one(tmp_path):
    exported = FIXTURES / "exported" / "torch_dynamic_hw.onnx"
    code, _, stderr = cli("convert", exported, "-o", tmp_path / "x.onnx", "--input-size", "10000")
    assert code == 3 and "at most 1 GiB" in stderr, stderr
    code, _, stderr = cli("convert", exported, "-o", tmp_path / "x.onnx", "--input-size",
                                  "99999999999999999999")
    assert code == 2 and "at most 3 axes of at most 65536" in stderr, stderr  # a flag's value: exit 2
    assert not (tmp_path / "x.onnx").exists()


def test_the_api_refuses_a_scale_that_is_not_a_positive_number(spot_finder):
    for scale in (float("nan"), float("inf"), -1.0, 1e9):
        with pytest.raises(InputError):
            fc2conv_onnx.detect(spot_finder, [SPOTS], scales=[scale])


def _run_with_stdout(args, stdout):
    import subprocess
    import sys

    from test_cli import ENV
    return subprocess.run([sys.executable, "-m", "fc2conv_onnx", *map(str, args)], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=ENV, timeout=120)


@pytest.mark.parametrize("command", ["convert", "detect", "heatmap"])
def test_standard_output_full_is_exit_6_and_never_written(spot_finder, command):
    args = {"convert": ("convert", FIXTURES / "dress_detector.onnx", "-o", "-"),
            "detect": ("detect", spot_finder, SPOTS, "-o", "-", "--threshold", "0"),
            "heatmap": ("heatmap", spot_finder, SPOTS, "-o", "-")}[command]
    with open("/dev/full", "wb") as full:
        done = _run_with_stdout(args, full)
    assert done.returncode == 6 and "ran out of space" in done.stderr and "written: standard output" not in \
        done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("error") == 1, done.stderr


@pytest.mark.parametrize("command", ["convert", "detect", "heatmap"])
def test_a_reader_that_went_away_is_exit_7(spot_finder, command):
    """The read end of the pipe is closed before the command writes (as `| head -c 10` does to a large output)."""
    import subprocess
    import sys

    from test_cli import ENV
    args = {"convert": ("convert", FIXTURES / "dress_detector.onnx", "-o", "-"),
            "detect": ("detect", spot_finder, SPOTS, "-o", "-", "--threshold", "0"),
            "heatmap": ("heatmap", spot_finder, SPOTS, "-o", "-")}[command]
    process = subprocess.Popen([sys.executable, "-m", "fc2conv_onnx", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 7 and "was closed before" in stderr and "Traceback" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr


def test_closed_standard_output_is_exit_7_before_any_work(spot_finder):
    import subprocess
    import sys

    from test_cli import ENV
    done = subprocess.run(f"'{sys.executable}' -m fc2conv_onnx heatmap '{spot_finder}' '{SPOTS}' -o - >&-", shell=True,
                          stderr=subprocess.PIPE, text=True, env=ENV, timeout=120)
    assert done.returncode == 7 and "standard output is closed" in done.stderr, done.stderr


def test_a_picture_is_read_as_it_is_shown_its_exif_orientation_applied(spot_finder, tmp_path):
    """A phone stores a portrait photo sideways with an EXIF orientation; detect's boxes are in the picture as
    every viewer shows it: the same boxes as for the upright picture."""
    from PIL import Image

    upright = Image.open(DISKS).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    sideways = tmp_path / "sideways.png"
    upright.transpose(Image.Transpose.ROTATE_90).save(sideways, exif=exif.tobytes())
    from fc2conv_onnx.apps import pictures
    assert pictures.image_size(sideways) == upright.size
    expected = fc2conv_onnx.detect(spot_finder, [DISKS]).records
    found = fc2conv_onnx.detect(spot_finder, [sideways]).records
    assert expected and [(r.box, r.score) for r in found] == [(r.box, r.score) for r in expected]


def test_a_picture_of_several_frames_is_refused_saying_so(spot_finder, tmp_path):
    from PIL import Image

    frame = Image.open(SPOTS).convert("RGB")
    animation = tmp_path / "moving.gif"
    frame.save(animation, save_all=True, append_images=[frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    with pytest.raises(InputError, match="has 2 frames"):
        fc2conv_onnx.detect(spot_finder, [animation])


def test_a_folder_or_a_fifo_given_as_a_picture_says_what_it_is(spot_finder, tmp_path):
    with pytest.raises(InputError, match="folder .* holds no picture"):  # detect reads the pictures in a folder
        fc2conv_onnx.detect(spot_finder, [tmp_path])
    with pytest.raises(InputError, match="is a folder, not a picture"):
        fc2conv_onnx.heatmap(spot_finder, tmp_path, tmp_path / "h.png")
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        fc2conv_onnx.detect(spot_finder, [fifo])


def test_the_api_says_input_error_for_arguments_of_the_wrong_kind(spot_finder, tmp_path):
    """One picture given as a string is one picture (it was walked letter by letter); a cell, class or top that
    is not whole numbers, and a text-mode file object, are InputError, not TypeError or ValueError."""
    assert fc2conv_onnx.detect(spot_finder, str(DISKS)).records == fc2conv_onnx.detect(spot_finder, [DISKS]).records
    for cell in ("ab", (1.5, 2), [True, 0]):
        with pytest.raises(InputError, match="whole numbers"):
            fc2conv_onnx.window_of(spot_finder, cell)
    for top, klass in ((1.5, None), (0, None), (None, "1")):
        with pytest.raises(InputError):
            fc2conv_onnx.heatmap(spot_finder, DISKS, tmp_path / "x.png", top=top, klass=klass)
    with open(spot_finder, "r", encoding="latin-1") as text:
        with pytest.raises(InputError, match="text mode"):
            fc2conv_onnx.detect(text, [DISKS])
    with pytest.raises(InputError, match="picture paths"):
        fc2conv_onnx.detect(spot_finder, [1, 2])


#: detect with 6 pictures, -o and --draw into a folder, sending itself signal argv[2] when the argv[1]-th
#: file of the run is about to be written (the records are the first, the drawings follow).
INTERRUPTED_DETECT = r"""
import os, sys
from fc2conv_onnx import cli
from fc2conv_onnx.model import writes
limit, number, count = int(sys.argv[1]), int(sys.argv[2]), [0]
real = writes.check_output_path
def check(output):
    count[0] += 1
    if count[0] == limit:
        os.kill(os.getpid(), number)
    return real(output)
writes.check_output_path = check
sys.exit(cli.main(sys.argv[3:]))
"""


def _pictures(tmp_path, count=6):
    import shutil

    folder = tmp_path / "pictures"
    folder.mkdir()
    for index in range(count):
        shutil.copy(DISKS if index % 2 else SPOTS, folder / f"p{index}.png")
    return sorted(str(p) for p in folder.iterdir())


@pytest.mark.parametrize("limit", [1, 4, 7])
def test_a_signal_during_detect_draw_leaves_none_of_its_files(spot_finder, tmp_path, limit):
    import signal
    import subprocess
    import sys

    from test_cli import ENV

    images = _pictures(tmp_path)
    out, folder = tmp_path / "found.json", tmp_path / "drawings"
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_DETECT, str(limit), str(int(signal.SIGTERM)),
                           "detect", str(spot_finder), *images, "-o", str(out), "--draw", str(folder)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pictures"]  # no records, no folder, no temporaries


def disk_full_at(monkeypatch, step: int) -> None:
    """The disk fills at the `step`-th file a write syncs: that sync fails with ENOSPC, as a full disk's would."""
    import errno

    from fc2conv_onnx.model import writes

    real, count = writes._sync, [0]

    def full(stream):
        count[0] += 1
        if count[0] == step:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(stream)

    monkeypatch.setattr(writes, "_sync", full)


def test_a_full_disk_while_drawing_leaves_none_of_its_files(spot_finder, tmp_path, monkeypatch):
    images = _pictures(tmp_path)
    out, folder = tmp_path / "found.json", tmp_path / "drawings"
    out.write_text("previous")
    disk_full_at(monkeypatch, 3)
    code, _, stderr = cli("detect", spot_finder, *images, "-o", out, "--draw", folder)
    assert code == 6 and "nothing was written" in stderr, stderr
    assert out.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["found.json", "pictures"]


#: convert argv[1] with the address space capped at what the process uses plus argv[2] MiB.
CAPPED = r"""
import resource, sys
from fc2conv_onnx import cli
used = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) << 10
resource.setrlimit(resource.RLIMIT_AS, (used + (int(sys.argv[2]) << 20),) * 2)
sys.exit(cli.main(["convert", sys.argv[1], "-o", sys.argv[3]]))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the process size from /proc")
def test_out_of_memory_reading_a_model_is_exit_6(tmp_path):
    import subprocess
    import sys

    from test_cli import ENV

    big = tmp_path / "big.onnx"
    with open(big, "wb") as stream:  # sparse: 4 GiB of address space to map, no disk
        stream.truncate(4 << 30)
    done = subprocess.run([sys.executable, "-c", CAPPED, str(big), "512", str(tmp_path / "out.onnx")],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 6 and "out of memory" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("message", [
    "pthread_create failed, error code: 12 error msg: Cannot allocate memory",
    "onnxruntime_pybind11_state.so: failed to map segment from shared object",
    "std::bad_alloc"])
def test_onnxruntime_running_out_of_memory_is_exit_6_with_a_hint_for_the_command(message):
    from fc2conv_onnx.apps import maps

    error = runtime.failure(RuntimeError(message), "the model", original=True)
    assert error.exit_code == 6 and "--validate-size" in str(error)
    assert message not in str(error)  # onnxruntime's own words never reach users
    error = runtime.failure(RuntimeError(message), "the model on the picture", original=True,
                             hint=maps._PICTURE_HINT)
    assert error.exit_code == 6 and "--validate-size" not in str(error)


def test_graphsurgeons_log_never_reaches_the_user(monkeypatch, capsys, tmp_path):
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.logger import G_LOGGER

    monkeypatch.setattr(G_LOGGER, "colors", True)
    monkeypatch.setattr(G_LOGGER, "severity", G_LOGGER.INFO)
    real = gs.import_onnx

    def chatty(model):
        G_LOGGER.warning("a warning of graphsurgeon's own")
        return real(model)

    monkeypatch.setattr(gs, "import_onnx", chatty)
    from fc2conv_onnx import cli as command_line

    code = command_line.main(["convert", str(FIXTURES / "spot_finder.onnx"), "-o", str(tmp_path / "o.onnx"), "-q"])
    printed = capsys.readouterr()
    assert code == 0 and printed.err == "" and printed.out == "", printed


@pytest.mark.parametrize("args, code", [
    (("convert", FIXTURES / "dress_detector.onnx", "-o", "{tmp}/o.onnx", "--stride", "0"), 2),
    (("convert", FIXTURES / "dress_detector.onnx", "-o", "{tmp}/o.onnx", "--stride", "16x-8"), 2),
    (("convert", FIXTURES / "dress_detector.onnx", "-o", "{tmp}/o.onnx", "--validate-size", "0"), 2),
    (("convert", FIXTURES / "dress_detector.onnx", "-o", "{tmp}/o.onnx", "--stride", "4x4x4"), 3),  # not its rank
    (("heatmap", "{model}", SPOTS, "-o", "{tmp}/h.png", "--class", "-1"), 2),
    (("detect", "{model}", SPOTS, "-o", "{tmp}/d.json", "--class", "-1"), 2),
    (("heatmap", "{model}", SPOTS, "-o", "{tmp}/h.png", "--class", "99"), 3),  # not the model's
    (("detect", "{model}", SPOTS, "-o", "{tmp}/d.json", "--class", "99"), 3),
])
def test_a_value_wrong_in_itself_is_2_and_one_the_model_lacks_is_3(spot_finder, tmp_path, args, code):
    args = [str(a).format(tmp=tmp_path, model=spot_finder) for a in args]
    got, _, stderr = cli(*args)
    assert got == code and "error:" in stderr.splitlines()[-1] and "Traceback" not in stderr, stderr


def test_a_model_too_large_for_protobuf_on_standard_input_says_to_give_its_path(monkeypatch, tmp_path):
    import io as streams
    import sys

    from fc2conv_onnx.model import io

    data = (FIXTURES / "spot_finder.onnx").read_bytes()
    monkeypatch.setattr(io, "MAX_MESSAGE_BYTES", len(data) - 1)  # as if it were 2 GiB
    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": streams.BytesIO(data)})())
    code, _, stderr = cli("convert", "-", "-o", tmp_path / "o.onnx")
    assert code == 3 and "give the model's file path" in stderr and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("scales, words", [([1.0] * 101, "at most 100"), ([float("nan")], "positive number"),
                                           ([float("inf")], "positive number"), ([True], "must be a number"),
                                           (5, "a sequence"), ("0.5", "a sequence"), ([], "none")])
def test_the_apis_scales_are_checked_like_the_flag(spot_finder, tmp_path, scales, words):
    with pytest.raises(InputError, match=words):
        fc2conv_onnx.detect(spot_finder, [SPOTS], scales=scales)
    with pytest.raises(InputError, match=words):
        fc2conv_onnx.heatmap(spot_finder, SPOTS, tmp_path / "h.png", scales=scales)
    assert not (tmp_path / "h.png").exists()


def test_heatmap_takes_classes_as_detect_does(spot_finder, tmp_path):
    by_list = fc2conv_onnx.heatmap(spot_finder, DISKS, tmp_path / "a.png", classes=[0])
    by_old_name = fc2conv_onnx.heatmap(spot_finder, DISKS, tmp_path / "b.png", klass=0)
    assert by_list.classes == by_old_name.classes == (0,)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with pytest.raises(InputError, match="not both"):
        fc2conv_onnx.heatmap(spot_finder, DISKS, tmp_path / "c.png", classes=[0], klass=0)
    with pytest.raises(InputError, match="distinct"):
        fc2conv_onnx.heatmap(spot_finder, DISKS, tmp_path / "c.png", classes=[0, 0])
    code, _, stderr = cli("heatmap", spot_finder, DISKS, "-o", tmp_path / "d.png", "--class", "0,0")
    assert code == 2 and "twice" in stderr
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "d.png").exists()

"""What a file claims is checked, not trusted: a marker's names and values against the model, a picture's size
where it is decoded and against its header, names of any bytes written and read. Each test is a repro that
ended in a traceback, exit 1, or wrong boxes with exit 0 before (issue 30)."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from test_cli import ENV, cli
from test_files import with_external_data
from test_outputs_and_caps import forged

import fc2conv_onnx
from fc2conv_onnx import InputError, ValidationError
from fc2conv_onnx.apps.records import as_csv, as_json
from fc2conv_onnx.model.detections import Detection

from conftest import FIXTURES

DISKS, SPOTS = FIXTURES / "disks.png", FIXTURES / "spots.png"


def _marker_changed(spot_finder, tmp_path, change):
    return forged(spot_finder, tmp_path, lambda marker, geometry: change(marker))


def test_a_marker_naming_an_input_the_model_lacks_is_bad_input(spot_finder, tmp_path):
    model = forged(spot_finder, tmp_path, lambda marker, geometry: geometry.update(input="no_such_input"))
    code, _, stderr = cli("detect", model, DISKS, "-o", tmp_path / "x.json")
    assert code == 3 and "input 'no_such_input', which the model does not have" in stderr, stderr
    code, _, stderr = cli("heatmap", model, DISKS, "-o", tmp_path / "h.png")
    assert code == 3 and stderr.count("\n") == 1, stderr


def test_a_marker_calling_the_regression_scores_is_refused(spot_finder, tmp_path):
    model = _marker_changed(spot_finder, tmp_path, lambda marker: marker.update(score_outputs=["box"]))
    code, _, stderr = cli("detect", model, DISKS, "-o", tmp_path / "x.json", "--output-name", "box",
                          "--threshold", "0")
    assert code == 3 and "marked as probabilities" in stderr, stderr
    assert not (tmp_path / "x.json").exists()
    model = _marker_changed(spot_finder, tmp_path, lambda marker: marker.update(score_outputs=["ghost"]))
    code, _, stderr = cli("detect", model, DISKS, "-o", tmp_path / "x.json")
    assert code == 3 and "output 'ghost', which the model does not have" in stderr, stderr


@pytest.mark.parametrize("field, value", [("stride", [8, 8]), ("offset", [2, 0]), ("window", [16, 32])])
def test_validate_compares_the_stored_geometry_with_the_graphs(spot_finder, tmp_path, field, value):
    model = forged(spot_finder, tmp_path, lambda marker, geometry: geometry.update({field: value}))
    with pytest.raises(ValidationError, match=f"gives output 'score' a {field}"):
        fc2conv_onnx.validate_pair(FIXTURES / "spot_finder.onnx", model)
    fc2conv_onnx.validate_pair(FIXTURES / "spot_finder.onnx", spot_finder)  # the true marker passes


def test_validate_compares_the_stored_score_outputs_with_the_graphs(spot_finder, tmp_path):
    model = _marker_changed(spot_finder, tmp_path, lambda marker: marker.update(score_outputs=["box"]))
    code, _, stderr = cli("validate", FIXTURES / "spot_finder.onnx", model)
    assert code == 5 and "score outputs" in stderr, stderr


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG of 1-bit pixels whose header says width x height: 20 KB on disk could be GBs decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_the_pixel_cap_holds_where_a_picture_is_decoded(spot_finder, tmp_path):
    huge = tmp_path / "huge.png"
    _png_header_only(huge, 13000, 13000)
    code, _, stderr = cli("detect", spot_finder, huge, "-o", tmp_path / "x.json", "--scales", "0.01")
    assert code == 3 and "as stored would have" in stderr and stderr.count("\n") == 1, stderr
    code, _, stderr = cli("heatmap", spot_finder, huge, "-o", tmp_path / "h.png", "--resize", "0.01")
    assert code == 3 and "as stored would have" in stderr, stderr


@pytest.mark.parametrize("replacement", ["another size", "past the cap"])
def test_a_picture_replaced_after_its_header_was_read_is_refused(spot_finder, tmp_path, replacement):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    shutil.copy(DISKS, first)
    shutil.copy(DISKS, second)

    def replace_second(done: int, total: int) -> None:
        if done == 1:  # after the first picture ran, the second one's header having been read
            if replacement == "another size":
                shutil.copy(SPOTS, second)
            else:
                _png_header_only(second, 12000, 12000)

    words = "changed during the run" if replacement == "another size" else "as stored would have"
    with pytest.raises(InputError, match=words):
        # one worker: the second picture is read after the first ran (several read ahead, before the change)
        fc2conv_onnx.detect(spot_finder, [first, second], progress=replace_second, workers=1)


def test_the_same_picture_under_two_spellings_is_refused(spot_finder, tmp_path):
    picture = tmp_path / "p.png"
    shutil.copy(DISKS, picture)
    os.symlink(picture, tmp_path / "link.png")
    for other in (tmp_path / "." / "p.png", tmp_path / "link.png"):
        with pytest.raises(InputError, match="given twice"):
            fc2conv_onnx.detect(spot_finder, [picture, other])


def test_names_of_any_bytes_are_written_escaped_and_read(spot_finder, tmp_path):
    folder = os.fsencode(tmp_path)
    picture = os.fsdecode(folder + b"/p\xff.png")
    model = os.fsdecode(folder + b"/m\xfe.onnx")
    shutil.copy(DISKS, picture)
    shutil.copy(spot_finder, model)
    code, _, stderr = cli("detect", model, picture, "-o", tmp_path / "x.csv")
    assert code == 0, stderr
    rows = (tmp_path / "x.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 4 and rows[1].startswith(str(tmp_path) + "/p\\xff.png,"), rows[:2]
    assert cli("detect", model, picture, "-o", tmp_path / "x.json")[0] == 0
    records = json.loads((tmp_path / "x.json").read_text(encoding="ascii"))
    assert os.fsencode(records[0]["image"]) == folder + b"/p\xff.png"  # the escape gives the bytes back
    # A strict ASCII standard output and error: the report's names escaped, no traceback.
    done = subprocess.run([sys.executable, "-m", "fc2conv_onnx", "detect", model, picture, "-o",
                           str(tmp_path / "y.json")], capture_output=True, timeout=120,
                          env={**ENV, "PYTHONIOENCODING": "ascii:strict"})
    assert done.returncode == 0 and b"p\\udcff.png" in done.stdout and b"Traceback" not in done.stderr, done.stderr
    code, _, stderr = cli("inspect", os.fsdecode(folder + b"/d\xfd.onnx"))
    assert code == 3 and "does not exist" in stderr
    shutil.copy(FIXTURES / "dress_detector.onnx", os.fsdecode(folder + b"/d\xfd.onnx"))
    assert cli("inspect", os.fsdecode(folder + b"/d\xfd.onnx"))[0] == 0
    code, _, stderr = cli("convert", FIXTURES / "dress_detector.onnx", "-o", os.fsdecode(folder + b"/e\xfc.onnx"),
                          "--external-data")
    assert code == 3 and "not a valid UTF-8 name" in stderr, stderr


def test_json_has_no_infinity():
    record = Detection("p.png", (0.0, 0.0, 1.0, 1.0), float("inf"), 0, 1.0, (0, 0))
    parsed = json.loads(as_json([record]), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert parsed[0]["score"] is None
    assert ",inf," in as_csv([record])


def test_a_classifier_with_no_classes_has_nothing_to_convert(fixture_path, tmp_path):
    model = onnx.load(str(fixture_path("dress_detector")))
    weights = {t.name: t for t in model.graph.initializer}
    weights["fc_w_42"].CopyFrom(numpy_helper.from_array(np.zeros((0, 256), np.float32), "fc_w_42"))
    weights["fc_b_43"].CopyFrom(numpy_helper.from_array(np.zeros((0,), np.float32), "fc_b_43"))
    del model.graph.node[17:]
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("gemm_44", onnx.TensorProto.FLOAT, [1, 0]))
    used = {name for node in model.graph.node for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    path = tmp_path / "no_classes.onnx"
    onnx.save(model, str(path))
    code, _, stderr = cli("convert", path, "-o", tmp_path / "out.onnx")
    assert code == 4 and "is empty (shape [0, 256])" in stderr, stderr


def test_smaller_refusals_in_this_tools_words(spot_finder, fixture_path, tmp_path):
    code, _, stderr = cli("detect", "-", DISKS, "-o", tmp_path / "x.json")
    assert code == 2 and "standard input" in stderr, stderr
    code, _, stderr = cli("validate", fixture_path("dress_detector"), fixture_path("dress_detector"))
    assert code == 3 and "the same file" in stderr, stderr
    # A converted model whose data file is gone: said in this tool's words, not onnxruntime's.
    out = tmp_path / "m.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "spot_finder.onnx", out, external_data=True, validate=False)
    for data in tmp_path.glob("m.onnx.*.data"):
        data.unlink()
    code, _, stderr = cli("detect", out, DISKS, "-o", tmp_path / "x.json")
    assert code == 3 and "which is not a file next to it" in stderr and "ONNXRuntime" not in stderr, stderr
    # A negative external-data offset.
    (tmp_path / "negative").mkdir()
    source = with_external_data(fixture_path("dress_detector"), tmp_path / "negative", location="w.bin")
    model = onnx.load(str(source), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "offset":
            entry.value = "-8"
    if not any(e.key == "offset" for e in model.graph.initializer[0].external_data):
        model.graph.initializer[0].external_data.add(key="offset", value="-8")
    source.write_bytes(model.SerializeToString())
    code, _, stderr = cli("inspect", source)
    assert code == 3 and "negative offset" in stderr, stderr


def test_a_folder_that_cannot_be_listed_is_bad_input(spot_finder, tmp_path, monkeypatch):
    from fc2conv_onnx.apps import pictures

    (tmp_path / "closed").mkdir()

    def refused(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pictures.os, "listdir", refused)
    code, _, stderr = cli("detect", spot_finder, tmp_path / "closed", "-o", tmp_path / "x.json")
    assert code == 3 and "cannot be listed (Permission denied)" in stderr, stderr


def test_onnxruntimes_import_line_never_reaches_the_terminal(spot_finder, tmp_path):
    """onnxruntime 1.32 writes a coloured warning to descriptor 2 while it is imported whenever HOME is not
    writable ("Failed to persist telemetry device ID"), before any of its settings can be made."""
    env = {**ENV, "HOME": "/dev/null/not-a-folder"}
    for args in (("detect", spot_finder, DISKS, "-o", tmp_path / "x.json", "-q"),
                 ("convert", FIXTURES / "spot_finder.onnx", "-o", tmp_path / "m.onnx", "-q")):
        done = subprocess.run([sys.executable, "-m", "fc2conv_onnx", *map(str, args)], capture_output=True,
                              env=env, timeout=120)
        assert done.returncode == 0 and done.stderr == b"", done.stderr

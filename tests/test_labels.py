"""Class names from a labels file (one a line, class 0 first) in the records, the CSV, the drawings and the heatmap
panels; a file with too few names, or one the command would write over, is refused."""
from __future__ import annotations

import csv
import json

import pytest
from test_cli import cli

import fc2conv_onnx
from fc2conv_onnx import InputError
from fc2conv_onnx.apps.labels import read_labels

from conftest import FIXTURES

DISKS = FIXTURES / "disks.png"


def test_names_reach_the_records_the_csv_and_the_panels(spot_finder, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("bright disk\n", encoding="utf-8")
    assert read_labels(labels) == ("bright disk",)
    code, _, stderr = cli("detect", spot_finder, DISKS, "-o", tmp_path / "d.json", "--labels", labels, "--draw",
                          tmp_path / "d.png")
    assert code == 0, stderr
    records = json.loads((tmp_path / "d.json").read_text())
    assert records and {r["label"] for r in records} == {"bright disk"} and {r["class"] for r in records} == {0}
    assert cli("detect", spot_finder, DISKS, "-o", tmp_path / "d.csv", "--labels", labels)[0] == 0
    rows = list(csv.DictReader((tmp_path / "d.csv").open()))
    assert rows and {row["label"] for row in rows} == {"bright disk"}
    plain = fc2conv_onnx.detect(spot_finder, [DISKS]).records
    assert "label" not in plain[0].to_dict()  # no labels, no key: the JSON records are as they were
    code, _, stderr = cli("heatmap", spot_finder, DISKS, "-o", tmp_path / "h.png", "--labels", labels)
    assert code == 0, stderr


def test_too_few_names_and_bad_files_are_refused(spot_finder, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(InputError, match="holds 0 names"):
        read_labels(empty)
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_labels(tmp_path / "latin.txt")
    with pytest.raises(InputError, match="class 1 has no name"):
        fc2conv_onnx.detect(spot_finder, [DISKS], classes=[0, 1], output_name="box", activation="sigmoid",
                            labels=["disk"], threshold=-1e9)
    with pytest.raises(InputError, match="labels must be a list of class names"):
        fc2conv_onnx.detect(spot_finder, [DISKS], labels="disk")
    labels = tmp_path / "labels.txt"
    labels.write_text("disk\n")
    for command in (("detect", spot_finder, DISKS, "-o", labels), ("heatmap", spot_finder, DISKS, "-o", labels)):
        code, _, stderr = cli(*command, "--labels", labels)
        assert code == 3 and "the labels file" in stderr, stderr
    assert labels.read_text() == "disk\n"


def test_the_detectors_batches_carry_the_labels_too(spot_finder):
    from fc2conv_onnx import Detector

    rows = Detector(spot_finder, labels=["bright disk"])({"path": [str(DISKS)]})
    assert len(rows["label"]) == len(rows["score"]) > 0 and set(rows["label"]) == {"bright disk"}
    assert "label" not in Detector(spot_finder)({"path": [str(DISKS)]})


@pytest.mark.parametrize("key, value, names", [
    ("names", "{0: 'bright disk'}", ("bright disk",)),  # Ultralytics: a Python dict
    ("labels", '["bright disk"]', ("bright disk",)),
    ("character", "bright disk\nfaint disk", None),  # two names for one class: not this output's
    ("classes", "bright disk", None),  # one line, no list: not read as names
    ("names", "__import__('os').system('false')", None),  # literals only: nothing runs
])
def test_names_from_the_models_metadata(spot_finder, tmp_path, key, value, names, caplog):
    """Where an exporter stores class names in the model's metadata, detect and heatmap use them (and say so) when
    no labels are given and they are as many as the output's classes."""
    import onnx

    from fc2conv_onnx.apps.labels import labels_from_metadata

    model = onnx.load(str(spot_finder))
    model.metadata_props.add(key=key, value=value)
    named = tmp_path / "named.onnx"
    onnx.save(model, str(named))
    found = fc2conv_onnx.detect(named, [DISKS])
    labels = {r.label for r in found.records}
    if names is None:
        assert labels == {None} and found.labels_from == ""
        if key == "character":
            assert labels_from_metadata({key: value}) == (("bright disk", "faint disk"), key)
            assert "holds 2 names, and output 'score' has 1 classes: not used" in caplog.text
        return
    assert labels == set(names) and found.labels_from == key
    assert f"class names: from the model's metadata '{key}'" in found.to_text()
    drawn = fc2conv_onnx.heatmap(named, DISKS, tmp_path / "h.png")
    assert drawn.names == names and "bright disk" in drawn.to_text()
    given = fc2conv_onnx.detect(named, [DISKS], labels=["mine"])
    assert {r.label for r in given.records} == {"mine"} and given.labels_from == ""


def test_heatmap_says_which_class_it_shows(tmp_path):
    """A multi-class map without --class shows the class with the highest cell, and says so."""
    converted = tmp_path / "dress_fcn.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "dress_detector.onnx", converted)
    drawn = fc2conv_onnx.heatmap(converted, DISKS, tmp_path / "h.png")
    assert drawn.picked == ""  # one class: nothing to choose
    two = FIXTURES / "two_heads.onnx"
    fc2conv_onnx.convert_file(two, tmp_path / "two.onnx")
    drawn = fc2conv_onnx.heatmap(tmp_path / "two.onnx", DISKS, tmp_path / "h2.png")
    assert drawn.picked.startswith("the one of") and "--class K or --top N for others" in drawn.to_text()

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

"""The output apps use by default is the one a Softmax or Sigmoid computes, even behind ops that only move its
values: a channels-last (tf2onnx/Keras, MTCNN-style) model converted to channels-last maps has a Transpose
after its Softmax, and a box regression before it in the outputs. heatmap, detect and --emit-detections
all pick the score."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fc2conv_onnx
from fc2conv_onnx.model.scores import made_by_score_op, score_output

from conftest import FIXTURES


def _nhwc_face_classifier(path):
    """[1, 24, 24, 3] NHWC -> Transpose -> Conv 3x3 stride 2 -> Relu -> Flatten -> two heads: 'dense_2' (a box
    regression, the first graph output) and 'softmax_1' (face / not face)."""
    rng = np.random.default_rng(0)
    shapes = (("conv_w", (4, 3, 3, 3), 0.3), ("box_w", (4 * 11 * 11, 4), 0.05), ("cls_w", (4 * 11 * 11, 2), 0.05))
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * scale, name)
               for name, shape, scale in shapes]
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "conv_w"], ["conv"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "box_w"], ["dense_2"]),
             helper.make_node("MatMul", ["flat", "cls_w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["softmax_1"], axis=1)]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 24, 24, 3])
    graph = helper.make_graph(nodes, "face", [image],
                              [helper.make_tensor_value_info("dense_2", TensorProto.FLOAT, [1, 4]),
                               helper.make_tensor_value_info("softmax_1", TensorProto.FLOAT, [1, 2])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("face")
    out = folder / "face_fcn.onnx"
    fc2conv_onnx.convert_file(_nhwc_face_classifier(folder / "face.onnx"), out)
    return out


def test_the_score_behind_a_transpose_is_still_the_score(converted):
    model = onnx.load(str(converted))
    producer = {o: n for n in model.graph.node for o in n.output}
    assert producer["softmax_1"].op_type == "Transpose"  # channels-last maps: the Softmax is behind it
    assert made_by_score_op(model, "softmax_1") and not made_by_score_op(model, "dense_2")
    assert score_output(model, ["dense_2", "softmax_1"]) == "softmax_1"


def test_heatmap_and_detect_pick_the_score_by_default(converted, tmp_path):
    drawn = fc2conv_onnx.heatmap(converted, FIXTURES / "disks.png", tmp_path / "h.png")
    assert drawn.model_output == "softmax_1"
    found = fc2conv_onnx.detect(converted, [FIXTURES / "disks.png"], threshold=0.5)
    assert found.settings.output_name == "softmax_1" and not found.logits
    assert all(0.0 <= r.score <= 1.0 for r in found.records)


def test_the_marker_names_the_scores_and_an_older_marker_is_read_from_the_graph(converted, tmp_path):
    """detect reads which outputs are scores from the marker (without onnx); a model converted before the
    marker named them is read from its graph, from a file or in memory alike."""
    import json

    from fc2conv_onnx.model.marker import CONVERTED_KEY

    model = onnx.load(str(converted))
    prop = next(p for p in model.metadata_props if p.key == CONVERTED_KEY)
    assert json.loads(prop.value)["score_outputs"] == ["softmax_1"]
    older = json.loads(prop.value)
    del older["score_outputs"]
    prop.value = json.dumps(older)
    onnx.save(model, str(tmp_path / "older.onnx"))
    for source in (tmp_path / "older.onnx", model, model.SerializeToString()):
        found = fc2conv_onnx.detect(source, [FIXTURES / "disks.png"], threshold=0.5)
        assert found.settings.output_name == "softmax_1" and not found.logits
        drawn = fc2conv_onnx.heatmap(source, FIXTURES / "disks.png", tmp_path / "h.png")
        assert drawn.model_output == "softmax_1"
    older["score_outputs"] = "softmax_1"  # damaged: not a list
    prop.value = json.dumps(older)
    onnx.save(model, str(tmp_path / "damaged.onnx"))
    with pytest.raises(fc2conv_onnx.InputError, match="damaged"):
        fc2conv_onnx.detect(tmp_path / "damaged.onnx", [FIXTURES / "disks.png"])


def test_the_in_graph_detector_takes_the_score_by_default(tmp_path):
    source = _nhwc_face_classifier(tmp_path / "face.onnx")
    conversion = fc2conv_onnx.convert_with_report(source, emit_detections=True)
    assert "softmax_1" in conversion.report.detector


def test_a_detector_whose_outputs_share_names_with_the_model_builds_or_says_why(tmp_path):
    """The model's own outputs named 'boxes' and 'scores' (the detector's default names) and a regression
    that is a graph output: the detector's outputs take other names; the score output given as its own
    regression is refused in the tool's words, never onnxruntime's."""
    source = _nhwc_face_classifier(tmp_path / "face.onnx")
    model = onnx.load(str(source))
    renamed = {"softmax_1": "scores", "dense_2": "boxes"}
    for node in model.graph.node:
        node.output[:] = [renamed.get(o, o) for o in node.output]
    for value in model.graph.output:
        value.name = renamed[value.name]
    onnx.save(model, str(source))
    conversion = fc2conv_onnx.convert_with_report(
        source, emit_detections=fc2conv_onnx.DetectionSettings(classes=(1,), regression="boxes"))
    names = [o.name for o in conversion.model.graph.output]
    assert names[:2] == ["boxes", "scores"] and len(names) == len(set(names)) == 6
    with pytest.raises(fc2conv_onnx.InputError, match="both the score output and the regression"):
        fc2conv_onnx.convert_with_report(source, emit_detections=fc2conv_onnx.DetectionSettings(
            output_name="boxes", regression="boxes"))


def test_overlap_against_the_smaller_box_drops_a_box_inside_a_better_one():
    from fc2conv_onnx.model.detections import SMALLER, suppressed

    # The two boxes MTCNN's second stage gives on docs/detect_face.jpg, at two scales of the pyramid: IoU
    # 0.49, but 84% of the smaller one lies in the better one.
    boxes = np.asarray([[162.2, 81.1, 283.9, 202.8], [178.8, 65.0, 276.3, 162.5]], np.float32)
    scores = np.asarray([0.987, 0.971], np.float32)
    assert suppressed(boxes, scores, 0.5) == [0, 1]
    assert suppressed(boxes, scores, 0.5, SMALLER) == [0]


def test_detect_takes_overlap_smaller_and_the_in_graph_detector_refuses_it(tmp_path):
    from test_cli import cli

    code, stdout, stderr = cli("detect", _converted_spots(tmp_path), FIXTURES / "disks.png", "-o", tmp_path / "d.json",
                               "--overlap", "smaller")
    assert code == 0 and "over the smaller box" in stdout, stderr
    code, _, stderr = cli("convert", FIXTURES / "spot_finder.onnx", "-o", tmp_path / "x.onnx", "--emit-detections",
                          "--overlap", "smaller")
    assert code == 3 and "NonMaxSuppression measures intersection over union only" in stderr
    assert not (tmp_path / "x.onnx").exists()


def _converted_spots(tmp_path):
    out = tmp_path / "spots.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "spot_finder.onnx", out)
    return out

"""The graph keeps one form through a conversion: how often it is imported into graphsurgeon, exported back,
shape-inferred, and how many onnxruntime sessions start, held down (a ConvNeXt in window mode once exported
its graph 27 times, one one-node graph per folded constant)."""
from __future__ import annotations

import pytest
from test_cli import cli

import fc2conv_onnx
from fc2conv_onnx.model import work

from conftest import FIXTURES

#: (model, pooling) -> the most of each the conversion (with validation) may do. Sessions: the original, the
#: converted model as written, the same with its heads' logits as outputs (when an activation follows them),
#: the original's trunk and its head for the window check.
LIMITS = {
    ("exported/timm_convnext_ts", "window"): {work.IMPORTS: 1, work.EXPORTS: 4, work.INFERENCES: 4, work.SESSIONS: 4},
    ("exported/timm_convnext_dynamo", "window"): {work.IMPORTS: 1, work.EXPORTS: 4, work.INFERENCES: 4,
                                                   work.SESSIONS: 4},
    ("caffe2_alexnet_opset8_constants", "keep"): {work.IMPORTS: 1, work.EXPORTS: 4, work.INFERENCES: 4,
                                                  work.SESSIONS: 5},
    ("dress_detector", "keep"): {work.IMPORTS: 1, work.EXPORTS: 3, work.INFERENCES: 3, work.SESSIONS: 5},
}


@pytest.mark.parametrize("stem, pooling", list(LIMITS))
def test_a_conversion_changes_the_graphs_form_a_few_times_only(stem, pooling):
    fc2conv_onnx.convert_with_report(FIXTURES / f"{stem}.onnx", pooling=pooling)
    done = work.counts()
    assert all(done[what] <= most for what, most in LIMITS[stem, pooling].items()), done
    assert done[work.IMPORTS] >= 1 and done[work.EXPORTS] >= 1  # the counting itself works


def test_verbose_says_the_counts(tmp_path):
    code, _, stderr = cli("convert", FIXTURES / "dress_detector.onnx", "-o", tmp_path / "o.onnx", "-v")
    assert code == 0 and "graph imports" in stderr and "sessions" in stderr, stderr

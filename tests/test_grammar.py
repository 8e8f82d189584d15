"""The head grammar on models made by the real exporters (fixtures/exported/, suite "grammar" in its
MANIFEST.json) and on builder topologies (fixtures/builders.py, GRAMMAR_HEADS): each head is read as
segments, converted in every --pooling mode it allows, and proven again by tests/equivalence.py, which
shares no code with the package; what cannot be converted as asked is refused with the head and the reason.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from test_cli import cli
from test_frameworks import FRAMEWORKS

import fc2conv_onnx
from fc2conv_onnx import InputError, NothingToConvertError
from fc2conv_onnx.model import runtime

import builders
from conftest import FIXTURES
from equivalence import (
    assert_equivalent,
    assert_one_prediction,
    cut,
    identity_reshapes_dropped,
    input_shape,
    random_input,
    run,
)

EXPORTED = FIXTURES / "exported"
GRAMMAR = sorted(name[:-5] for name, entry in json.loads((EXPORTED / "MANIFEST.json").read_text()).items()
                 if entry.get("suite") == "grammar")
#: Exporter-made pooled heads -> the op sequence the grammar reads after the pool.
POOLED = {
    "timm_mobilenetv3_ts": ["Conv", "HardSwish", "Flatten", "Gemm"],
    "timm_mobilenetv3_dynamo": ["Conv", "HardSwish", "Reshape", "Gemm"],
    "timm_convnext_ts": ["Transpose", "LayerNormalization", "Transpose", "Flatten", "Gemm"],
    # as_strided (Reshape [-1], Gather of every element) before the Transpose: removed as the identity
    "timm_convnext_dynamo": ["Transpose", "LayerNormalization", "Transpose", "Reshape", "Gemm"],
    # the same, on a dynamic batch: the Gather's indices are computed from the batch (evaluated at two)
    "timm_convnext_dynamo_dynamic_batch": ["Transpose", "LayerNormalization", "Transpose", "Reshape", "Gemm"],
    "torchvision_convnext_ts": ["Transpose", "LayerNormalization", "Transpose", "Flatten", "Gemm"],
    "torch_pooled_conv_logits": ["Conv"],
    "timm_same_padding_ts": ["Gemm"],  # sizes hidden by shape arithmetic: read from one run
}
#: Builder-made pooled heads on NHWC inputs (tf2onnx's spellings of Keras heads).
KERAS_LIKE = ("keras_convnext_like", "keras_mobilenetv3_like")
MODES = ("keep", "window", "none")


def exported(stem: str) -> onnx.ModelProto:
    return onnx.load(str(EXPORTED / f"{stem}.onnx"))


def larger(shape, channels_last: bool = False):
    """More than the training size, by different amounts per axis and not whole strides."""
    grown = list(shape)
    for extra, axis in zip((40, 72), range(1, len(shape) - 1) if channels_last else range(2, len(shape))):
        grown[axis] += extra
    return tuple(grown)


def pool_input(model: onnx.ModelProto, pool: str) -> str:
    """The tensor the named pool reads, from the ONNX graph itself (not from the package)."""
    return next(node.input[0] for node in model.graph.node if node.name == pool)


def prove(original: onnx.ModelProto, converted: onnx.ModelProto, source: str, mode: str,
          channels_last: bool = False) -> None:
    """The independent check for one --pooling mode."""
    rank = len(input_shape(original)) - 2
    size = larger(input_shape(original), channels_last)
    if mode == "keep":
        assert_equivalent(original, converted, source=source, channels_last=channels_last)
        assert_one_prediction(original, converted, source=source, size=size, channels_last=channels_last)
    elif mode == "window":
        assert_equivalent(original, converted, source=source, sizes=[size], channels_last=channels_last)
    else:
        assert_equivalent(original, converted, source=source, sizes=[size], channels_last=channels_last,
                          window=(1,) * rank)


def gathers_of_the_batch_dropped(model: onnx.ModelProto) -> onnx.ModelProto:
    """A reference whose head can be cut from its feature map: the dynamo exporter's as_strided on a dynamic
    batch (Reshape [-1], then a Gather whose indices are computed from Shape(image)) reads the image's shape
    in the head. Here (by hand, not by the package) such a Gather becomes an Identity of the Reshape's input,
    after checking that this gives the original's outputs at two batch sizes."""
    inputs = {i.name for i in model.graph.input}
    producers = {out: node for node in model.graph.node for out in node.output}

    def reads_an_input(name: str, seen: set) -> bool:
        node = producers.get(name)
        if name in inputs or node is None or name in seen:
            return name in inputs
        seen.add(name)
        return any(reads_an_input(i, seen) for i in node.input)

    reference = onnx.ModelProto.FromString(model.SerializeToString())
    changed = False
    for node in reference.graph.node:
        flat = producers.get(node.input[0]) if node.op_type == "Gather" else None
        if flat is not None and flat.op_type == "Reshape" and reads_an_input(node.input[1], set()):
            node.op_type, node.input[:] = "Identity", [flat.input[0]]
            del node.attribute[:]
            changed = True
    if not changed:
        return model
    for batch in (2, 3):
        shape = (batch,) + input_shape(model)[1:]
        feeds = random_input(model, shape)
        for name, value in run(model, feeds).items():
            np.testing.assert_array_equal(run(reference, feeds)[name], value)
    return reference


#: tf2onnx-made Keras heads: their pooled map is computed after the Transpose to NHWC.
KERAS_EXPORTED = ("tf_keras_mobilenetv3_top", "tf_keras_convnext_head")


def test_every_grammar_fixture_is_tested_here_or_in_test_frameworks():
    assert set(GRAMMAR) == set(POOLED) | set(KERAS_EXPORTED) | set(FRAMEWORKS) | {
        "torch_dynamic_hw", "torch_shuffle_dynamo", "tf_keras_same_padding_branches", *SHUFFLE_UNITS}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stem", sorted(POOLED))
def test_exported_pooled_heads_convert_in_every_mode(stem, mode):
    original = exported(stem)
    conversion = fc2conv_onnx.convert_with_report(original, pooling=mode)
    head, = conversion.report.plan.heads
    assert [step.op for step in head.steps] == POOLED[stem]
    assert head.pool.mode.name == mode and head.source == pool_input(original, head.pool.node)
    prove(gathers_of_the_batch_dropped(original), conversion.model, head.source, mode)
    ops = {node.op_type for node in conversion.model.graph.node}
    assert not ops & {"Gemm", "Flatten"}, ops
    if mode != "keep":  # a map, not one prediction: the silent drop of the issue would give [N, K, 1, 1]
        value = next(iter(run(conversion.model, random_input(original, larger(input_shape(original)))).values()))
        assert value.shape[2] > 1 and value.shape[3] > 1, value.shape


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stem", KERAS_LIKE)
def test_keras_pooled_heads_on_nhwc_inputs(stem, mode):
    """LayerNorm over [N, C] after a keepdims-0 pool (re-expressed over the channels of the map), and 1x1
    convs between Transposes after a keepdims-1 pool on the NHWC map, with Rescaling before the trunk."""
    original = getattr(builders, stem)()
    conversion = fc2conv_onnx.convert_with_report(original, pooling=mode)
    head, = conversion.report.plan.heads
    assert head.source == builders.SOURCE and head.output_layout == "channels_last"
    prove(original, conversion.model, head.source, mode, channels_last=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stem", KERAS_EXPORTED)
def test_keras_heads_made_by_tf2onnx(stem, mode):
    """MobileNetV3's top (hard-swish on the NHWC map before the pool, 1x1 convs between Transposes, no Dense)
    and ConvNeXt's (LayerNormalization spelled out by tf2onnx as ReduceMean, Sub, Mul, Sqrt... over [N, C];
    Normalization's mean left as a graph input)."""
    original = exported(stem)
    conversion = fc2conv_onnx.convert_with_report(original, pooling=mode)
    head, = conversion.report.plan.heads
    assert conversion.report.plan.input_layouts == {"image": "channels_last"}
    prove(identity_reshapes_dropped(original), conversion.model, head.source, mode, channels_last=True)


def test_an_input_left_by_the_exporter_for_a_normalization_is_a_parameter_not_an_image():
    plan = fc2conv_onnx.inspect(EXPORTED / "tf_keras_convnext_head.onnx").plan
    assert plan.trunk_inputs == ("image",) and plan.parameter_inputs == ("functional_1_1/normalization_1/Sub/y:0",)
    assert "per-channel parameters, not images" in plan.describe()


def test_a_trunk_that_takes_only_some_sizes_says_so_and_runs_at_each(tmp_path):
    """tf2onnx writes Keras "same" padding as pads fixed at the training size: the MaxPool branch and the
    strided 1x1 shortcut of an Xception block then agree only at 38 + 4k x 46 + 4k."""
    path = EXPORTED / "tf_keras_same_padding_branches.onnx"
    conversion = fc2conv_onnx.convert_with_report(path, pooling="window")
    geometry = conversion.report.geometry[0]
    assert geometry.size_step == (4, 4) and "input sizes it takes: 38 + k*4 x 46 + k*4" in conversion.report.to_text()
    original = exported("tf_keras_same_padding_branches")
    for k in range(4):  # every size it claims runs, and is crop-and-forward
        size = (1, 38 + 4 * k, 46 + 4 * (3 - k), 3)
        assert_equivalent(original, conversion.model, source=conversion.report.plan.heads[0].source, sizes=[size],
                          channels_last=True)
    with pytest.raises(Exception):  # a size it does not claim really fails in onnxruntime
        run(conversion.model, random_input(original, (1, 40, 46, 3)))
    with pytest.raises(InputError, match=r"size 40x46 is not one the trunk takes .* 38 \+ k\*4 x 46 \+ k\*4"):
        fc2conv_onnx.convert(path, pooling="window", validate_size="40x46")
    kept = fc2conv_onnx.convert_with_report(path).report
    assert "input sizes the trunk takes: 38 + k*4 x 46 + k*4" in kept.to_text()


def test_a_layer_norm_on_pooled_features_runs_over_the_channels_of_the_map():
    plan = fc2conv_onnx.inspect(builders.keras_convnext_like(), pooling="none").plan
    norm = next(step for step in plan.heads[0].steps if step.op == "LayerNormalization")
    assert norm.becomes.startswith("Transpose, LayerNormalization over the last axis")


def test_the_layout_is_found_through_preprocessing_before_the_transpose():
    """Keras Rescaling/Normalization (Mul, Add, Mul on the NHWC image) before tf2onnx's Transpose: the
    spatial axes are 1 and 2, so the default window check grows those (a wrong guess grew W and C)."""
    report = fc2conv_onnx.convert_with_report(builders.keras_mobilenetv3_like(), pooling="window").report
    assert report.plan.input_layouts == {"input_1": "channels_last"}
    window_check = next(c for c in report.checks if c.check == "windows")
    assert window_check.input_shape[-1] == 3 and window_check.input_shape[1:3] != (20, 28)


@pytest.mark.parametrize("mode", ("window", "none"))
def test_a_mode_that_cannot_reach_a_head_is_refused(tmp_path, mode):
    """A 3x3 Conv after the pool: the head cannot run per location, so a map cannot be had; exit 4 with the
    head's output and the reason, nothing written. Keep still converts (one prediction per image)."""
    model = builders.pool_then_wide_conv()
    with pytest.raises(NothingToConvertError, match=r"--pooling .* cannot apply to the head -> logits.*"
                                                    r"Conv '.*' after the global pool has kernel \[3, 3\]"):
        fc2conv_onnx.convert(model, pooling=mode)
    source, out = tmp_path / "wide.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(source))
    code, _, stderr = cli("convert", source, "-o", out, "--pooling", mode)
    assert code == 4 and not out.exists() and "cannot apply to the head -> logits" in stderr
    kept = fc2conv_onnx.convert(model)
    flattened = next(node.input[0] for node in model.graph.node if node.op_type == "Flatten")
    assert_equivalent(model, kept, source=flattened)
    assert_one_prediction(model, kept, source=flattened, size=(1, 3, 40, 52))


def test_the_refusal_does_not_hang_on_the_geometry():
    """The pool the head cannot be read past is found in the graph, not by the geometry, which here stops
    earlier at an op it does not know."""
    model = builders.pool_then_wide_conv(opaque_trunk=True)
    report = fc2conv_onnx.inspect(model)
    assert "InstanceNormalization" in report.geometry[0].reason
    with pytest.raises(NothingToConvertError, match="already pooled to one location by 'GlobalAveragePool"):
        fc2conv_onnx.convert(model, pooling="none")


def test_weights_computed_from_constants_are_folded_and_equivalent():
    """Gemm's B and C computed by Cast, Transpose, Reshape, Unsqueeze, Mul, Div, Squeeze of initializers."""
    model = builders.computed_weights()
    conversion = fc2conv_onnx.convert_with_report(model)
    assert conversion.report.plan.heads[0].first.weight.shape == (7, 96)
    assert_equivalent(model, conversion.model, source=builders.SOURCE, sizes=[(1, 3, 29, 33)])


def test_weights_computed_from_constants_fold_when_read_from_a_file(tmp_path):
    """From a path, large weights stay in the file until read (weights.py): folding must read them too
    (TorchScript shares equal weights through Identity nodes: timm ConvNeXt's head LayerNorm)."""
    path = tmp_path / "computed.onnx"
    onnx.save(builders.computed_weights(), str(path))
    conversion = fc2conv_onnx.convert_with_report(path)
    assert_equivalent(onnx.load(str(path)), conversion.model, source=builders.SOURCE, sizes=[(1, 3, 29, 33)])
    convnext = fc2conv_onnx.inspect(EXPORTED / "timm_convnext_ts.onnx", pooling="window").plan
    assert convnext.heads[0].pool is not None


def fixed_size(stem: str, size: int) -> onnx.ModelProto:
    """The reference for a dynamic-size export: its spatial dims fixed by hand."""
    fixed = exported(stem)
    for axis in (2, 3):
        fixed.graph.input[0].type.tensor_type.shape.dim[axis].dim_value = size
    return fixed


def test_a_dynamic_size_export_needs_and_takes_its_training_size(tmp_path):
    path = EXPORTED / "torch_dynamic_hw.onnx"
    for mode in ("window", "none"):
        with pytest.raises(InputError, match="dynamic spatial dims.*--input-size"):
            fc2conv_onnx.convert(path, pooling=mode)
    code, _, stderr = cli("convert", path, "-o", tmp_path / "x.onnx", "--pooling", "window")
    assert code == 3 and "--input-size" in stderr and not (tmp_path / "x.onnx").exists()
    for mode in MODES:
        conversion = fc2conv_onnx.convert_with_report(path, pooling=mode, input_size="64")
        prove(fixed_size("torch_dynamic_hw", 64), conversion.model, conversion.report.plan.heads[0].source, mode)


def test_a_dynamic_size_export_whose_pool_is_kept_needs_no_training_size():
    """A kept global pool needs no training size: the model is read and validated at 224x224, and says so.
    A flattening head does need one."""
    conversion = fc2conv_onnx.convert_with_report(EXPORTED / "torch_dynamic_hw.onnx")
    assert conversion.report.plan.probe_size == (224, 224) and "read and validated at 224x224" in \
        conversion.report.to_text()
    prove(fixed_size("torch_dynamic_hw", 224), conversion.model, conversion.report.plan.heads[0].source, "keep")
    flattening = onnx.load(str(FIXTURES / "dress_detector.onnx"))
    for axis in (2, 3):
        flattening.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = "HW"[axis - 2]
    with pytest.raises(InputError, match="dynamic spatial dims.*give the model's training size with --input-size"):
        fc2conv_onnx.convert(flattening)


def test_an_input_size_that_contradicts_a_fixed_one_is_refused():
    with pytest.raises(InputError, match="fixed shape .* does not match"):
        fc2conv_onnx.inspect(EXPORTED / "timm_convnext_ts.onnx", input_size="32x48")


def test_a_channel_shuffle_that_bakes_the_size_is_made_to_follow_it():
    """The dynamo exporter writes ShuffleNet's shuffle as Reshape [1, 2, 4, 16, 16] and [1, 8, 16, 16]. The
    reference for a 50x50 input is the original with those shapes written for that size by hand."""
    original = exported("torch_shuffle_dynamo")
    conversion = fc2conv_onnx.convert_with_report(original)
    assert sum("now reads the batch and its last 2 dims" in note for note in conversion.report.plan.normalized) == 2
    reference = exported("torch_shuffle_dynamo")
    for tensor in reference.graph.initializer:
        values = onnx.numpy_helper.to_array(tensor)
        if tensor.data_type == onnx.TensorProto.INT64 and list(values[-2:]) == [16, 16]:
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.array(list(values[:-2]) + [25, 25]), tensor.name))
    source = conversion.report.plan.heads[0].source
    expected_trunk = cut(onnx.shape_inference.infer_shapes(reference), ["image"], [source], free_sizes=True)
    converted_trunk = cut(onnx.shape_inference.infer_shapes(conversion.model), ["image"], [source], free_sizes=True)
    feeds = random_input(original, (1, 3, 50, 50))
    np.testing.assert_allclose(run(converted_trunk, feeds)[source], run(expected_trunk, feeds)[source], rtol=1e-5,
                               atol=1e-6)
    assert_equivalent(original, conversion.model, source=source)  # the training size


#: torchvision's ShuffleNetV2 units as each exporter writes them (fixtures/export_timm.py).
SHUFFLE_UNITS = ("torch_shuffle_units_ts", "torch_shuffle_units_dynamo", "torch_shuffle_units_ts_opset11",
                 "torch_shuffle_units_ts_opset9")


def with_map_size(model: onnx.ModelProto, training: tuple, larger_map: tuple) -> onnx.ModelProto:
    """`model` with every int64 constant (initializer or Constant node) that ends in the training feature
    map's size ending in `larger_map` instead: the channel shuffles' Reshapes written by hand for a larger
    input. Its trunk, cut at the source, is the reference there."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    tensors = list(fixed.graph.initializer) + [a.t for n in fixed.graph.node if n.op_type == "Constant"
                                               for a in n.attribute if a.name == "value"]
    for tensor in tensors:
        values = onnx.numpy_helper.to_array(tensor)
        if tensor.data_type == onnx.TensorProto.INT64 and values.ndim == 1 and tuple(values[-2:]) == training:
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.array(list(values[:-2]) + list(larger_map)), tensor.name))
    return fixed


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stem", SHUFFLE_UNITS)
def test_shufflenet_units_follow_the_input_size_and_keep_their_geometry(stem, mode):
    """torchvision's ShuffleNetV2 units. TorchScript writes x.chunk(2, dim=1) as Slices with bounds computed
    from the shape: shape inference then loses every dim after it, the channels too, and the shuffles'
    Reshapes were refused as baking the size for good; the dynamo exporter writes a Split, which the
    geometry did not know. Before opset 13 shape inference follows no shape arithmetic, so it loses the
    shapes after each rewritten Reshape, the next baked one's and the output's with them (opset 9 also has
    no allowzero). Each case converts in every mode with a known geometry, and each cell equals the original
    head on a window of the trunk written by hand for the larger size."""
    original = exported(stem)
    conversion = fc2conv_onnx.convert_with_report(original, pooling=mode)
    plan = conversion.report.plan
    assert sum("now reads the batch and its last 2 dims" in note for note in plan.normalized) == 4
    head, = plan.heads
    size = (1, 3, 72, 104)  # the map: 18x26 where the training size gives 8x8
    reference = cut(onnx.shape_inference.infer_shapes(with_map_size(original, (8, 8), (18, 26))), ["image"],
                    [head.source], free_sizes=True)
    if mode == "keep":
        assert_equivalent(original, conversion.model, source=head.source)
        assert_one_prediction(original, conversion.model, source=head.source, size=size, trunk=reference)
        return
    geometry, = fc2conv_onnx.read_geometry(conversion.model).values()
    assert (geometry.stride, geometry.window) == ((4, 4), (32, 32) if mode == "window" else (4, 4))
    assert_equivalent(original, conversion.model, source=head.source, sizes=[size], trunk=reference,
                      window=None if mode == "window" else (1, 1))
    if mode == "none":  # --stride: the Slice's computed bounds are not a map of another density
        denser = fc2conv_onnx.convert(original, pooling=mode, stride=2)
        assert_equivalent(original, denser, source=head.source, sizes=[size], trunk=reference, window=(1, 1),
                          dilation=(2, 2))


def test_a_trunk_that_bakes_the_size_otherwise_is_refused_before_anything_runs(monkeypatch):

    monkeypatch.setattr(runtime.Session, "__init__", lambda *a, **k: pytest.fail("a session was made"))
    with pytest.raises(InputError, match=r"Resize 'Resize_\d+' in the trunk fixes the size of its output"):
        fc2conv_onnx.convert(builders.baked_resize_trunk())


def test_a_transformer_is_refused_for_having_no_convolutional_trunk():
    with pytest.raises(NothingToConvertError) as caught:
        fc2conv_onnx.convert(builders.tiny_vit())
    message = str(caught.value)
    gemm = next(n.name for n in builders.tiny_vit().graph.node if n.op_type == "Gemm")
    assert f"Gemm '{gemm}': the model has no convolutional trunk" in message and "attention" in message


def test_a_trunk_with_squeeze_and_excitation_is_said_not_to_be_local(tmp_path):
    out = tmp_path / "mnv3.onnx"
    report = fc2conv_onnx.convert_file(EXPORTED / "timm_mobilenetv3_ts.onnx", out, pooling="window")
    assert "scores: cells are not local: ReduceMean" in report.to_text() or \
        "scores: cells are not local: GlobalAveragePool" in report.to_text()
    geometry = fc2conv_onnx.read_geometry(out)["scores"]
    assert geometry.local is False and geometry.not_local
    local = fc2conv_onnx.convert_with_report(EXPORTED / "timm_convnext_ts.onnx", pooling="window").report
    assert local.geometry[0].local and "not local" not in local.to_text()


def test_none_mode_is_validated_at_the_training_size_as_well():
    report = fc2conv_onnx.convert_with_report(EXPORTED / "torch_pooled_conv_logits.onnx", pooling="none").report
    sizes = [c.input_shape for c in report.checks if c.check == "windows"]
    assert sizes[0][2:] == (32, 32) and sizes[1][2:] != (32, 32)


def test_heatmap_repeats_the_locality_line_and_runs_at_a_size_the_trunk_takes(tmp_path):
    """A "same"-padded trunk with branches takes 38 + k*4 x 46 + k*4 only: a 76x60 picture (width x height), a
    --resize factor or a pyramid's scale is run at the nearest size no larger that it takes (74x58), never
    refused for a size the tool chose; boxes go back with the factor used per axis."""
    from PIL import Image

    picture = Image.fromarray((np.random.default_rng(2).random((60, 76, 3)) * 255).astype(np.uint8))
    picture.save(tmp_path / "noise.png")
    converted = tmp_path / "mnv3.onnx"
    fc2conv_onnx.convert_file(EXPORTED / "tf_keras_mobilenetv3_top.onnx", converted, pooling="window")
    drawn = fc2conv_onnx.heatmap(converted, tmp_path / "noise.png", tmp_path / "mnv3.png")
    assert "cells are not local: ReduceMean" in drawn.to_text() and drawn.to_dict()["local"] is False
    branches = tmp_path / "branches.onnx"
    fc2conv_onnx.convert_file(EXPORTED / "tf_keras_same_padding_branches.onnx", branches, pooling="window")
    geometry = fc2conv_onnx.read_geometry(branches)
    (stride,) = {g.stride for g in geometry.values()}
    drawn = fc2conv_onnx.heatmap(branches, tmp_path / "noise.png", tmp_path / "branches.png")
    assert drawn.grid == tuple((s - w) // t + 1 for s, w, t in zip((58, 74), next(iter(geometry.values())).window,
                                                                    stride))
    fc2conv_onnx.heatmap(branches, tmp_path / "noise.png", tmp_path / "resized.png", resize=0.64)
    fc2conv_onnx.heatmap(branches, tmp_path / "noise.png", tmp_path / "pyramid.png", scales=[1, 0.8])
    # detect on the 76x60 picture finds what it finds on the picture resized to 74x58, in the picture's pixels.
    picture.resize((74, 58), Image.BOX).save(tmp_path / "taken.png")
    settings = dict(threshold=-1e9, iou=1.0)
    found = fc2conv_onnx.detect(branches, [tmp_path / "noise.png"], **settings).records
    taken = fc2conv_onnx.detect(branches, [tmp_path / "taken.png"], **settings).records
    assert len(found) == len(taken) > 0
    factor = np.array([76 / 74, 60 / 58] * 2)
    by_cell = {r.cell: r for r in taken}
    for record in found:
        match = by_cell[record.cell]
        assert record.score == pytest.approx(match.score, abs=1e-5)
        np.testing.assert_allclose(record.box, np.minimum(np.array(match.box) * factor, [76, 60, 76, 60]),
                                   rtol=1e-5, atol=1e-3)
    pyramid = fc2conv_onnx.detect(branches, [tmp_path / "noise.png"], min_size=46, max_size=60, **settings)
    assert pyramid.records and len(pyramid.scales[str(tmp_path / "noise.png")]) >= 1


def test_none_on_a_flattening_head_is_refused_not_quietly_window_sized():
    """`--pooling none` asks for one cell per feature location; a flattening head has no pool to remove, so
    its map would have one cell per training-size window instead: refused (exit 4), with the head named.
    `window` means what a flattening head already does, and converts."""
    path = FIXTURES / "dress_detector.onnx"
    with pytest.raises(NothingToConvertError, match=r"--pooling none cannot apply to the head -> score: it has "
                                                    r"no global pool to remove .* whole 4x2 feature map"):
        fc2conv_onnx.convert(path, pooling="none")
    assert fc2conv_onnx.convert_with_report(path, pooling="window").report.geometry[0].window == (128, 64)


def test_geometry_follows_channel_slices_and_squeeze_and_excitation_gates():
    """GhostNet's channel Slice is per location; a gate after a global pool (Squeeze, MatMul, Unsqueeze) has no
    spatial extent, and only makes the cells not local: the geometry is known, and the run agrees with it."""
    model = builders.ghost_se_trunk()
    conversion = fc2conv_onnx.convert_with_report(model, pooling="window")
    geometry = conversion.report.geometry[0]
    assert geometry.stride == (2, 2) and geometry.local is False and "GlobalAveragePool" in geometry.not_local
    assert any(c.check == "geometry" and c.passed for c in conversion.report.checks)
    source = conversion.report.plan.heads[0].source
    assert source == next(n.output[0] for n in model.graph.node if n.op_type == "Mul")  # after the gate
    assert_equivalent(model, conversion.model, source=source, sizes=[(1, 3, 23, 29)])


@pytest.mark.parametrize("mode", ("window", "none"))
@pytest.mark.parametrize("opset", (13, 18))
def test_a_layer_norm_spelled_out_over_the_last_axis_reduces_over_the_channels_of_the_map(opset, mode):
    """ReduceMean(axes=[-1]) over [N, C] must become a reduction over axis 1 of [N, C, h, w] (attribute before
    opset 18, input from 18); left at -1 it would average over the width, and the check below would fail."""
    model = builders.spelled_out_layer_norm_head(opset)
    conversion = fc2conv_onnx.convert_with_report(model, pooling=mode)
    head, = conversion.report.plan.heads
    assert [s.becomes for s in head.steps if s.op == "ReduceMean"] == ["ReduceMean over axis 1"] * 2
    prove(model, conversion.model, head.source, mode)


def test_a_flattening_of_a_channels_last_map_behind_a_slice_is_refused_before_anything_runs(monkeypatch):
    """A Slice of the channels between the Transpose to channels last and the Flatten: the flattening used to
    be read as channels first, and validation then failed in onnxruntime at the larger size. Now it is
    refused up front with the ops named; with only elementwise ops between, it converts."""
    from builders import ModelBuilder

    def model(between: str) -> onnx.ModelProto:
        b = ModelBuilder(opset=13, seed=7)
        x = b.node("Transpose", [b.input("image", [1, 16, 16, 3])], perm=[0, 3, 1, 2])
        x = b.node("Transpose", [b.node("Relu", [b.conv(x, 3, 8, 2, stride=2)])], perm=[0, 2, 3, 1])
        ints = lambda name, values: b.const(b.fresh(name), np.array(values, np.int64))  # noqa: E731
        x = b.node("Slice", [x, ints("start", [0]), ints("end", [4]), ints("axis", [3])]) if between == "Slice" \
            else b.node(between, [x])
        features = 8 * 8 * (4 if between == "Slice" else 8)
        b.gemm(b.node("Flatten", [x]), features, 3, output=b.output("logits", [1, 3]), bias_shape=(3,))
        return b.build(f"nhwc_{between}_flatten")

    converted = fc2conv_onnx.convert(model("Relu"))
    assert_equivalent(model("Relu"), converted, source="conv_5", sizes=[(1, 21, 23, 3)], channels_last=True)
    monkeypatch.setattr(runtime.Session, "__init__", lambda *a, **k: pytest.fail("a session was made"))
    with pytest.raises(NothingToConvertError, match=r"Flatten 'Flatten_\d+' flattens a channels-last map \(made by "
                                                    r"Transpose 'Transpose_\d+', then Slice 'Slice_\d+'\)"):
        fc2conv_onnx.convert(model("Slice"))


@pytest.mark.parametrize("mode", ["window", "none"])
def test_a_pool_that_feeds_the_outputs_alone_becomes_a_map_when_one_is_asked_for(mode):
    """SqueezeNet's classifier: a 1x1 Conv gives the class scores per location, then a global pool and
    Flatten. There is no layer to convert, and kept it leaves nothing to do (exit 4, saying so and naming
    the modes that make a map); with --pooling window or none the pool becomes the map asked for."""
    original = builders.no_fc_head()
    with pytest.raises(NothingToConvertError, match=r"GlobalAveragePool '\w+' pools the last feature map into the "
                                                    r"outputs with no layer after it.*--pooling window"):
        fc2conv_onnx.convert(original)
    conversion = fc2conv_onnx.convert_with_report(original, pooling=mode)
    head, = conversion.report.plan.heads
    assert head.pool is not None and head.pool.mode.name == mode and head.first is None
    prove(original, conversion.model, head.source, mode)
    value = next(iter(run(conversion.model, random_input(original, larger(input_shape(original)))).values()))
    assert value.shape[2] > 1 and value.shape[3] > 1, value.shape


def test_many_trunk_rewrites_are_counted_in_the_text_report_and_listed_in_json():
    """ShuffleNetV2 has 32 rewritten Reshapes: the text shows the first 4 and counts the rest; 5 are shown."""
    from dataclasses import replace
    report = fc2conv_onnx.inspect(EXPORTED / "torch_shuffle_units_ts.onnx")
    notes = tuple(f"Reshape 'r{i}' ..." for i in range(32))
    text = replace(report.plan, normalized=notes).describe()
    assert [line for line in text.splitlines() if line.startswith("normalized:")] == \
        [f"normalized: {n}" for n in notes[:4]] + ["normalized: 28 more like these (--json lists every one)"]
    five = replace(report.plan, normalized=notes[:5]).describe()
    assert sum(line.startswith("normalized: Reshape") for line in five.splitlines()) == 5
    assert replace(report, plan=replace(report.plan, normalized=notes)).to_dict()["normalized"] == list(notes)

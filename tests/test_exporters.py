"""Models made by real exporters (fixtures/exported/, see its MANIFEST.json: PyTorch, tf2onnx, onnxruntime
quantization, Caffe2's ONNX frontend) and older Caffe2-era zoo spellings built by fixtures/builders.py.

Each one is converted (the package's own validator runs) and then proven again by tests/equivalence.py,
which shares no code with the package: at the training size, and at a larger size where every output
location must equal the original head on that window of the original trunk's feature map.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

import fc2conv_onnx
from fc2conv_onnx import InputError, ValidationError
from fc2conv_onnx.model.layout import CHANNELS_LAST
from fc2conv_onnx.rewrite import rewrite

from conftest import FIXTURES
from equivalence import assert_equivalent, input_shape, trunk_that_runs_at_any_size

EXPORTED = FIXTURES / "exported"
EVERY_FILE = json.loads((EXPORTED / "MANIFEST.json").read_text())
#: The files this module converts with the default options; the others are read by tests/test_grammar.py.
MANIFEST = {name: entry for name, entry in EVERY_FILE.items() if entry.get("suite", "exporters") == "exporters"}
#: Built by fixtures/builders.py in the older zoo spellings the Caffe2 frontend no longer emits.
CAFFE2_ERA = ("caffe2_alexnet_opset8_constants", "caffe2_alexnet_opset9_inputs")


def load(stem: str) -> onnx.ModelProto:
    path = EXPORTED / f"{stem}.onnx"
    return onnx.load(str(path if path.exists() else FIXTURES / f"{stem}.onnx"))


def is_channels_last(stem: str) -> bool:
    """The TensorFlow/Keras fixtures (tf2onnx, then maybe quantized) take NHWC images."""
    return stem.startswith("tf_")


def larger(shape, channels_last: bool):
    """A few pixels more than the training size on each spatial axis (different amounts per axis)."""
    spatial = range(1, len(shape) - 1) if channels_last else range(2, len(shape))
    grown = list(shape)
    for extra, axis in zip((11, 19, 7), spatial):
        grown[axis] += extra
    grown[0] = 1
    return tuple(grown)


def tolerances(model: onnx.ModelProto) -> dict:
    dtype = model.graph.input[0].type.tensor_type.elem_type
    return dict(rtol=1e-2, atol=1e-3) if dtype == onnx.TensorProto.FLOAT16 else {}


@pytest.mark.parametrize("stem", sorted(s[:-5] for s in MANIFEST) + list(CAFFE2_ERA))
def test_exported_model_converts_and_is_equivalent(stem):
    original = load(stem)
    conversion = fc2conv_onnx.convert_with_report(original)
    assert [c.check for c in conversion.report.checks if not c.before].count("windows") == len(original.graph.output)
    assert all(c.passed for c in conversion.report.checks)
    head = conversion.report.plan.heads[0]
    channels_last = is_channels_last(stem)
    reference = trunk_that_runs_at_any_size(original) if channels_last else original
    assert_equivalent(reference, conversion.model, source=head.source, channels_last=channels_last,
                      sizes=[larger(input_shape(original), channels_last)], **tolerances(original))
    ops = {node.op_type for node in conversion.model.graph.node}
    assert not ops & {"Gemm", "MatMul", "Flatten"}, ops


def test_the_manifest_names_the_exporter_and_version_of_every_file():
    files = {path.name for path in EXPORTED.glob("*.onnx")}
    assert files == set(EVERY_FILE)
    for name, entry in EVERY_FILE.items():
        model = onnx.load(str(EXPORTED / name))
        assert entry["opset"] == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        tools = ("torch 2.", "tf2onnx 1.", "onnxruntime 1.", "Caffe2 of torch 1.", "paddle2onnx", "jax2onnx 0.",
                 "keras 3.")
        assert any(tool in entry["made_by"] for tool in tools), entry
        assert entry["exercises"]
    total = sum((EXPORTED / name).stat().st_size for name in files)
    # 5 MiB: 0.6 of it is the one model that amplifies rounding enough to test the noise measure (timm fbnetv3_b)
    assert total < 5 << 20, f"exported fixtures take {total} bytes; keep them small"


def test_skipping_the_nhwc_weight_permutation_is_caught(monkeypatch, tmp_path):
    """Keras lists the features in (H, W, C) order: laying the weights out as if they were (C, H, W)
    must fail validation, in the package and in the independent check."""
    original = load("tf_keras_nhwc_opset13")
    honest = rewrite.first_layer_kernel

    def without_permutation(weight, flattening):
        assert flattening.order == CHANNELS_LAST
        return weight.reshape((weight.shape[0],) + flattening.source_shape)

    monkeypatch.setattr(rewrite, "first_layer_kernel", without_permutation)
    out = tmp_path / "wrong.onnx"
    with pytest.raises(ValidationError, match="training size"):
        fc2conv_onnx.convert_file(EXPORTED / "tf_keras_nhwc_opset13.onnx", out)
    assert not out.exists()
    wrong = fc2conv_onnx.convert(original, validate=False)
    with pytest.raises(AssertionError):
        assert_equivalent(original, wrong, source=fc2conv_onnx.inspect(original).plan.heads[0].source,
                          channels_last=True)
    monkeypatch.setattr(rewrite, "first_layer_kernel", honest)
    assert_equivalent(original, fc2conv_onnx.convert(original), channels_last=True,
                      source=fc2conv_onnx.inspect(original).plan.heads[0].source)


def dims(value: onnx.ValueInfoProto):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_nhwc_models_keep_nhwc_input_and_give_nhwc_maps_unless_asked():
    original = load("tf_keras_nhwc_opset13")
    nhwc = fc2conv_onnx.convert(original)
    assert dims(nhwc.graph.input[0]) == ["N", "H", "W", 3]
    assert dims(nhwc.graph.output[0])[-1] == 5
    nchw = fc2conv_onnx.convert(original, output_layout="channels_first")
    assert dims(nchw.graph.output[0])[1] == 5
    from equivalence import run
    feeds = {"image": np.random.default_rng(3).standard_normal((1, 42, 38, 3)).astype(np.float32)}
    a, b = run(nhwc, feeds)["Identity:0"], run(nchw, feeds)["Identity:0"]
    assert a.shape == (1, 3, 4, 5) and b.shape == (1, 5, 3, 4)
    np.testing.assert_allclose(np.moveaxis(a, -1, 1), b, rtol=1e-5, atol=1e-6)
    assert "(as [N, *spatial, K])" in fc2conv_onnx.inspect(original).plan.describe()


def test_a_single_channel_reshape_from_tf2onnx_becomes_a_transpose():
    report = fc2conv_onnx.convert_with_report(load("tf_keras_valid_padding_opset17")).report
    assert any("became the Transpose it stands for" in note for note in report.plan.normalized)
    geometry = report.geometry[0]
    assert geometry.layout == CHANNELS_LAST and geometry.window == (28, 20) and not geometry.padded


@pytest.mark.parametrize("stem, per_channel", [("torch_alexnet_qdq_per_tensor", False),
                                               ("torch_alexnet_qdq_per_channel", True),
                                               ("tf_keras_qdq_per_channel", True)])
def test_qdq_models_stay_quantized(stem, per_channel):
    converted = fc2conv_onnx.convert(load(stem))
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in converted.graph.initializer}
    producers = {out: node for node in converted.graph.node for out in node.output}
    convs = [n for n in converted.graph.node if n.op_type == "Conv" and "/conv" in n.name]
    assert convs
    for conv in convs:
        dequantize = producers[conv.input[1]]
        assert dequantize.op_type == "DequantizeLinear"
        values, scale = initializers[dequantize.input[0]], initializers[dequantize.input[1]]
        assert values.dtype == np.int8 and values.ndim == 4
        axis = {a.name: a.i for a in dequantize.attribute}.get("axis")
        if per_channel:
            assert axis == 0 and scale.shape == (values.shape[0],)
        else:
            assert scale.size == 1
    # The activations between the layers are still quantized: a Q/DQ pair feeds each head Conv.
    assert all(producers[c.input[0]].op_type == "DequantizeLinear" for c in convs)


def test_half_precision_stays_half_precision():
    converted = fc2conv_onnx.convert(load("torch_ts_fp16"))
    floats = [i for i in converted.graph.initializer
              if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert floats and all(i.data_type == onnx.TensorProto.FLOAT16 for i in floats)
    assert converted.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_computed_reshape_shapes_are_evaluated_at_the_training_size():
    """x.view(x.size(0), -1) reads the batch off its own input: the target becomes the constant [0, -1], which
    says the same for every input (and the plan says so); other computed shapes are evaluated."""
    plan = fc2conv_onnx.inspect(load("torch_ts_view_opset13")).plan
    assert "(Shape -> Gather -> Unsqueeze -> Concat): its target is now the constant [0, -1]" in plan.normalized[0]
    plan = fc2conv_onnx.inspect(load("tf_keras_nhwc_opset13")).plan
    assert "Shape -> Gather -> Cast -> Slice -> Concat -> Cast" in plan.heads[0].flattening.note


def test_a_computed_shape_that_is_not_a_flatten_is_declined():
    """view(x.size(1), -1): computed from the trunk's shape, but it does not keep the batch apart."""
    from builders import ModelBuilder, trunk
    b = ModelBuilder(opset=13, seed=5)
    x = trunk(b, b.input("image", ["N", 3, 16, 12]), [3, 4, 8], rank=2)
    channels = b.node("Unsqueeze", [b.node("Gather", [b.node("Shape", [x]), b.const("one", np.array(1))]),
                                    b.const("axes", np.array([0]))])
    shape = b.node("Concat", [channels, b.const("rest", np.array([-1]))], axis=0)
    b.gemm(b.node("Reshape", [x, shape]), 2 * 4 * 3 * 4, 5, output=b.output("logits", [8, 5]))
    plan = fc2conv_onnx.inspect(b.build("channels_view")).plan
    assert not plan.heads
    assert "gives [8, -1] at batch 2" in plan.skipped[0].reason


def test_shape_arithmetic_is_run_as_onnx_defines_it():
    """A computed flatten is evaluated by onnx's reference evaluator, so any standard op in the arithmetic is
    read (Max and ReduceProd over a Slice of the shape: view(x.size(0), max(C*H*W, 1))), and the result is
    proven as always."""
    from builders import ModelBuilder, trunk

    def built():
        b = ModelBuilder(opset=13, seed=5)
        x = trunk(b, b.input("image", ["N", 3, 16, 12]), [3, 4, 8], rank=2)
        shape = b.node("Shape", [x])
        batch = b.node("Unsqueeze", [b.node("Gather", [shape, b.const("zero", np.array(0))]),
                                     b.const("axes", np.array([0]))])
        ends = (b.const("s", np.array([1])), b.const("e", np.array([4])))
        rest = b.node("ReduceProd", [b.node("Slice", [shape, *ends])],
                      keepdims=1)
        features = b.node("Max", [rest, b.const("one", np.array([1]))])
        b.gemm(b.node("Reshape", [x, b.node("Concat", [batch, features], axis=0)]), 8 * 4 * 3, 5,
               output=b.output("logits", ["N", 5]))
        return b.build("computed_max")

    model = built()
    plan = fc2conv_onnx.inspect(model).plan
    assert len(plan.heads) == 1 and "Slice -> ReduceProd -> Max" in plan.heads[0].flattening.note
    assert_equivalent(model, fc2conv_onnx.convert(model), sizes=[(1, 3, 16 + 8, 12 + 8)])


@pytest.mark.parametrize("stem", ["caffe2_alexnet_opset9_inputs", "caffe2_alexnet_like", "caffe2_batchnorm_head"])
def test_initializers_listed_as_inputs_are_not_image_inputs(stem):
    original = load(stem)
    assert len(original.graph.input) > 1  # the weights are listed as inputs too
    converted = fc2conv_onnx.convert(original)
    assert [i.name for i in converted.graph.input] == ["data"]
    assert dims(converted.graph.input[0]) == ["N", 3, "H", "W"]
    assert converted.ir_version >= 4


def test_adaptive_avg_pool_exported_as_identity_pool_keeps_sliding():
    """torch exports AdaptiveAvgPool2d((4, 4)) on a 4x4 map as AveragePool kernel 1 stride 1: the identity
    at every size, so the converted model slides its window instead of squeezing larger maps to 4x4."""
    for stem in ("torch_ts_alexnet_opset17", "torch_alexnet_dynamo"):
        converted = fc2conv_onnx.convert(load(stem))
        pools = [n for n in converted.graph.node if n.op_type == "AveragePool"]
        assert len(pools) == 1
        attrs = {a.name: list(a.ints) for a in pools[0].attribute if a.ints}
        assert attrs["kernel_shape"] == [1, 1] and attrs.get("strides", [1, 1]) == [1, 1]


def model_with(nodes, opset=13, ir_version=8, functions=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("my.custom", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=ir_version, functions=list(functions))
    return model


@pytest.mark.parametrize("model, words", [
    (model_with([helper.make_node("Magic", ["x"], ["y"], name="m", domain="my.custom")]),
     "node 'm' is op 'Magic' of the custom domain 'my.custom'"),
    (model_with([helper.make_node("Relu", ["x"], ["y"], name="r")], opset=6), "opset 6, older than 7"),
    (model_with([helper.make_node("Relu", ["x"], ["y"], name="r")], opset=999), "opset 999, newer than"),
    (model_with([helper.make_node("Relu", ["x"], ["y"], name="r")], ir_version=999), "IR version 999"),
    (model_with([helper.make_node("Fn", ["x"], ["y"], name="f", domain="my.custom")],
                functions=[helper.make_function("my.custom", "Fn", ["a"], ["b"],
                                                [helper.make_node("Relu", ["a"], ["b"])],
                                                [helper.make_opsetid("", 13)])]),
     "calls the model-local function 'my.custom::Fn'"),
])
def test_models_the_tool_does_not_understand_are_refused(model, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        fc2conv_onnx.convert(model)


def test_an_unused_opset_import_is_not_a_reason_to_refuse():
    """tf2onnx imports ai.onnx.ml in every file; the tf fixtures convert (above), and so does this."""
    model = load("tf_keras_nhwc_opset13")
    assert any(o.domain == "ai.onnx.ml" for o in model.opset_import)
    fc2conv_onnx.inspect(model)


def quantized_gemm_classifier(alpha: float = 1.0, bias_from_constant_of_shape: bool = False) -> onnx.ModelProto:
    """A Gemm whose weight comes through DequantizeLinear (per output feature), optionally scaled by alpha,
    and whose bias is ConstantOfShape([5]) filled with 0.25 (as Caffe2-era files spell constants)."""
    from builders import ModelBuilder, trunk
    b = ModelBuilder(opset=13, seed=9)
    x = b.node("Flatten", [trunk(b, b.input("image", [1, 3, 16, 12]), [3, 4, 8], rank=2)])
    values = b.const("w_q", np.random.default_rng(9).integers(-100, 100, (5, 96)).astype(np.int8))
    weight = b.node("DequantizeLinear", [values, b.const("w_scale", np.full(5, 0.01, np.float32)),
                                         b.const("w_zero", np.zeros(5, np.int8))], axis=0)
    fill = helper.make_tensor("fill", onnx.TensorProto.FLOAT, [1], [0.25])
    bias = b.node("ConstantOfShape", [b.const("bias_shape", np.array([5], np.int64))], value=fill) \
        if bias_from_constant_of_shape else b.weight("bias", (5,), fan_in=1)
    b.node("Gemm", [x, weight, bias], b.output("logits", [1, 5]), transB=1, alpha=alpha)
    return b.build("quantized_gemm")


def test_constant_of_shape_bias_and_a_per_channel_quantized_weight_convert():
    original = quantized_gemm_classifier(bias_from_constant_of_shape=True)
    converted = fc2conv_onnx.convert(original)
    assert_equivalent(original, converted, sizes=[(1, 3, 27, 31)])
    assert "int8 weight per-channel" in fc2conv_onnx.inspect(original).plan.describe()


def test_a_quantized_weight_that_cannot_stay_exact_is_reported_and_skipped():
    plan = fc2conv_onnx.inspect(quantized_gemm_classifier(alpha=0.5)).plan
    assert not plan.heads
    assert "scales a quantized weight by alpha=0.5" in plan.skipped[0].reason

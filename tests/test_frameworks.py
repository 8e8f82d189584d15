"""Models from the exporters beyond PyTorch and tf2onnx-from-Keras (fixtures/exported/, made by
fixtures/export_paddle.py, export_jax.py, export_keras.py and export_keras_torch.py): paddle2onnx, jax2onnx,
Keras 3's own export on the TensorFlow and torch backends, TFLite files through tf2onnx (float32 and full int8),
and PaddleOCR's trained text-direction classifier.

Each converts in every --pooling mode that applies to its head and is proven again by tests/equivalence.py,
which shares no code with the package; the modes that cannot apply are refused with the reason.
"""
from __future__ import annotations

from typing import Optional, Sequence

import onnx
import pytest

import fc2conv_onnx
from fc2conv_onnx import NothingToConvertError

from conftest import FIXTURES
from equivalence import assert_equivalent, assert_one_prediction, input_shape, with_channels_first_view

EXPORTED = FIXTURES / "exported"
MODES = ("keep", "window", "none")
POOLED, FLATTENED = MODES, ("keep", "window")

#: stem -> (the modes it converts in, its training size if the export leaves it dynamic, channels last).
FRAMEWORKS = {
    "paddle_pooled_dynamic_batch": (POOLED, None, False),
    "paddle_pooled_fixed_batch": (POOLED, None, False),
    "paddle_flatten_dynamic_batch": (FLATTENED, None, False),
    "paddleocr_ch_ppocr_mobile_v2_cls": (POOLED, (48, 192), False),
    "jax_nhwc_residual": (POOLED, None, True),
    "jax_conv1x1_head": (("window", "none"), None, True),
    "jax_nhwc_flatten": (FLATTENED, None, True),
    "jax_layernorm_head": (POOLED, None, True),
    "jax_convnext_block": (POOLED, None, True),
    "jax_residual_flatten": (FLATTENED, None, True),
    "keras3_mobilenet_top": (POOLED, None, True),
    "keras3_torch_resnetv2": (POOLED, None, True),
    "keras3_torch_resnet_stem": (POOLED, None, True),
    "keras3_torch_mobilenet_top": (POOLED, None, True),
    "tflite_mobilenet_top_f32": (POOLED, None, True),
    "tflite_mobilenet_top_int8": (POOLED, None, True),
}
CASES = [(stem, mode) for stem, (modes, _, _) in FRAMEWORKS.items() for mode in modes]
REFUSED = [(stem, mode) for stem, (modes, _, _) in FRAMEWORKS.items() for mode in MODES if mode not in modes]


def load(stem: str) -> onnx.ModelProto:
    return onnx.load(str(EXPORTED / f"{stem}.onnx"))


def at_training_size(model: onnx.ModelProto, size: Optional[Sequence[int]]) -> onnx.ModelProto:
    """The reference with its free spatial dims set to the training size and a symbolic batch (by hand, not by
    the package)."""
    if size is None:
        return model
    fixed = onnx.ModelProto.FromString(model.SerializeToString())
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "N"  # onnxruntime runs paddle2onnx's -1 as a free dim
    for dim, value in zip(dims[2:], size):
        dim.Clear()
        dim.dim_value = value
    return fixed


def larger(shape: Sequence[int], channels_last: bool) -> tuple:
    grown = list(shape)
    for extra, axis in zip((13, 21), range(1, len(shape) - 1) if channels_last else range(2, len(shape))):
        grown[axis] += extra
    return tuple(grown)


def reference_and_source(stem: str, conversion) -> tuple:
    """The original to compare with, and the tensor of it that the head starts from."""
    original = at_training_size(load(stem), FRAMEWORKS[stem][1])
    head, = conversion.report.plan.heads
    names = {name for node in original.graph.node for name in node.output}
    if head.source in names:
        return original, head.source
    reader = head.pool.node if head.pool is not None else head.flattening.node  # a join of NHWC maps it reads
    return with_channels_first_view(original, reader), "reference_nchw"


def prove_conversion(stem: str, mode: str, conversion) -> None:
    """The independent check of one conversion (benchmarks/frameworks.py runs it too): at the training size, and
    by crop-and-forward (or, for a kept pool, the one prediction) at a larger size."""
    channels_last = FRAMEWORKS[stem][2]
    reference, source = reference_and_source(stem, conversion)
    training = input_shape(reference)
    pool = conversion.report.plan.heads[0].pool
    if pool is not None and mode == "keep":
        assert_equivalent(reference, conversion.model, source=source, channels_last=channels_last)
        assert_one_prediction(reference, conversion.model, source=source, size=larger(training, channels_last),
                              channels_last=channels_last)
    else:
        window = (1, 1) if mode == "none" else None
        assert_equivalent(reference, conversion.model, source=source, channels_last=channels_last, window=window,
                          sizes=[larger(training, channels_last)])


@pytest.mark.parametrize("stem, mode", CASES)
def test_each_framework_converts_in_every_mode_that_applies(stem, mode):
    size = FRAMEWORKS[stem][1]
    conversion = fc2conv_onnx.convert_with_report(EXPORTED / f"{stem}.onnx", pooling=mode,
                                                  input_size=None if size is None else "x".join(map(str, size)))
    prove_conversion(stem, mode, conversion)
    ops = {node.op_type for node in conversion.model.graph.node}
    assert not ops & {"Gemm", "Flatten"}, ops  # (a MatMul may stay in the trunk: a Linear at each location)
    linears = {name for head in conversion.report.plan.heads for layer in head.linears for name in layer.nodes}
    assert not linears & {node.name for node in conversion.model.graph.node}  # each linear layer rewritten


@pytest.mark.parametrize("stem, mode", REFUSED)
def test_a_mode_that_does_not_apply_is_refused_with_the_reason(stem, mode):
    with pytest.raises(NothingToConvertError, match="no global pool to remove|no layer after it") as refused:
        fc2conv_onnx.convert(EXPORTED / f"{stem}.onnx", pooling=mode)
    assert "any input size" not in str(refused.value)  # the jax2onnx model is fixed at 16x16


def test_the_paddle_batch_read_off_the_pooled_map_becomes_a_constant_that_keeps_the_map():
    """paddle2onnx's Reshape(x, Concat(Slice(Shape(x)), [-1])) is read as [0, -1]: on a larger map the head's
    flattening goes, and the output is a map, not the map flattened into one long vector."""
    plan = fc2conv_onnx.inspect(EXPORTED / "paddle_pooled_dynamic_batch.onnx", pooling="window").plan
    head, = plan.heads
    assert (head.steps[0].op, head.steps[0].action) == ("Reshape", "remove"), head.steps[0]


def test_a_negative_input_dim_is_read_as_a_free_one_and_the_caller_model_is_untouched():
    original = load("paddleocr_ch_ppocr_mobile_v2_cls")
    before = original.SerializeToString()
    assert original.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1
    converted = fc2conv_onnx.convert(original, input_size="48x192", pooling="window")
    assert original.SerializeToString() == before
    batch = converted.graph.input[0].type.tensor_type.shape.dim[0]
    assert not batch.HasField("dim_value") and batch.dim_param


def test_a_reduction_that_is_not_a_global_pool_is_refused_naming_it_and_its_axes():
    """ReduceMean over axes [1, 2] of a channels-first map (channels and rows) is no global pool; the reason says
    which op, which axes, and what would have made it one (it was: 'not a flattened spatial tensor')."""
    from builders import ModelBuilder, trunk

    b = ModelBuilder(opset=13, seed=3)
    x = trunk(b, b.input("image", ["N", 3, 16, 16]), [3, 4, 8], rank=2)
    reduced = b.node("ReduceMean", [x], axes=[1, 2], keepdims=0)
    b.gemm(reduced, 4, 3, bias_shape=(3,), output=b.output("scores", ["N", 3]))
    with pytest.raises(NothingToConvertError, match=r"comes from ReduceMean '.*' over axes \[1, 2\], which is not a "
                                                    r"global pool of a feature map"):
        fc2conv_onnx.convert(b.build("reduce_channels_and_rows"))


def test_a_pool_that_ends_the_graph_keeps_its_output_name_in_every_mode():
    """jax2onnx ends a model with the pool itself (Conv 1x1 -> Transpose -> Relu -> ReduceMean as the output):
    the replacement writes the same output name (it was an IndexError, exit 1)."""
    for mode in ("window", "none"):
        converted = fc2conv_onnx.convert(EXPORTED / "jax_conv1x1_head.onnx", pooling=mode)
        assert [o.name for o in converted.graph.output] == [o.name for o in load("jax_conv1x1_head").graph.output]


def test_the_channels_first_view_takes_names_no_tensor_has(tmp_path):
    """The view the tool adds before a pool of a channels-last join is named after the joined map; a model
    that already has a tensor of that name keeps it, and the conversion is still proven."""
    original = load("jax_nhwc_residual")
    pool = next(n for n in original.graph.node if n.op_type in ("ReduceMean", "GlobalAveragePool"))
    taken = f"{pool.input[0]}/channels_first"
    victim = next(n for n in original.graph.node if n.op_type == "Conv")  # an earlier tensor takes the name
    old_name = victim.output[0]
    for node in original.graph.node:
        node.input[:] = [taken if name == old_name else name for name in node.input]
    victim.output[0] = taken
    path = tmp_path / "renamed.onnx"
    onnx.save(original, str(path))
    conversion = fc2conv_onnx.convert_with_report(path, pooling="window")
    names = [name for node in conversion.model.graph.node for name in node.output]
    assert len(names) == len(set(names)) and taken in names
    shape = input_shape(original)
    reference, source = with_channels_first_view(original, pool.name), "reference_nchw"
    assert_equivalent(reference, conversion.model, source=source, channels_last=True, sizes=[larger(shape, True)])

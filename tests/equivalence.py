"""The one equivalence check the tests use, independent of the package's own validator.

It cuts the original model with `onnx.utils.Extractor` (not with fc2conv_onnx code), runs everything in
onnxruntime with optimizations off, and compares with numpy:
- at the training size, every output of the converted model equals the original's;
- at each larger size, output location p equals the original head run on the feature-map window at p.
"""
from __future__ import annotations

import itertools
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

RTOL, ATOL = 1e-4, 1e-5


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    s = session(model)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, feeds)))


def input_shape(model: onnx.ModelProto) -> Tuple[int, ...]:
    """The first input's training shape; a symbolic batch is taken as 2 (not 0: an empty batch proves nothing)."""
    return tuple(d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim)


def random_input(model: onnx.ModelProto, shape: Sequence[int], seed: int = 0) -> Dict[str, np.ndarray]:
    """The image (the first input) at `shape`, and any other input that holds per-channel values (tf2onnx
    leaves Keras Normalization's mean and variance as inputs, of shape [1, 1, 1, C]) at its own shape, in
    [0.5, 1.5) so that a variance stays positive."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for index, value in enumerate(i for i in model.graph.input if i.name not in initializers):
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if index == 0:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
            assert sum(d != 1 for d in dims) <= 1 and all(dims), f"input {value.name} {dims} is not a parameter"
            feeds[value.name] = (rng.random(dims) + 0.5).astype(dtype)
    return feeds


def inputs_of(model: onnx.ModelProto) -> list:
    """The graph inputs a caller feeds: the image first, then any per-channel parameter inputs."""
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def identity_reshapes_dropped(model: onnx.ModelProto) -> onnx.ModelProto:
    """A reference that runs at larger sizes: tf2onnx writes a Transpose that only moves a size-1 axis as a
    Reshape to literal training sizes ([-1, 1, 12, 10]), the identity at the training size; here such a
    Reshape (same shape in and out, batch aside) becomes an Identity."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    for node in (n for n in reference.graph.node if n.op_type == "Reshape"):
        before, after = shapes.get(node.input[0]), shapes.get(node.output[0])
        if before and after and before[1:] == after[1:]:
            node.op_type = "Identity"
            del node.input[1:]
            del node.attribute[:]
    return reference


def cut(model: onnx.ModelProto, inputs: Sequence[str], outputs: Sequence[str], free_sizes: bool,
        channels_last: bool = False) -> onnx.ModelProto:
    part = onnx.utils.Extractor(model).extract_model(list(inputs), list(outputs))
    if free_sizes:  # a trunk that runs at any size: symbolic batch/spatial input dims, no stale shapes
        del part.graph.value_info[:]
        dims = part.graph.input[0].type.tensor_type.shape.dim
        channel_axis = len(dims) - 1 if channels_last else 1
        for axis, dim in enumerate(dims):
            if axis != channel_axis:
                dim.dim_param = f"d{axis}"
        for out in part.graph.output:
            out.type.tensor_type.ClearField("shape")
    return part


def assert_equivalent(original: onnx.ModelProto, converted: onnx.ModelProto, *, source: str = "features",
                      sizes: Iterable[Sequence[int]] = (), rtol: float = RTOL, atol: float = ATOL,
                      outputs: Optional[Sequence[str]] = None, channels_last: bool = False,
                      window: Optional[Sequence[int]] = None, dilation: Optional[Sequence[int]] = None,
                      trunk: Optional[onnx.ModelProto] = None) -> None:
    """Training size always; each of `sizes` (full input shapes) by crop-and-forward at every location.
    `channels_last`: the input is [N, *spatial, C] and the converted outputs [N, *spatial, K] (tf2onnx);
    the source feature map is channels first either way. `window`: the feature window one output cell
    reads when it is not the training feature size (a removed global pool: one location); the head is
    then run on crops of that size, and the training-size outputs, being maps, are compared the same way.
    `dilation`: a finer output stride (`--stride`): the converted trunk is that many times denser; every
    dilation-th cell of it must be the original feature map, and each cell the original head on a window of
    it taken every dilation-th cell (at the training size, the first cell is the original output).
    `trunk`: a model whose output `source` is the feature map at `sizes`, when the original's trunk cannot
    run there (it bakes the training size); default: the original cut at `source`."""
    outputs = list(outputs or [o.name for o in original.graph.output])
    inferred = onnx.shape_inference.infer_shapes(original)
    step = tuple(dilation or ())
    own_trunk = cut(inferred, inputs_of(original), [source], free_sizes=True, channels_last=channels_last)
    trunk = trunk or own_trunk
    if window is None:
        feeds = random_input(original, input_shape(original))
        expected, actual = run(original, feeds), run(converted, feeds)
        if step:  # the first cell of the finer map
            actual = {k: (v[(slice(None),) + (0,) * (v.ndim - 2)] if channels_last else
                          v[(slice(None), slice(None)) + (0,) * (v.ndim - 2)]) for k, v in actual.items()}
        for name in outputs:
            assert actual[name].size == expected[name].size, (name, actual[name].shape, expected[name].shape)
            np.testing.assert_allclose(actual[name].reshape(expected[name].shape), expected[name], rtol=rtol,
                                       atol=atol, err_msg=f"output {name} at the training size")
        # The window is the training-size feature map, as a run of the original trunk gives it (shape
        # inference may not follow an exporter's shape arithmetic there).
        window = tuple(run(own_trunk, feeds)[source].shape[2:])
        head = session(cut(inferred, [source], outputs, free_sizes=False))
    else:
        sizes = [input_shape(original)] + list(sizes)
        head = session(cut(inferred, [source], outputs, free_sizes=True))
    dense_trunk = cut(onnx.shape_inference.infer_shapes(converted), inputs_of(converted), [source],
                      free_sizes=True, channels_last=channels_last) if step else None
    step = step or (1,) * len(window)
    for size in sizes:
        feeds = random_input(original, size, seed=1)
        features = run(own_trunk if tuple(size) == tuple(input_shape(original)) else trunk, feeds)[source]
        if dense_trunk is not None:
            dense = run(dense_trunk, feeds)[source]
            sampled = dense[(slice(None), slice(None)) + tuple(slice(0, f * d, d)
                                                               for f, d in zip(features.shape[2:], step))]
            np.testing.assert_allclose(sampled, features, rtol=rtol, atol=atol, err_msg="denser trunk, phase 0")
            features = dense
        actual = run(converted, feeds)
        if channels_last:
            actual = {name: np.moveaxis(value, -1, 1) for name, value in actual.items()}
        grid = tuple(f - (w - 1) * d for f, w, d in zip(features.shape[2:], window, step))
        for name in outputs:
            assert actual[name].shape[2:] == grid, (name, actual[name].shape, grid)
        for position in itertools.product(*(range(g) for g in grid)):
            crop = features[(slice(None), slice(None)) + tuple(slice(p, p + (w - 1) * d + 1, d)
                                                               for p, w, d in zip(position, window, step))]
            for name, value in zip(outputs, head.run(outputs, {source: np.ascontiguousarray(crop)})):
                np.testing.assert_allclose(actual[name][(...,) + position], value.reshape(value.shape[0], -1),
                                           rtol=rtol, atol=atol, err_msg=f"output {name} at {position}, size {size}")


def assert_one_prediction(original: onnx.ModelProto, converted: onnx.ModelProto, *, source: str,
                          size: Sequence[int], channels_last: bool = False, rtol: float = RTOL,
                          atol: float = 1e-6, trunk: Optional[onnx.ModelProto] = None) -> None:
    """A kept global pool: at a larger input `size` (a full shape), every output has one cell, and it equals
    the original head run on the whole larger feature map of the original trunk (or of `trunk`, as in
    `assert_equivalent`)."""
    inferred = onnx.shape_inference.infer_shapes(original)
    feeds = random_input(original, size, seed=3)
    actual = run(converted, feeds)
    trunk = trunk or cut(inferred, inputs_of(original), [source], free_sizes=True, channels_last=channels_last)
    features = run(trunk, feeds)[source]
    outputs = [o.name for o in original.graph.output]
    expected = run(cut(inferred, [source], outputs, free_sizes=True), {source: features})
    for name in outputs:
        value = actual[name]
        assert value.size == expected[name].size, (name, value.shape, expected[name].shape)
        np.testing.assert_allclose(value.reshape(expected[name].shape), expected[name], rtol=rtol, atol=atol,
                                   err_msg=f"output {name}, one prediction at size {tuple(size)}")


def trunk_that_runs_at_any_size(model: onnx.ModelProto) -> onnx.ModelProto:
    """tf2onnx writes the NHWC -> NCHW move of a single-channel input as Reshape [-1, 1, H, W], with the
    training size baked in; swap in the Transpose it stands for (done here by hand, independently of the
    package's normalize step), so the reference trunk can run at a larger size at all."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    image = model.graph.input[0].name
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[0] == image:
            node.op_type = "Transpose"
            del node.input[1:]
            node.attribute.append(helper.make_attribute("perm", [0, 3, 1, 2]))
    return model


def with_channels_first_view(model: onnx.ModelProto, reader: str) -> onnx.ModelProto:
    """The reference for a pool or a flattening of a channels-last map that is not a Transpose's output (a
    residual net done in NHWC): `reader` reads the map through a Transpose to NCHW and back, the identity, so the
    reference has a channels-first tensor ('reference_nchw') to cut at. Every other reader of the map (jax2onnx
    reads the batch for a flattening off its Shape) reads the view too, so that the head after it stands alone."""
    reference = onnx.ModelProto.FromString(model.SerializeToString())
    node = next(n for n in reference.graph.node if n.name == reader)
    data = node.input[0]
    for other in reference.graph.node:
        other.input[:] = ["reference_nhwc" if name == data else name for name in other.input]
    position = min(i for i, n in enumerate(reference.graph.node) if "reference_nhwc" in n.input)
    for offset, (source, target, perm) in enumerate(((data, "reference_nchw", [0, 3, 1, 2]),
                                                     ("reference_nchw", "reference_nhwc", [0, 2, 3, 1]))):
        reference.graph.node.insert(position + offset, helper.make_node("Transpose", [source], [target], perm=perm))
    return reference

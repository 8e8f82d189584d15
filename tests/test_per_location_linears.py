"""A linear layer at each location written as Reshape [-1, C] -> Gemm -> Reshape back (jax2onnx's nnx.Linear on a
map) becomes MatMul + Add on the map: the same numbers in onnxruntime, for every Gemm attribute that changes the
weight (transB, alpha, beta), with a square weight so that a transposed one would not even fail on shapes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import fc2conv_onnx
from fc2conv_onnx.model import graphs
from fc2conv_onnx.read.per_location_linears import per_location_linears

C = 6


def linear_at_each_location(trans_b: int, alpha: float, beta: float) -> onnx.ModelProto:
    """NHWC image [2, 8, 10, 3] -> Conv 3x3 between Transposes -> Reshape [-1, C] -> Gemm (C x C) -> Reshape
    [2, 8, 10, C] -> Relu -> ReduceMean over H, W -> Gemm to 4 logits."""
    rng = np.random.default_rng(trans_b * 10 + int(alpha * 4))
    weights = {"conv_w": rng.standard_normal((C, 3, 3, 3)), "w": rng.standard_normal((C, C)),
               "b": rng.standard_normal(C), "fc_w": rng.standard_normal((C, 4)), "fc_b": rng.standard_normal(4)}
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()] + [
        numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
        (("flat", [-1, C]), ("map", [2, 8, 10, C]), ("axes", [1, 2]))]
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "conv_w"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["conv"], ["nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["nhwc", "flat"], ["rows"]),
             helper.make_node("Gemm", ["rows", "w", "b"], ["mixed"], transB=trans_b, alpha=alpha, beta=beta),
             helper.make_node("Reshape", ["mixed", "map"], ["mixed_map"]),
             helper.make_node("Relu", ["mixed_map"], ["features"]),
             helper.make_node("ReduceMean", ["features", "axes"], ["pooled"], keepdims=0),
             helper.make_node("Gemm", ["pooled", "fc_w", "fc_b"], ["logits"])]
    graph = helper.make_graph(nodes, "per_location", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                      [2, 8, 10, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 4])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model: onnx.ModelProto, image: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image})[0]


@pytest.mark.parametrize("trans_b, alpha, beta", [(0, 1.0, 1.0), (1, 1.0, 1.0), (1, 0.5, 2.0), (0, 2.0, 0.25)])
def test_the_rewrite_gives_the_original_numbers(trans_b, alpha, beta):
    original = linear_at_each_location(trans_b, alpha, beta)
    graph = graphs.import_graph(graphs.infer_shapes(original))
    assert len(per_location_linears(graph)) == 1
    rewritten = graphs.export_like(graph, original)
    assert {n.op_type for n in rewritten.graph.node} >= {"MatMul", "Add"}
    assert [n.op_type for n in rewritten.graph.node].count("Reshape") == 0
    image = np.random.default_rng(7).standard_normal((2, 8, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(run(rewritten, image), run(original, image), rtol=1e-5, atol=1e-5)


def test_the_model_converts_in_every_mode_with_the_trunk_free_of_its_training_size():
    original = linear_at_each_location(1, 0.5, 2.0)
    image = np.random.default_rng(9).standard_normal((2, 8, 10, 3)).astype(np.float32)
    for pooling in ("keep", "window", "none"):
        conversion = fc2conv_onnx.convert_with_report(original, pooling=pooling)
        assert any("linear layer at each location" in note for note in conversion.report.plan.normalized)
        if pooling != "none":  # one cell at the training size: the original's logits (none gives a map there)
            np.testing.assert_allclose(run(conversion.model, image).reshape(2, 4), run(original, image), rtol=1e-4,
                                       atol=1e-5)
        larger = np.random.default_rng(8).standard_normal((1, 20, 17, 3)).astype(np.float32)
        assert run(conversion.model, larger).shape[0] == 1  # the Reshapes' sizes are gone: it runs at 20x17

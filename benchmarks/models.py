"""Models for the benchmarks: the dress detector with two heads, a CaffeNet-shaped classifier, and a
hand conversion of each (the reference the product's output is timed against).

Built with onnx.helper and seeded random weights (fixtures/builders.py), so no framework is needed.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fixtures"))

from builders import SOURCE, ModelBuilder, dress_detector, trunk  # noqa: E402


def dress_detector_fc1024() -> onnx.ModelProto:
    """The dress detector's trunk with a realistic head: FC 1024, ReLU, FC 1024, ReLU, FC 1, Sigmoid."""
    b = ModelBuilder(opset=13, seed=21)
    x = trunk(b, b.input("image", [1, 3, 128, 64]), [3, 8, 16, 16, 32, 32], rank=2)
    y = b.node("Flatten", [x], axis=1)
    for fin, fout in ((32 * 4 * 2, 1024), (1024, 1024)):
        y = b.node("Relu", [b.gemm(y, fin, fout, bias_shape=(fout,))])
    b.node("Sigmoid", [b.gemm(y, 1024, 1, bias_shape=(1,))], b.output("score", [1, 1]))
    return b.build("dress_detector_fc1024")


def caffenet() -> onnx.ModelProto:
    """CaffeNet/AlexNet shape: 227x227 input, conv1-5 (groups, LRN) to 256x6x6, fc6 4096, fc7 4096, fc8 1000."""
    b = ModelBuilder(opset=13, seed=22)
    x = b.input("data", [1, 3, 227, 227])

    def conv(x, cin, cout, kernel, stride=1, pad=0, group=1):
        w = b.weight(b.fresh("conv_w"), (cout, cin // group, kernel, kernel))
        bias = b.weight(b.fresh("conv_b"), (cout,), fan_in=1)
        return b.node("Relu", [b.node("Conv", [x, w, bias], kernel_shape=[kernel] * 2, strides=[stride] * 2,
                                      pads=[pad] * 4, group=group)])

    def pool(x, output=None):
        return b.node("MaxPool", [x], output, kernel_shape=[3, 3], strides=[2, 2])

    def lrn(x):
        return b.node("LRN", [x], size=5, alpha=1e-4, beta=0.75, bias=1.0)

    x = pool(lrn(conv(x, 3, 96, 11, stride=4)))
    x = pool(lrn(conv(x, 96, 256, 5, pad=2, group=2)))
    x = conv(conv(conv(x, 256, 384, 3, pad=1), 384, 384, 3, pad=1, group=2), 384, 256, 3, pad=1, group=2)
    x = pool(x, SOURCE)
    y = b.node("Flatten", [x], axis=1)
    y = b.node("Dropout", [b.node("Relu", [b.gemm(y, 256 * 6 * 6, 4096, bias_shape=(4096,))])])
    y = b.node("Dropout", [b.node("Relu", [b.gemm(y, 4096, 4096, bias_shape=(4096,))])])
    b.node("Softmax", [b.gemm(y, 4096, 1000, bias_shape=(1000,))], b.output("prob", [1, 1000]), axis=1)
    return b.build("caffenet")


MODELS = {
    "dress detector, seed head": (dress_detector, (512, 1024)),
    "dress detector, FC 1024-1024-1 head": (dress_detector_fc1024, (512, 1024)),
    "CaffeNet": (caffenet, (451, 451)),
}


def hand_convert(model: onnx.ModelProto) -> onnx.ModelProto:
    """What a person does by hand, for these models only: Flatten goes, the Gemm after it becomes a Conv
    with the feature map's size as kernel, later Gemms 1x1 Convs, Softmax over axis 1, Dropout removed;
    input and output dims symbolic. Nothing else is added."""
    graph = model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    renames, nodes, new_weights = {}, [], []
    for node in graph.node:
        inputs = [renames.get(i, i) for i in node.input]
        if node.op_type in ("Flatten", "Dropout"):
            renames[node.output[0]] = inputs[0]
            continue
        if node.op_type == "Gemm":
            w = weights[node.input[1]]
            source = shapes.get(inputs[0])
            kernel = w.reshape((w.shape[0],) + tuple(source[1:])) if source and len(source) == 4 else \
                w.reshape(w.shape + (1, 1))
            name = node.input[1] + "_as_conv"
            new_weights.append(numpy_helper.from_array(np.ascontiguousarray(kernel), name))
            nodes.append(helper.make_node("Conv", [inputs[0], name, node.input[2]], list(node.output), name=node.name,
                                          kernel_shape=list(kernel.shape[2:])))
            shapes[node.output[0]] = [1, w.shape[0], 1, 1]
            continue
        copy = helper.make_node(node.op_type, inputs, list(node.output), name=node.name)
        copy.attribute.extend(a for a in node.attribute if not (node.op_type == "Softmax" and a.name == "axis"))
        if node.op_type == "Softmax":
            copy.attribute.append(helper.make_attribute("axis", 1))
        nodes.append(copy)
    image = helper.make_tensor_value_info(graph.input[0].name, graph.input[0].type.tensor_type.elem_type,
                                          ["N", graph.input[0].type.tensor_type.shape.dim[1].dim_value, "H", "W"])
    outputs = [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type,
                                             ["N", o.type.tensor_type.shape.dim[1].dim_value, "h", "w"])
               for o in graph.output]
    used = {i for n in nodes for i in n.input}
    initializers = [t for t in graph.initializer if t.name in used] + new_weights
    hand = helper.make_model(helper.make_graph(nodes, graph.name + "_hand", [image], outputs, initializers),
                             opset_imports=list(model.opset_import), ir_version=model.ir_version)
    onnx.checker.check_model(hand)
    return hand


def free_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The original with a symbolic batch, for the batched image-level sliding window."""
    free = onnx.ModelProto()
    free.CopyFrom(model)
    free.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for output in free.graph.output:
        output.type.tensor_type.shape.dim[0].dim_param = "N"
    del free.graph.value_info[:]
    return free


def multiply_accumulates(model: onnx.ModelProto, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of every Conv, Gemm and MatMul at the given input shape."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for dim, value in zip(fixed.graph.input[0].type.tensor_type.shape.dim, input_shape):
        dim.Clear()
        dim.dim_value = value
    del fixed.graph.value_info[:]
    for output in fixed.graph.output:
        output.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            total += int(np.prod(shapes[node.output[0]])) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            w = weights[node.input[1]]
            total += int(np.prod(shapes[node.output[0]])) * int(np.prod(w)) // int(shapes[node.output[0]][-1])
    return total

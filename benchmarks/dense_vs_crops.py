"""How far ahead is one pass of the converted model? Timed side by side with what people do without it.

    python benchmarks/dense_vs_crops.py [--rounds 15] [--threads 2] [--only caffenet]

For each model, at a frame size larger than its training size, in one run, interleaved (A B C ... with the
order rotated each round), onnxruntime CPU with a stated thread count, medians of:
  converted         the product's converted model, one pass over the frame
  hand              a hand conversion of the same model (benchmarks/models.py), one pass
  crop+fwd 1/call   the original trunk once, then the FC head on each feature window, one window per call
  crop+fwd batched  the same with every window in one call
  image 1/call      every training-size image crop through the original model, one per call
  image batched     the same with every crop in one call
  single            one classification at the training size
  bound             multiply-accumulates of the converted model over this machine's GEMM rate (a 1024^3
                    MatMul in onnxruntime, timed in the same rounds)
  validate          fc2conv_onnx's window check of the pair at the frame size (3 sessions, runs, compare)

Before timing, every method that should agree is checked against the converted model's map (the image-level
sliding window does not agree when the trunk pads: its difference is printed, not asserted).
A session's worker threads spin for a while after run(); an untimed 0.1 s sleep precedes each timed call so
one method does not eat the next one's cores (see ../shared/BENCHMARKING.md).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fc2conv_onnx  # noqa: E402
from fc2conv_onnx.model import graphs  # noqa: E402
from fc2conv_onnx.prove import validate as validation  # noqa: E402

from models import MODELS, free_batch, hand_convert, multiply_accumulates  # noqa: E402

SOURCE = "features"


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


GEMM_SIZE = 1024


def gemm_probe(threads: int) -> Callable[[], object]:
    """One 1024^3 MatMul in onnxruntime: timed with the other methods, it gives this machine's GEMM rate."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [GEMM_SIZE] * 2) for n in "ab"],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [GEMM_SIZE] * 2)])
    s = session(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), threads)
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((GEMM_SIZE, GEMM_SIZE)).astype(np.float32) for n in "ab"}
    return lambda: s.run(None, feeds)


def windows(features: np.ndarray, window, grid) -> np.ndarray:
    crops = [features[(slice(None), slice(None)) + tuple(slice(p, p + w) for p, w in zip(cell, window))]
             for cell in np.ndindex(*grid)]
    return np.ascontiguousarray(np.concatenate(crops))


def bench_model(label: str, build, frame, rounds: int, threads: int) -> List[str]:
    original = build()
    conversion = fc2conv_onnx.convert_with_report(original)
    converted, (geometry,) = conversion.model, conversion.report.geometry
    hand = hand_convert(original)
    inferred = onnx.shape_inference.infer_shapes(original)
    output = original.graph.output[0].name
    image_name = original.graph.input[0].name
    window = conversion.report.plan.heads[0].spatial_shape
    trunk = graphs.cut(inferred, [SOURCE], (), [image_name])
    head = graphs.cut(inferred, [output], [SOURCE], [SOURCE], batch_only=True)
    s = {name: session(model, threads) for name, model in
         [("converted", converted), ("hand", hand), ("trunk", trunk), ("head", head),
          ("original", free_batch(original))]}
    image = np.random.default_rng(0).standard_normal((1, 3) + tuple(frame)).astype(np.float32)
    grid = geometry.grid(frame)
    cells = list(np.ndindex(*grid))
    crops = np.ascontiguousarray(np.concatenate([image[(slice(None), slice(None)) + geometry.window_of(c).slices()]
                                                 for c in cells]))
    single = crops[:1]

    def converted_pass(): return s["converted"].run([output], {image_name: image})[0]
    def hand_pass(): return s["hand"].run([output], {image_name: image})[0]
    def trunk_pass(): return s["trunk"].run([SOURCE], {image_name: image})[0]
    def crop_one():
        f = trunk_pass()
        return np.stack([s["head"].run([output], {SOURCE: w[None]})[0][0] for w in windows(f, window, grid)], -1)
    def crop_batched():
        return s["head"].run([output], {SOURCE: windows(trunk_pass(), window, grid)})[0].T[None]
    def image_one():
        return np.stack([s["original"].run([output], {image_name: c[None]})[0][0] for c in crops], -1)
    def image_batched(): return s["original"].run([output], {image_name: crops})[0].T[None]
    def one_classification(): return s["original"].run([output], {image_name: single})[0]
    def validate():
        return validation.check_windows(inferred, converted, conversion.report.plan, conversion.report.geometry,
                                        size=frame)

    dense = converted_pass().reshape(1, -1, len(cells))
    scale = np.abs(dense).max()
    for name, method in [("hand", hand_pass), ("crop+fwd 1/call", crop_one), ("crop+fwd batched", crop_batched)]:
        got = method().reshape(dense.shape)
        assert np.abs(got - dense).max() <= 1e-5 + 1e-4 * scale, f"{label}: {name} disagrees with the converted map"
    by_image, by_image_batched = image_one(), image_batched()
    assert np.allclose(by_image, by_image_batched, rtol=1e-4, atol=1e-5)
    image_gap = float(np.abs(by_image.reshape(dense.shape) - dense).max())
    assert all(c.passed for c in validate())

    methods: Dict[str, Callable] = {
        "converted": converted_pass, "hand": hand_pass, "crop+fwd 1/call": crop_one,
        "crop+fwd batched": crop_batched, "image 1/call": image_one, "image batched": image_batched,
        "single": one_classification, "validate": validate, "gemm 1024^3": gemm_probe(threads),
    }
    times: Dict[str, List[float]] = {name: [] for name in methods}
    order = list(methods)
    for name in order:  # warm-up
        methods[name]()
    for r in range(rounds):
        rotated = order[r % len(order):] + order[:r % len(order)]
        for name in rotated:
            time.sleep(0.1)
            start = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    macs = multiply_accumulates(converted, image.shape)
    rate = GEMM_SIZE ** 3 / median["gemm 1024^3"]
    bound = macs / rate
    base = median["converted"]
    lines = [f"### {label}: {'x'.join(map(str, frame))} frame, {len(cells)} cells "
             f"({'x'.join(map(str, grid))}), training size {'x'.join(map(str, geometry.window))}",
             "", "| method | median ms | vs converted |", "|---|---:|---:|"]
    for name in order[:-1]:
        lines.append(f"| {name} | {median[name] * 1e3:.1f} | {median[name] / base:.2f}x |")
    lines.append(f"| bound ({macs / 1e9:.2f} GMAC at {rate / 1e9:.1f} GMAC/s, the median 1024^3 MatMul rate) | "
                 f"{bound * 1e3:.1f} | {bound / base:.2f}x |")
    lines += ["", f"- converted vs hand conversion: {base / median['hand']:.3f} (target <= 1.02)",
              f"- converted reaches {bound / base:.2f} of the compute lower bound (target >= 0.85)",
              f"- converted vs batched crop-and-forward: {median['crop+fwd batched'] / base:.2f}x faster "
              "(target: never slower)",
              f"- one pass of the converted model = {base / median['single']:.2f} single classifications",
              f"- validation at this size = {median['validate'] / base:.2f} converted passes (target <= 2)",
              f"- image-level sliding window vs the map: max abs difference {image_gap:.3g} (map spans "
              f"{float(dense.min()):.3g} .. {float(dense.max()):.3g}; the trunk pads, so they differ)", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    parser.add_argument("--only", help="run only the models whose name contains this")
    args = parser.parse_args()
    header = [f"date {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, onnxruntime {ort.__version__} CPU, intra_op_num_threads={args.threads}, "
              f"default graph optimizations, {args.rounds} rounds, medians", ""]
    print("\n".join(header), flush=True)
    for label, (build, frame) in MODELS.items():
        if args.only and args.only.lower() not in label.lower():
            continue
        print("\n".join(bench_model(label, build, frame, args.rounds, args.threads)), flush=True)


if __name__ == "__main__":
    main()

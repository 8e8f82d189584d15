"""`detect` on a stream of frames against the loop a user would write by hand, side by side in one run.

    python benchmarks/frames.py [--frames 40] [--rounds 3]      (about 30 s)

The converted dress detector (fixtures/dress_detector.onnx) on N noise frames of 512x1024 saved as PNG, at one
scale. `detect`: `fc2conv_onnx.detect(model, frames)`, one call (one session for all frames), everything
included (reading, decoding, preprocessing, runs, boxes, suppression). Hand loop: onnxruntime's session on
the file, then per frame Pillow decode, /255, NCHW, run, and the cells above the threshold (no boxes, no
suppression). Rounds alternate the order; medians and the ratio are printed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fc2conv_onnx  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dress_detector.onnx"


def hand_loop(model: Path, frames) -> int:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    found = 0
    for frame in frames:
        pixels = np.asarray(Image.open(frame).convert("RGB"), dtype=np.float32) / 255.0
        scores = session.run(None, {name: pixels.transpose(2, 0, 1)[None]})[0]
        found += int((scores > 0.5).sum())
    return found


def converted_and_frames(folder: Path, count: int, size) -> tuple:
    """The dress detector converted into `folder`, and `count` seeded noise frames of `size` (height, width)
    saved there as PNG."""
    model = folder / "dress_fcn.onnx"
    fc2conv_onnx.convert_file(FIXTURE, model)
    rng = np.random.default_rng(0)
    frames = []
    for index in range(count):
        path = folder / f"frame{index:04d}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        frames.append(str(path))
    return model, frames


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model, frames = converted_and_frames(Path(folder), args.frames, (512, 1024))
        methods = {"detect": lambda: len(fc2conv_onnx.detect(model, frames).records),
                   "hand loop": lambda: hand_loop(model, frames)}
        times = {key: [] for key in methods}
        for round_ in range(args.rounds):
            for key in (list(methods) if round_ % 2 == 0 else list(reversed(methods))):
                start = time.perf_counter()
                methods[key]()
                times[key].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    for key, value in median.items():
        print(f"{key:10s} {value:6.3f} s for {args.frames} frames ({value / args.frames * 1000:.1f} ms each)")
    print(f"detect / hand loop: {median['detect'] / median['hand loop']:.2f}x")


if __name__ == "__main__":
    main()

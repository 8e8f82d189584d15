"""The session settings per use, side by side in one run: the converted dress detector on 40 frames of
512x1024, run by a `runtime.Session` set for checks (no arena, no spinning, weights fed as inputs), one set
for pictures (onnxruntime's defaults, weights handed over as initializers) and a hand-written onnxruntime
loop on the model file. Prints each median of 3 rounds (interleaved) and the ratios to the hand loop.

    python benchmarks/sessions.py      (about 15 s)
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fc2conv_onnx  # noqa: E402
from fc2conv_onnx.model import io, runtime  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dress_detector.onnx"


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dress_fcn.onnx"
        fc2conv_onnx.convert_file(FIXTURE, path)
        loaded = io.read_model(path)
        hand = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name, outputs = hand.get_inputs()[0].name, [o.name for o in hand.get_outputs()]
        runs = {"check": runtime.Session(loaded.model, loaded.weights, runtime.CHECK).run,
                "pictures": runtime.Session(loaded.model, loaded.weights, runtime.PICTURES).run,
                "hand loop": hand.run}
        frames = [np.random.default_rng(i).random((1, 3, 512, 1024), dtype=np.float32) for i in range(40)]
        times = {key: [] for key in runs}
        for _ in range(3):
            for key, run in runs.items():
                start = time.perf_counter()
                for frame in frames:
                    run(outputs, {name: frame})
                times[key].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    for key, value in median.items():
        print(f"{key:10s} {value:6.3f} s for 40 frames   {value / median['hand loop']:.2f}x the hand loop")


if __name__ == "__main__":
    main()

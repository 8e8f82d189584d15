"""Refining and cascades against the sliding window of the original classifier, side by side in one run.

    python benchmarks/refine.py [--rounds 7] [--tiles 3]

The trained ring classifier (fixtures/exported/ring_classifier.onnx: 32x32 crops, a padded trunk, stride 4) on
fixtures/rings.png tiled `--tiles` x `--tiles` (480x720 for 3: 12,963 windows). Per round, in rotated order with an
untimed pause before each timed call, every method from its files (a fresh session each, as a user's script pays):

  sliding      a user's loop: the original on every 32x32 crop 4 pixels apart, in batches of 256, threshold 0.5,
               suppression (IoU 0.5) - the classifier's own answers
  map          detect with the converted model alone (one run; its boxes may differ where the trunk pads)
  refine       detect --refine ORIGINAL: the map proposes (cells above 0.25), the original rescores those crops
  cascade      detect with the original as a cascade stage on the map's kept boxes (each box its window)

Printed: medians, each method's time over the sliding window's, and whether its boxes and scores are the sliding
window's (same boxes, scores within 1e-4).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interleaved import interleaved, seconds  # noqa: E402 (benchmarks/, the script's own folder)

import fc2conv_onnx  # noqa: E402
from fc2conv_onnx import DetectionSettings, Stage  # noqa: E402
from fc2conv_onnx.model.detections import Detection, best_first  # noqa: E402

ORIGINAL = ROOT / "fixtures" / "exported" / "ring_classifier.onnx"
SCENE = ROOT / "fixtures" / "rings.png"
WINDOW, STRIDE, THRESHOLD = 32, 4, 0.5


def sliding(picture: Path) -> List[Detection]:
    session = ort.InferenceSession(str(ORIGINAL), providers=["CPUExecutionProvider"])
    pixels = (np.asarray(Image.open(picture).convert("RGB"), np.float32) / np.float32(255)).transpose(2, 0, 1)
    height, width = pixels.shape[1:]
    cells = [(i, j) for i in range((height - WINDOW) // STRIDE + 1) for j in range((width - WINDOW) // STRIDE + 1)]
    found = []
    for start in range(0, len(cells), 256):
        batch = cells[start:start + 256]
        crops = np.stack([pixels[:, i * STRIDE:i * STRIDE + WINDOW, j * STRIDE:j * STRIDE + WINDOW] for i, j in batch])
        scores = session.run(["score"], {"image": crops})[0][:, 0]
        found += [Detection(str(picture), (float(j * STRIDE), float(i * STRIDE), float(j * STRIDE + WINDOW),
                                           float(i * STRIDE + WINDOW)), float(s), 0, 1.0, (i, j))
                  for (i, j), s in zip(batch, scores) if s > THRESHOLD]
    return best_first(found, 0.5)


def same(got: List[Detection], expected: List[Detection]) -> bool:
    if len(got) != len(expected):
        return False
    pairs = zip(sorted(got, key=lambda r: r.box), sorted(expected, key=lambda r: r.box))
    return all(a.box == b.box and abs(a.score - b.score) <= 1e-4 for a, b in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tiles", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        picture = Path(folder) / "rings.png"
        scene = np.asarray(Image.open(SCENE).convert("RGB"))
        Image.fromarray(np.tile(scene, (args.tiles, args.tiles, 1))).save(picture)
        converted = Path(folder) / "rings_fcn.onnx"
        fc2conv_onnx.convert_file(ORIGINAL, converted)
        stage = Stage(ORIGINAL, DetectionSettings(threshold=THRESHOLD))
        methods: Dict[str, Callable[[], List[Detection]]] = {
            "sliding": lambda: sliding(picture),
            "map": lambda: fc2conv_onnx.detect(converted, [picture], threshold=THRESHOLD).records,
            "refine": lambda: fc2conv_onnx.detect(converted, [picture], threshold=THRESHOLD, refine=ORIGINAL).records,
            "cascade": lambda: fc2conv_onnx.detect(converted, [picture], threshold=THRESHOLD, cascade=[stage]).records,
        }
        expected = methods["sliding"]()
        agree = {name: same(method(), expected) for name, method in methods.items()}
        times = interleaved({name: seconds(method, pause=0.1) for name, method in methods.items()}, args.rounds)
        width, height = Image.open(picture).size
        windows = ((height - WINDOW) // STRIDE + 1) * ((width - WINDOW) // STRIDE + 1)
        print(f"ring classifier on {width}x{height} ({windows} windows), {args.rounds} rounds, onnxruntime "
              f"{ort.__version__}; {len(expected)} boxes from the sliding window")
        base = statistics.median(times["sliding"])
        print(f"{'method':<10} {'median ms':>10} {'vs sliding':>11}  boxes and scores = sliding window's")
        for name in methods:
            median = statistics.median(times[name])
            print(f"{name:<10} {median * 1000:>10.1f} {median / base:>10.2f}x  {'yes' if agree[name] else 'no'}")


if __name__ == "__main__":
    main()

"""How far the map (crop and forward on the feature map) is from classifying each image crop on its own, on a
zero-padded trunk: the figure the README and docs/equivalence.md quote.

    python benchmarks/feature_vs_image_crops.py      (a few seconds)

The dress detector fixture (seeded random weights, a padded trunk), converted; two seeded random frames of
512x1024, uniform in [0, 1). Cell (i, j) of the converted model's map against the original model run on the
128x64 image crop at (32i, 32j) alone (zero padding at the crop's edges, where the map's trunk saw the
neighbouring pixels). Prints the median and largest difference and the map's own range.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fc2conv_onnx  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dress_detector.onnx"


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        converted = Path(folder) / "dress_fcn.onnx"
        fc2conv_onnx.convert_file(FIXTURE, converted)
        original = ort.InferenceSession(str(FIXTURE), providers=["CPUExecutionProvider"])
        dense = ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"])
    name = original.get_inputs()[0].name
    (height, width), (stride_h, stride_w) = (128, 64), (32, 32)
    for seed in (0, 1):
        frame = np.random.default_rng(seed).random((1, 3, 512, 1024), dtype=np.float32)
        cells = dense.run(None, {"image": frame})[0][0, 0]
        alone = np.array([[original.run(None, {name: np.ascontiguousarray(
            frame[:, :, stride_h * i:stride_h * i + height, stride_w * j:stride_w * j + width])})[0].item()
            for j in range(cells.shape[1])] for i in range(cells.shape[0])])
        gap = np.abs(alone - cells)
        print(f"frame {seed}: {cells.shape[0]}x{cells.shape[1]} cells; crops alone differ from the map by a median "
              f"of {np.median(gap):.4f}, at most {gap.max():.4f}; the map spans {cells.min():.3f}-{cells.max():.3f}")


if __name__ == "__main__":
    main()

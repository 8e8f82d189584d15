"""Start-up of the commands that run a converted model, against what a user would run by hand, side by side
in one run.

    python benchmarks/startup.py [--rounds 9]      (about 15 s)

Four commands, each a fresh process, rounds interleaved (the order turned each round), medians printed:
- imports: `python -c "import onnxruntime, numpy, PIL.Image"` (the least a hand script pays);
- `fc2conv-onnx detect --help`;
- the hand script: onnxruntime's session on the converted spot finder, Pillow decode, /255, run, the cells
  above 0.5 (no boxes, no suppression, no pyramid);
- `fc2conv-onnx detect MODEL disks.png -o OUT.json` (one scale, boxes and suppression included).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fc2conv_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PICTURE = ROOT / "fixtures" / "disks.png"

HAND_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort
from PIL import Image

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
pixels = np.asarray(Image.open(sys.argv[2]).convert("RGB"), dtype=np.float32) / 255.0
scores = session.run(None, {name: pixels.transpose(2, 0, 1)[None]})[0]
print(int((scores > 0.5).sum()))
"""


def timed(command) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    program = [sys.executable, "-m", "fc2conv_onnx"]
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "spots_fcn.onnx"
        fc2conv_onnx.convert_file(ROOT / "fixtures" / "spot_finder.onnx", model)
        script = Path(folder) / "hand.py"
        script.write_text(HAND_SCRIPT)
        commands = {
            "imports": [sys.executable, "-c", "import onnxruntime, numpy, PIL.Image"],
            "detect --help": program + ["detect", "--help"],
            "hand script": [sys.executable, str(script), str(model), str(PICTURE)],
            "detect": program + ["detect", str(model), str(PICTURE), "-o", str(Path(folder) / "found.json")],
        }
        times = {key: [] for key in commands}
        for round_ in range(args.rounds):
            for key in (list(commands) if round_ % 2 == 0 else list(reversed(commands))):
                times[key].append(timed(commands[key]))
    median = {key: statistics.median(values) for key, values in times.items()}
    for key, value in median.items():
        print(f"{key:>14}: {value * 1000:6.0f} ms")
    print(f"detect --help / imports: {median['detect --help'] / median['imports']:.2f}x")
    print(f"detect / hand script:    {median['detect'] / median['hand script']:.2f}x")


if __name__ == "__main__":
    main()

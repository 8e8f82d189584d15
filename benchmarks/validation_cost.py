"""What validation costs, against the least a user's own check costs, in time and peak memory.

    python benchmarks/validation_cost.py [--rounds 3] [--folder /tmp/fc2conv-validation]

For three models (the dress detector with an FC 1024-1024-1 head at 512x1024, a CaffeNet-sized classifier
at 451x451, and the VGG16-sized one of benchmarks/scale.py at the validator's default size), each variant
runs in a fresh process, rounds interleaved with the order rotated each round; peak RSS (GNU time's %M) and
the time each takes inside its process, after the imports all pay alike; medians:
  convert      convert_file(IN, OUT, validate=False)
  validated    convert_file(IN, OUT[, validate_size=S])  (onnxruntime is imported inside the timing)
  hand check   import onnxruntime; load IN and OUT from their files (default session options); run IN once
               at its training size and OUT once at the window check's size
  imports only python -c "import numpy, onnxruntime" (what the hand check's memory is over)
Printed: the time validation takes inside the validated run (onnxruntime's import included) / the hand
check's time (target <= 1.0), and validation's extra peak memory (validated - convert) / the model's weights
(target <= 1.0: one copy) and / the hand check's own memory over its imports.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from interleaved import interleaved  # noqa: E402
from scale import vgg16  # noqa: E402

from models import caffenet, dress_detector_fc1024  # noqa: E402

#: name -> (builder, window-check size or None for the default)
MODELS = {
    "dress detector (FC 1024-1024-1)": (dress_detector_fc1024, "512x1024"),
    "CaffeNet-sized": (caffenet, "451x451"),
    "VGG16-sized": (vgg16, None),
}

HAND_CHECK = r"""
import sys, time, json
started = time.perf_counter()
import numpy as np
import onnxruntime as ort
original, converted, shape = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
a = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
b = ort.InferenceSession(converted, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
first = a.get_inputs()[0]
training = [d if isinstance(d, int) else 1 for d in first.shape]
a.run(None, {first.name: rng.standard_normal(training).astype(np.float32)})
b.run(None, {b.get_inputs()[0].name: rng.standard_normal(shape).astype(np.float32)})
print(time.perf_counter() - started)
"""


#: A conversion timed inside its process, after the package's import (which both variants pay alike).
#: A conversion timed inside its process, after the package's import (which both variants pay alike); the
#: time spent in validation (onnxruntime's import included) is timed on its own and printed last.
CONVERT = r"""
import sys, time, json
import fc2conv_onnx
from fc2conv_onnx import api
spent = [0.0]
real = api.validation.validate
def timed(*args, **kwargs):
    begun = time.perf_counter()
    try:
        return real(*args, **kwargs)
    finally:
        spent[0] += time.perf_counter() - begun
api.validation.validate = timed
started = time.perf_counter()
report = fc2conv_onnx.convert_file(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))
elapsed = time.perf_counter() - started
print(json.dumps(report.to_dict(), default=str))
print(elapsed, spent[0])
"""


def measure(command: List[str]) -> Tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and stdout of one fresh process."""
    done = subprocess.run(["/usr/bin/time", "-f", "%e %M"] + command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    wall, kib = done.stderr.strip().splitlines()[-1].split()
    return float(wall), int(kib) / 1024, done.stdout


def weights_mib(path: Path) -> float:
    model = onnx.load(str(path), load_external_data=False)
    return sum(len(t.raw_data) for t in model.graph.initializer) / 2**20


def window_shape(report: str) -> List[int]:
    checks = json.loads(report.splitlines()[0])["checks"]
    return list(next(c["input_shape"] for c in checks if c["check"] == "windows"))


def bench(name: str, path: Path, size: Optional[str], rounds: int) -> Dict[str, float]:
    python = sys.executable
    out = path.with_name(path.stem + "_converted.onnx")
    convert = [python, "-c", CONVERT, str(path), str(out), json.dumps({"validate": False})]
    validated = [python, "-c", CONVERT, str(path), str(out), json.dumps({"validate_size": size} if size else {})]
    shape = window_shape(measure(validated)[2])
    variants = {"convert": convert, "validated": validated,
                "hand check": [python, "-c", HAND_CHECK, str(path), str(out), json.dumps(shape)],
                "imports only": [python, "-c", "import numpy, onnxruntime"]}
    runs = interleaved({key: (lambda command=command: measure(command)) for key, command in variants.items()}, rounds)
    wall = {key: statistics.median(r[0] for r in values) for key, values in runs.items()}
    rss = {key: statistics.median(r[1] for r in values) for key, values in runs.items()}
    inside = {key: statistics.median(float(r[2].split()[-1 if key == "hand check" else -2]) for r in runs[key])
              for key in variants if key != "imports only"}
    weights = weights_mib(path)
    extra_time = statistics.median(float(r[2].split()[-1]) for r in runs["validated"])
    extra_rss = rss["validated"] - rss["convert"]
    print(f"\n{name}: {weights:.0f} MiB of weights, window check at {shape}, {rounds} interleaved rounds, medians")
    print("| variant | process wall s | timed inside s | peak RSS MiB |")
    print("|---|---:|---:|---:|")
    for key in variants:
        timed = f"{inside[key]:.2f}" if key in inside else ""
        print(f"| {key} | {wall[key]:.2f} | {timed} | {rss[key]:.0f} |")
    hand_rss = rss["hand check"] - rss["imports only"]
    hand = inside["hand check"]
    print(f"validation's time (timed inside the validated run): {extra_time:.2f} s = **{extra_time / hand:.2f}x** "
          "the hand check "
          f"(target <= 1.0); extra peak memory: {extra_rss:.0f} MiB = **{extra_rss / weights:.2f}x** the "
          f"weights (target <= 1.0) = {extra_rss / hand_rss:.2f}x the hand check's own ({hand_rss:.0f} MiB over "
          "its imports)")
    return {"time ratio": extra_time / inside["hand check"], "memory ratio": extra_rss / weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/fc2conv-validation"))
    parser.add_argument("--only", help="run only the models whose name contains this")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    import onnxruntime
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, onnx "
          f"{onnx.__version__}, onnxruntime {onnxruntime.__version__}, numpy {np.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")
    for name, (build, size) in MODELS.items():
        if args.only and args.only not in name:
            continue
        path = args.folder / (build.__name__ + ".onnx")
        if not path.exists():
            onnx.save(build(), str(path))
        bench(name, path, size, args.rounds)


if __name__ == "__main__":
    main()

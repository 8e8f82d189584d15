"""What detection costs on top of the model's own runs.

    python benchmarks/detection.py [--rounds 9]

Three models and pictures: the dress detector fixture (128x64 window, random weights) on a 512x1024 noise
frame, objects 128 to 512 pixels (7 scales); the spot finder fixture (32x32 window, chosen weights) on the
disks scene tiled 4x4 (1024x1536), objects 32 to 256 pixels (10 scales); and the CaffeNet-shaped classifier
of benchmarks/models.py (227x227, random weights, 1000 classes, softmax; class 1) on a 640x640 noise picture,
objects 227 to 640 pixels (5 scales): light models, where preparing the pictures weighs most, and a heavy
one. Per round, in rotated order with an untimed pause before each timed call (every session made as
`detect` makes it):

  pyramid      fc2conv_onnx.detect(model, [picture], min_size=..., max_size=...), everything included:
               reading the model and the picture, a fresh session, resizing, preprocessing, the runs, boxes
               and suppression
  passes       the converted model's runs alone, one per scale, on inputs made beforehand (sum), in a fresh
               session (made untimed: every method pays onnxruntime's costlier first run at each size)
  user loop    what a user's own loop does per scale: resize the picture (as detect does), preprocess, run
  singles      detect called once per scale (scales=(s,)), summed: the pyramid's single passes as calls
  open session reading the model and opening a session on it: the fixed cost inside `pyramid`
  in-graph     the model written with --emit-detections, one run at scale 1 (boxes out), fresh session
  map + numpy  the converted model's run at scale 1 plus detect's numpy steps (candidates, suppression)

Printed: medians, pyramid / passes (target <= 1.2), pyramid / user loop, pyramid / singles, and in-graph /
(map + numpy), each taken in one run.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fixtures"))

from interleaved import interleaved  # noqa: E402

import fc2conv_onnx  # noqa: E402
from fc2conv_onnx.apps import pictures  # noqa: E402
from fc2conv_onnx.apps.detector import SCALE_STEP  # noqa: E402
from fc2conv_onnx.apps.maps import open_map_model  # noqa: E402
from fc2conv_onnx.apps.preprocessing import Preprocessing, model_input  # noqa: E402
from fc2conv_onnx.model import detections, ort  # noqa: E402

PAUSE = 0.1  # seconds, untimed, before each timed call


def cases(folder: Path) -> List[Dict]:
    import make_disks
    from PIL import Image

    frame = folder / "frame.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.uniform(0, 255, (512, 1024, 3))).astype(np.uint8)).save(frame)
    square = folder / "square.png"
    Image.fromarray((rng.uniform(0, 255, (640, 640, 3))).astype(np.uint8)).save(square)
    tiled = folder / "disks_4x4.png"
    Image.fromarray(np.tile(make_disks.scene(), (4, 4, 1))).save(tiled)
    return [{"name": "dress detector, 512x1024 frame", "model": "dress_detector", "picture": frame,
             "sizes": (128, 512), "settings": {}},
            {"name": "spot finder, 1024x1536 disks", "model": "spot_finder", "picture": tiled,
             "sizes": (32, 256), "settings": {"regression": "box"}},
            {"name": "CaffeNet-shaped, 640x640 picture", "model": _caffenet(folder), "picture": square,
             "sizes": (227, 640), "settings": {"classes": (1,), "threshold": 0.0}}]


def _caffenet(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from models import caffenet
    path = folder / "caffenet.onnx"
    onnx.save(caffenet(), str(path))
    return path


def timed(prepare: Callable[[], Callable[[], object]]) -> float:
    """The time of the call `prepare()` returns (the preparing, e.g. a fresh session, untimed)."""
    call = prepare()
    time.sleep(PAUSE)
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def run_case(case: Dict, folder: Path, rounds: int) -> None:
    source = case["model"] if isinstance(case["model"], Path) else ROOT / "fixtures" / f"{case['model']}.onnx"
    converted, emitted = folder / f"{source.stem}_fcn.onnx", folder / f"{source.stem}_detector.onnx"
    fc2conv_onnx.convert_file(source, converted)
    settings = fc2conv_onnx.DetectionSettings(**case["settings"])
    fc2conv_onnx.convert_file(source, emitted, emit_detections=settings)
    low, high = case["sizes"]

    def pyramid():
        return fc2conv_onnx.detect(converted, [case["picture"]], settings, min_size=low, max_size=high)
    found = pyramid()
    scales = found.scales[str(case["picture"])]
    runner = open_map_model(converted)
    name = runner.placed(None)
    outputs = [name] + ([settings.regression] if settings.regression else [])
    geometry = runner.geometries[name]
    picture = pictures.read_image(case["picture"])
    prep = Preprocessing()
    feeds = [model_input(picture if s == 1.0 else pictures.resized(picture, s), runner.channels(name),
                                  geometry.layout, prep) for s in scales]

    # Every method starts from a fresh session, as `detect` does (onnxruntime's first run at each input size
    # costs more than later ones); opening it is timed only in `pyramid`, `singles` and `open session`.
    def open_session():
        return lambda: open_map_model(converted)

    def fresh():
        return open_map_model(converted).session  # as detect makes it

    def passes():
        session = fresh()
        return lambda: [session.run(outputs, {geometry.input: feed}) for feed in feeds]

    def user_loop():
        session = fresh()

        def loop():
            for s in scales:
                scaled = picture if s == 1.0 else pictures.resized(picture, s)
                feed = model_input(scaled, runner.channels(name), geometry.layout, prep)
                session.run(outputs, {geometry.input: feed})
        return loop

    def singles():
        return lambda: [fc2conv_onnx.detect(converted, [case["picture"]], settings, scales=(s,)) for s in scales]

    def in_graph():
        detector = ort.file_session(emitted, ort.PICTURES, "the in-graph detector", "")
        return lambda: detector.run(["boxes", "scores"], {geometry.input: feeds[0]})

    def map_and_numpy():
        session = fresh()

        def steps():
            maps = [v[0] for v in session.run(outputs, {geometry.input: feeds[0]})]
            size = (picture.size[1], picture.size[0])
            found = detections.candidates(maps[0], maps[1] if len(maps) > 1 else None, geometry, settings, "p",
                                          1.0, (1.0, 1.0), size)
            return detections.best_first(found, settings.iou)
        return steps

    # Agree before timing: the in-graph detector and the numpy steps find the same boxes at scale 1.
    boxes, scores = in_graph()()
    numpy_found = map_and_numpy()()
    assert len(numpy_found) == len(scores) and np.allclose(sorted(scores), sorted(d.score for d in numpy_found))
    methods = {"pyramid": lambda: pyramid, "passes": passes, "user loop": user_loop, "singles": singles,
               "open session": open_session, "in-graph": in_graph, "map + numpy": map_and_numpy}
    times = interleaved({m: (lambda way=way: timed(way)) for m, way in methods.items()}, rounds)
    medians = {m: statistics.median(t) * 1000 for m, t in times.items()}
    print(f"\n**{case['name']}: objects {low}-{high} px, {len(scales)} scales "
          f"({', '.join(f'{s:.3g}' for s in scales)}), {len(found.records)} detection(s); at scale 1: "
          f"{len(scores)}**\n")
    print("| method | median ms |\n|---|---:|")
    for method, value in medians.items():
        print(f"| {method} | {value:.1f} |")
    ratio = {other: medians["pyramid"] / medians[other] for other in ("passes", "user loop", "singles")}
    opened = (medians["pyramid"] - medians["open session"]) / medians["passes"]
    print(f"\npyramid / passes = {ratio['passes']:.2f} (target <= 1.2; without opening the session: {opened:.2f}); "
          f"pyramid / user loop = {ratio['user loop']:.2f}; pyramid / singles = {ratio['singles']:.2f}; "
          f"in-graph / (map + numpy) = {medians['in-graph'] / medians['map + numpy']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    import onnxruntime
    print(f"{platform.machine()}, {platform.processor() or 'cpu'}, onnxruntime {onnxruntime.__version__}, "
          f"sessions as detect makes them (onnxruntime's defaults); {args.rounds} rounds; scale step {SCALE_STEP}")
    with tempfile.TemporaryDirectory() as folder:
        for case in cases(Path(folder)):
            run_case(case, Path(folder), args.rounds)


if __name__ == "__main__":
    main()

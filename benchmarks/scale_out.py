"""Pictures per second of detection in one process and on Ray Data, side by side in one run.

    python benchmarks/scale_out.py [--frames 300] [--size 480x640]      (about 1 minute; needs '.[ray]')

The converted dress detector (fixtures/dress_detector.onnx) on N noise frames saved as PNG, one scale. Three
ways, each over all the frames, everything included (reading, decoding, runs, boxes):
- detect: `fc2conv_onnx.detect(model, frames)` in this process (one session, onnxruntime's threads: one per
  core);
- 1 actor: Ray Data, `from_items(paths).map_batches(Detector, ActorPoolStrategy(size=1))`, the actor's
  session on every core;
- 2 actors: the same with two actors of one thread each (threads = cores / actors).
Two rates each: over all the frames, start-up included (for Ray: starting the actors, each importing the
package and opening the model; not `ray.init`, which a pipeline pays once), and past the first 32 frames
(the difference of a run on 32 frames and one on all: the rate a long job runs at).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fc2conv_onnx  # noqa: E402

from frames import converted_and_frames  # noqa: E402 (benchmarks/, the script's own folder)

#: Each way also runs on this many frames first: the difference is its rate once started.
FEW = 32


def on_ray(ray, model: Path, frames, actors: int, threads: int) -> int:
    return (ray.data.from_items([{"path": frame} for frame in frames])
            .map_batches(fc2conv_onnx.Detector, fn_constructor_args=(str(model),),
                         fn_constructor_kwargs={"threads": threads}, batch_size=16, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads)
            .count())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", default="480x640", help="frame height x width")
    args = parser.parse_args()
    if args.frames < 4 * FEW:
        parser.error(f"--frames must be at least {4 * FEW}: the rate past the first {FEW} frames needs many more")
    import ray

    cores = os.cpu_count() or 1
    height, width = map(int, args.size.split("x"))
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as folder:
        model, frames = converted_and_frames(Path(folder), args.frames, (height, width))
        ways = {"detect, 1 process": lambda some: len(fc2conv_onnx.detect(model, some).records),
                "Ray, 1 actor": lambda some: on_ray(ray, model, some, 1, cores),
                f"Ray, {cores} actors": lambda some: on_ray(ray, model, some, cores, 1)}
        rates, marginal = {}, {}
        for name, way in ways.items():
            times = []
            for some in (frames[:FEW], frames):
                start = time.perf_counter()
                way(some)
                times.append(time.perf_counter() - start)
            rates[name] = args.frames / times[1]
            marginal[name] = (args.frames - FEW) / (times[1] - times[0])
    ray.shutdown()
    print(f"{args.frames} frames of {height}x{width}, dress detector, one scale, {cores} cores")
    print(f"{'':>18}  all frames, start-up included | past the first {FEW} frames")
    for name in ways:
        print(f"{name:>18}: {rates[name]:6.1f} pictures/s ({rates[name] / rates[next(iter(ways))]:.2f}x detect) | "
              f"{marginal[name]:6.1f} pictures/s ({marginal[name] / marginal[next(iter(ways))]:.2f}x detect)")


if __name__ == "__main__":
    main()

"""Camera frames: `detect` on a folder of frames and on the same frames as a video, against the loops a user would
write by hand and against Ray Data with two actors, side by side in one run.

    python benchmarks/camera_frames.py [--frames 40] [--rounds 3] [--no-ray]      (about a minute; needs
                                                                                '.[ray,video]')

The converted dress detector (fixtures/dress_detector.onnx, random weights) on N seeded noise frames of 512x1024,
one scale, saved as PNG and encoded as one lossless video (FFV1, RGB, 10 frames/s). Each way runs over all the
frames, everything included (opening the model, reading and decoding, preprocessing, runs; detect also makes
boxes and suppresses them), in rotated order each round:

  detect folder   fc2conv_onnx.detect(model, frames): the default workers (one per core), one session
  hand folder     onnxruntime's session on the file, then per frame Pillow decode, / 255, NCHW, run, cells above
                  0.5 (no boxes) - the sequential loop of the issue
  detect video    fc2conv_onnx.detect(model, "frames.mkv"): decoded in a thread a few frames ahead, workers as above
  hand video      PyAV decode (frame.to_ndarray), / 255, NCHW, run, cells above 0.5
  ray 2 actors    Ray Data from_items(paths).map_batches(Detector, ActorPoolStrategy(size=2), 1 thread each) on a
                  local cluster started before timing (as a pipeline pays ray.init once)

Printed: medians, and each way's time over the sequential hand loop's (folder) - the issue's target is at most
0.8 - and detect's throughput over Ray's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from interleaved import interleaved, seconds  # noqa: E402
from scale_out import on_ray  # noqa: E402

import fc2conv_onnx  # noqa: E402

from frames import converted_and_frames, hand_loop  # noqa: E402 (benchmarks/, the script's own folder)


def encode(frames, path: Path, rate: int = 10) -> None:
    import av

    out = av.open(str(path), "w")
    stream = out.add_stream("ffv1", rate=rate)
    first = np.asarray(Image.open(frames[0]))
    stream.height, stream.width = first.shape[:2]
    stream.pix_fmt = "bgr0"
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(Image.open(frame).convert("RGB")),
                                                               format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()


def hand_video(model: Path, video: Path) -> int:
    import av

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    found = 0
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            pixels = frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0
            scores = session.run(None, {name: pixels.transpose(2, 0, 1)[None]})[0]
            found += int((scores > 0.5).sum())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true", help="leave Ray Data out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model, frames = converted_and_frames(Path(folder), args.frames, (512, 1024))
        video = Path(folder) / "frames.mkv"
        encode(frames, video)
        ways = {
            "detect folder": lambda: len(fc2conv_onnx.detect(model, frames).records),
            "hand folder": lambda: hand_loop(model, frames),
            "detect video": lambda: len(fc2conv_onnx.detect(model, video).records),
            "hand video": lambda: hand_video(model, video),
        }
        ray = None
        if not args.no_ray:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
            ways["ray 2 actors"] = lambda: on_ray(ray, model, frames, actors=2, threads=1)
        for way in ways.values():  # once untimed: files in the page cache, imports done
            way()
        times = interleaved({name: seconds(way, pause=0.2) for name, way in ways.items()}, args.rounds)
        if ray is not None:
            ray.shutdown()
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["hand folder"]
    print(f"{args.frames} frames of 512x1024, {args.rounds} rounds, {fc2conv_onnx.Detector.__module__} on "
          f"{ort.__version__}")
    for name, median in medians.items():
        print(f"{name:<14} {median:6.3f} s  {args.frames / median:6.1f} frames/s  {median / base:5.2f}x the hand "
              "folder loop")
    if "ray 2 actors" in medians:
        for name in ("detect folder", "detect video"):
            print(f"{name} throughput / ray 2 actors: {medians['ray 2 actors'] / medians[name]:.2f}x")


if __name__ == "__main__":
    main()

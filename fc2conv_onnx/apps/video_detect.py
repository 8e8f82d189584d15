"""detect on a video file or a live stream: the `Detector` (one session) on each sampled frame, as it would run
on that frame saved as a picture, each record carrying the frame's index in the stream and its time in seconds.
Frames are decoded a few ahead in a thread of their own (`video.VideoReader`), so memory stays bounded whatever
the length of the source, and the records come out frame by frame.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, List, Optional, Tuple

from ..errors import printable
from ..model.detections import Detection, DetectionSettings
from .detector import Detector
from .parallel import ordered_map
from .pictures import size_of
from .video import Frame, Sampling, VideoReader

#: Called after each frame is done, as frame_done(frames done so far, that frame).
FrameDone = Callable[[int, Frame], None]


@dataclass
class VideoRun:
    """What a run over a video did: the frames run, those FFmpeg could not decode, and whether the source broke
    off (and why)."""

    source: str
    sampling: Sampling
    frames: int = 0
    detections: int = 0
    corrupt: int = 0
    broken: str = ""
    #: The source's frames a second (None when it does not say) and its frame size (width, height).
    rate: Optional[float] = None
    size: Tuple[int, int] = (0, 0)
    scales: Tuple[float, ...] = ()
    settings: Optional[DetectionSettings] = None
    written: Optional[str] = None
    drawn: Optional[str] = None

    def to_text(self) -> str:
        s = self.settings
        what = f"detections of '{s.output_name}', score above {s.threshold:g}" if s else "detections"
        rate = f" at {self.rate:.4g} frames/s" if self.rate else ""
        lines = [f"{what}: {self.detections} in {self.frames} frame(s) of video '{printable(self.source)}' "
                 f"({self.size[0]}x{self.size[1]}{rate}), at scale(s) {', '.join(f'{v:.4g}' for v in self.scales)}"]
        sampling = self.sampling
        if sampling != Sampling():
            parts = [f"every {sampling.every} frame(s)"] if sampling.every != 1 else []
            parts += [f"{sampling.fps:g} frames/s"] if sampling.fps is not None else []
            parts += [f"from {sampling.start:g} s"] if sampling.start else []
            parts += [f"for {sampling.duration:g} s"] if sampling.duration is not None else []
            lines.append("sampled: " + ", ".join(parts))
        if self.corrupt:
            lines.append(f"{self.corrupt} packet(s) FFmpeg could not decode were skipped")
        if self.broken:
            lines.append(f"the source broke off ({self.broken})")
        lines += [f"written: {self.written}"] if self.written else []
        lines += [f"drawn: {self.drawn}"] if self.drawn else []
        return "\n".join(map(printable, lines))

    def to_dict(self) -> dict:
        return {"source": self.source, "frames": self.frames, "detections": self.detections, "corrupt": self.corrupt,
                "broken": self.broken or None, "rate": self.rate, "size": list(self.size),
                "scales": list(self.scales), "written": self.written, "drawn": self.drawn}


def frames_detected(detector: Detector, reader: VideoReader, run: VideoRun, frame_done: Optional[FrameDone] = None,
                    workers: int = 1) -> Iterator[Tuple[Frame, List[Detection]]]:
    """(frame, its detections best first) for each sampled frame of `reader`, in order, `run` kept up to date;
    `workers` frames run at once (`parallel.ordered_map`)."""
    source = reader.source
    frames = iter(reader)

    def one(frame: Frame) -> Tuple[Frame, List[Detection]]:
        return frame, [replace(d, frame=frame.index, time=frame.time)
                       for d in detector.find(frame.pixels, source, run.scales)]

    try:
        first = next(frames, None)
        if first is None:
            return
        # Every frame of a stream has one size: its scales are planned once, before any runs.
        run.scales = detector.scales_for(detector.framed(size_of(first.pixels)), source)
        for frame, found in ordered_map(one, itertools.chain([first], frames), workers):
            run.frames += 1
            run.detections += len(found)
            yield frame, found
            if frame_done is not None:
                frame_done(run.frames, frame)
    finally:
        run.corrupt, run.broken = reader.corrupt, reader.broken


def open_video(source: Any, sampling: Sampling, settings: DetectionSettings) -> Tuple[VideoReader, VideoRun]:
    """The reader of `source` and the record of its run."""
    name = os.fspath(source)
    reader = VideoReader(name, sampling)
    return reader, VideoRun(name, sampling, rate=reader.rate, size=reader.size, settings=settings)


def detect_video(model: Any, source: Any, settings: Optional[DetectionSettings] = None, *, every: int = 1,
                 fps: Optional[float] = None, start: float = 0.0, duration: Optional[float] = None,
                 **detector_options: Any) -> Iterator[Tuple[Frame, List[Detection]]]:
    """Find objects in each sampled frame of a video file or live stream (a path, rtsp://..., /dev/video0):
    yields (frame, detections) frame by frame - `frame.index`, `frame.time` (seconds), `frame.pixels` - each
    detection carrying the frame's index and time. Needs PyAV (pip install 'fc2conv-onnx[video]').

    Args:
        model, settings: as for `detect`; `detector_options` are `Detector`'s (scales, min_size, max_size,
            preprocessing, refine, cascade, transpose, labels, threads, ...) and detection settings' fields.
        every: run every Nth frame; or `fps`: at most that many frames a second.
        start, duration: from `start` seconds, for `duration` seconds (default: to the end).
    """
    sampling = Sampling(every, fps, start, duration)
    workers = detector_options.pop("workers", None)
    detector = Detector(model, settings, **detector_options)
    workers = detector.use_workers(workers)
    reader, run = open_video(source, sampling, detector.opened.settings)
    yield from frames_detected(detector, reader, run, workers=workers)

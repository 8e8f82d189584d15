"""Frames of a video file or a live stream, decoded by FFmpeg through PyAV (the optional extra `[video]`): each
with its index in the stream and its time in seconds (from its pts), sampled as asked (every Nth frame or a target
rate, from a start time, for a duration). A frame FFmpeg cannot decode is skipped and counted, not fatal; a source
that breaks off ends the frames and says so (`broken`).

The frames are decoded in a thread of their own, a few ahead of the model in a bounded queue: FFmpeg's decoding
releases the GIL, so it runs while onnxruntime does, and memory stays bounded whatever the length of the video.
"""
from __future__ import annotations

import math
import os
import queue
import stat
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from ..errors import InputError, printable
from ..model import arguments

#: File names read as videos (the others are pictures).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv",
                  ".wmv", ".3gp", ".ogv", ".y4m")
#: Sources read as live streams (and cameras: /dev/video0).
STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://", "srt://")
#: How many decoded frames may wait for the model.
QUEUE = 4
INSTALL = "pip install 'fc2conv-onnx[video]'"


def is_video(source: Any) -> bool:
    """Whether `source` names a video: a video file's name, a stream's URL, or a camera device."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    name = os.fspath(source)
    return (name.lower().endswith(VIDEO_SUFFIXES) or name.lower().startswith(STREAM_PREFIXES)
            or name.startswith("/dev/video"))


def is_live(source: str) -> bool:
    """A source that comes as it comes: a stream's URL, a camera, a named pipe (FFmpeg writing into it)."""
    if source.lower().startswith(STREAM_PREFIXES) or source.startswith("/dev/video"):
        return True
    try:
        return stat.S_ISFIFO(os.stat(source).st_mode)
    except OSError:
        return False


def pyav() -> Any:
    """The `av` module, or InputError with the install line."""
    try:
        import av
    except ImportError:
        raise InputError(f"reading video needs PyAV (FFmpeg's Python binding): {INSTALL}") from None
    return av


@dataclass(frozen=True)
class Sampling:
    """Which frames to run: every `every`th one, or at most `fps` a second; from `start` seconds, for `duration`
    seconds (default: to the end)."""

    every: int = 1
    fps: Optional[float] = None
    start: float = 0.0
    duration: Optional[float] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "every", arguments.whole(self.every, "every", 1))
        if self.fps is not None:
            object.__setattr__(self, "fps", arguments.number(self.fps, "fps", positive=True))
        start = arguments.number(self.start, "start")
        if start < 0:
            raise InputError(f"start {start:g} must be 0 or more seconds")
        object.__setattr__(self, "start", start)
        if self.duration is not None:
            object.__setattr__(self, "duration", arguments.number(self.duration, "duration", positive=True))
        if self.every != 1 and self.fps is not None:
            raise InputError("give every (every Nth frame) or fps (a target rate), not both")


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the stream (0 first), its time in seconds, its pixels (H x W x 3 uint8,
    RGB)."""

    index: int
    time: float
    pixels: np.ndarray


class VideoReader:
    """The sampled frames of `source` (a file, a URL, a camera), in order. After the frames: `corrupt` counts the
    frames or packets FFmpeg could not decode, `broken` says why the source ended early ('' when it ended)."""

    def __init__(self, source: str, sampling: Sampling = Sampling()) -> None:
        self.source = source
        self.sampling = sampling
        self.corrupt = 0
        self.broken = ""
        self._av = pyav()
        label = f"video '{printable(source)}'"
        if not is_live(source) and not os.path.isfile(source):
            raise InputError(f"{label} is not a file")
        try:
            self._container = self._av.open(source, timeout=10.0 if is_live(source) else None)
        except Exception as error:
            raise InputError(f"{label} cannot be opened ({_reason(error)})") from None
        streams = self._container.streams.video
        if not streams:
            self._container.close()
            raise InputError(f"{label} has no video stream")
        self._stream = streams[0]
        self._stream.thread_type = "AUTO"  # FFmpeg's own threads where the codec has them
        rate = self._stream.average_rate or self._stream.guessed_rate
        #: Frames a second, as the source says (None when it does not).
        self.rate = float(rate) if rate else None
        self.size = (self._stream.codec_context.width, self._stream.codec_context.height)

    def close(self) -> None:
        try:
            self._container.close()
        except Exception:  # closing a broken stream: nothing more to say
            pass

    def __iter__(self) -> Iterator[Frame]:
        """The frames, decoded a few ahead in a thread (`QUEUE`)."""
        waiting: "queue.Queue[Any]" = queue.Queue(QUEUE)
        stop = threading.Event()
        worker = threading.Thread(target=self._decode_into, args=(waiting, stop), daemon=True,
                                  name="fc2conv-onnx video decoder")
        worker.start()
        try:
            while True:
                item = waiting.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # let the decoder see the stop, and drain what it put meanwhile
                try:
                    waiting.get(timeout=0.05)
                except queue.Empty:
                    pass
            self.close()

    def _decode_into(self, waiting: "queue.Queue[Any]", stop: threading.Event) -> None:
        try:
            for frame in self._sampled():
                while not stop.is_set():
                    try:
                        waiting.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as error:  # handed to the reader, which raises it
            waiting.put(error)
            return
        waiting.put(None)

    def _sampled(self) -> Iterator[Frame]:
        sampling = self.sampling
        end = None if sampling.duration is None else sampling.start + sampling.duration
        taken, next_time = 0, sampling.start
        for index, time, frame in self._decoded():
            if time < sampling.start - 1e-9:
                continue
            if end is not None and time >= end - 1e-9:
                return
            if sampling.fps is not None:
                if time < next_time - 1e-9:
                    continue
                next_time = sampling.start + (math.floor((time - sampling.start) * sampling.fps + 1e-9) + 1) / \
                    sampling.fps
            elif taken % sampling.every:
                taken += 1
                continue
            taken += 1
            yield Frame(index, time, frame.to_ndarray(format="rgb24"))

    def _decoded(self) -> Iterator[tuple]:
        """(index, time in seconds, frame) of every frame, in order; undecodable packets skipped and counted."""
        av = self._av
        index = 0
        rate = self.rate
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.EOFError:
                return
            except av.error.FFmpegError as error:
                self.broken = _reason(error)
                return
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                self.corrupt += 1
                continue
            for frame in frames:
                time = float(frame.time) if frame.time is not None else (index / rate if rate else float(index))
                yield index, time, frame
                index += 1


def _reason(error: BaseException) -> str:
    return str(getattr(error, "strerror", "") or error).splitlines()[0] if str(error) else type(error).__name__


def frame_rows(row: Dict[str, Any], every: int = 1, fps: Optional[float] = None, start: float = 0.0,
               duration: Optional[float] = None) -> Iterator[Dict[str, Any]]:
    """The sampled frames of the video `row["path"]` as rows - path, frame (its index), time (seconds), image (H x W
    x 3 uint8) - for Ray Data's `flat_map` ahead of `map_batches(Detector)`, whose rows then carry each frame's
    index and time (docs/scale-out.md)."""
    reader = VideoReader(os.fspath(row["path"]), Sampling(every, fps, start, duration))
    for frame in reader:
        yield {"path": row["path"], "frame": frame.index, "time": frame.time, "image": frame.pixels}


#: An annotated video's container format, by its name's suffix.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}


def check_drawing_name(name: str) -> None:
    """An annotated video is written as its name says: .mp4, .m4v, .mov, .mkv or .avi."""
    if not name.lower().endswith(tuple(CONTAINERS)):
        raise InputError(f"--draw {printable(name)}: an annotated video is written as {', '.join(CONTAINERS)}; give "
                         "one of those names")


class VideoWriter:
    """An annotated video written frame by frame (H.264 where FFmpeg has it, else MPEG-4 part 2; yuv420p, so the
    frames are cut to even sides), at `rate` frames a second, its frames `size` (width, height); into `path`, in
    the container `name`'s suffix says (`path` may be a temporary of another name). Its stream is made at once,
    so that a run that ends before its first frame still leaves a video (of no frames) a player opens."""

    def __init__(self, path: str, name: str, rate: float, size: Tuple[int, int]) -> None:
        from fractions import Fraction

        self._av = pyav()
        suffix = os.path.splitext(name.lower())[1]
        self._container = self._av.open(path, "w", format=CONTAINERS[suffix])
        codec = "libx264" if "libx264" in self._av.codecs_available else "mpeg4"
        self._stream = self._container.add_stream(codec, rate=Fraction(rate).limit_denominator(1001))
        self.size = (size[0] // 2 * 2, size[1] // 2 * 2)
        self._stream.width, self._stream.height, self._stream.pix_fmt = self.size[0], self.size[1], "yuv420p"

    def add(self, image: Any) -> None:
        """Add `image` (a Pillow RGB image of the writer's size, or one pixel more on a side) as the next frame."""
        if image.size != self.size:
            image = image.crop((0, 0, *self.size))
        for packet in self._stream.encode(self._av.VideoFrame.from_image(image)):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and finish the file (its index written: players can seek it)."""
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()

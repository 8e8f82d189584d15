"""detect on a video, as the command runs it: the records streamed as frames are done - JSON Lines (a file, or
standard output flushed frame by frame, for `jq` and `head`) or CSV - so that a live stream yields output as it
comes, and a run that is interrupted (Ctrl-C, SIGTERM) or whose source breaks off leaves every record of every
frame done, each frame whole; a progress line with the frames and frames a second on a terminal."""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from typing import Any, Callable

from ..apps.records import JSON_LINES, as_csv, as_json_lines, is_csv
from ..apps.video import Frame, Sampling, VideoWriter
from ..errors import ClosedOutputError, InputError, StreamBrokenError, UsageError, printable
from ..model import writes
from ..model.signals import Terminated, held
from . import running
from .flags import PROG, STREAM


def check_output(output: str) -> None:
    """A video's records are written as its frames are done: JSON Lines or CSV, never a JSON list (which a
    stream cut short would leave unreadable)."""
    if output != STREAM and not is_csv(output) and not output.lower().endswith(JSON_LINES):
        raise UsageError(f"-o {printable(output)}: a video's records are written frame by frame, as JSON Lines (one "
                         "record a line: name the file .jsonl) or CSV (.csv), or to standard output (-o -)")


def sampling(args: argparse.Namespace) -> Sampling:
    try:
        return Sampling(args.every or 1, args.fps, args.start or 0.0, args.duration)
    except InputError as error:
        raise UsageError(f"--{str(error).replace('_', '-')}") from None


def run(args: argparse.Namespace, source: str, detector: Any, workers: int = 1) -> Any:
    """Stream the records of `source`'s sampled frames to `args.output`; the run's summary."""
    from ..apps.video_detect import frames_detected, open_video

    reader, run_ = open_video(source, sampling(args), detector.opened.settings)
    csv = is_csv(args.output)
    frame_done = _FrameCounter() if sys.stderr is not None and sys.stderr.isatty() else None
    drawing = ExitStack()

    def stream_into(write: Callable[[bytes], None]) -> None:
        writer = _drawing_writer(args.draw, reader, drawing) if args.draw else None
        if csv:
            write(as_csv([], frames=True).encode())
        try:
            for frame, records in frames_detected(detector, reader, run_, frame_done, workers):
                text = as_csv(records, header=False, frames=True) if csv else as_json_lines(records)
                drawn = draw_records(frame.pixels, records) if writer is not None else None
                with held():  # a frame's records and its drawing go together
                    if text:
                        write(text.encode())
                    if writer is not None:
                        writer.add(drawn)
        finally:
            if writer is not None:
                writer.close()  # the annotated video ends where the records do
        if frame_done is not None:
            frame_done.end()
        if run_.broken:
            raise StreamBrokenError(f"video '{printable(source)}' broke off after {run_.frames} frame(s) "
                                    f"({run_.broken}); the records of those frames were written")

    try:
        with drawing:
            _write_records(args, stream_into, run_)
        if args.draw:
            run_.drawn = str(args.draw)
    except (KeyboardInterrupt, Terminated) as stop:
        where = "standard output" if args.output == STREAM else f"'{printable(args.output)}'"
        stop.kept = (f"interrupted after {run_.frames} frame(s); the records of those frames were written to "  # type: ignore[union-attr]
                     f"{where}, each frame whole" + (" (and drawn)" if args.draw else ""))
        raise
    return run_


def _write_records(args: argparse.Namespace, stream_into: Callable[[Callable[[bytes], None]], None],
                   run_: Any) -> None:
    """The records to standard output (flushed frame by frame) or a file (`writes.streamed`)."""
    if args.output == STREAM:
        out = running.stdout()
        try:
            stream_into(lambda piece: writes.write_piece(piece, out))
        except ClosedOutputError:  # its reader stopped (`| head`)
            raise ClosedOutputError(f"standard output was closed after {run_.frames} frame(s): its reader "
                                    "stopped reading") from None
        run_.written = "standard output"
    else:
        with writes.streamed(args.output) as write:
            stream_into(write)
        run_.written = str(args.output)


def _drawing_writer(draw: str, reader: Any, stack: ExitStack) -> VideoWriter:
    """The annotated video's writer, into a temporary that `stack` commits (also on an interruption)."""
    from ..apps import drawing
    from ..apps.pictures import pillow

    Image, _ = pillow()
    every = reader.sampling.every
    rate = reader.sampling.fps or (reader.rate or 25.0) / every
    factor = drawing.enlargement(Image.new("RGB", reader.size))  # the frames are drawn as pictures are
    name = stack.enter_context(writes.streamed_path(draw))
    return VideoWriter(name, draw, rate, (reader.size[0] * factor, reader.size[1] * factor))


def draw_records(pixels: Any, records: list) -> Any:
    """A frame with its boxes drawn, as detect draws pictures."""
    from ..apps import drawing
    from ..apps.pictures import pillow

    Image, _ = pillow()
    boxes = [(r.box, f"{r.label or r.klass}: {r.score:.2f}", r.klass) for r in records]
    return drawing.draw_boxes(Image.fromarray(pixels), boxes)


class _FrameCounter:
    """frames done and frames a second, on one line of a terminal, at most every half second."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.shown = 0.0
        self.done = 0

    def __call__(self, done: int, frame: Frame) -> None:
        self.done = done
        now = time.monotonic()
        if now - self.shown < 0.5:
            return
        self.shown = now
        rate = done / max(now - self.started, 1e-9)
        running.say(f"\r{PROG}: {done} frame(s), {rate:.1f} frames/s, at {frame.time:.2f} s", end="")

    def end(self) -> None:
        if self.shown:
            running.say("")

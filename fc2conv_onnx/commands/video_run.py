"""detect on a video, as the command runs it: the records streamed as frames are done - JSON Lines (a file, or
standard output flushed frame by frame, for `jq` and `head`) or CSV - so that a live stream yields output as it
comes, and a run that is interrupted (Ctrl-C, SIGTERM) or whose source breaks off leaves every record of every
frame done, each frame whole; a progress line with the frames and frames a second on a terminal."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

from ..apps.records import JSON_LINES, as_csv, as_json_lines, is_csv
from ..apps.video import Frame, Sampling
from ..errors import ClosedOutputError, InputError, StreamBrokenError, UsageError, printable
from ..model import writes
from ..model.writes import Terminated
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


def run(args: argparse.Namespace, source: str, detector: Any) -> Any:
    """Stream the records of `source`'s sampled frames to `args.output`; the run's summary."""
    from ..apps.video_detect import frames_detected, open_video

    reader, run_ = open_video(source, sampling(args), detector.opened.settings)
    csv = is_csv(args.output)
    frame_done = _FrameCounter() if sys.stderr is not None and sys.stderr.isatty() else None

    def stream_into(write: Callable[[bytes], None]) -> None:
        if csv:
            write(as_csv([], frames=True).encode())
        for _, records in frames_detected(detector, reader, run_, frame_done):
            text = as_csv(records, header=False, frames=True) if csv else as_json_lines(records)
            if text:
                write(text.encode())
        if frame_done is not None:
            frame_done.end()
        if run_.broken:
            raise StreamBrokenError(f"video '{printable(source)}' broke off after {run_.frames} frame(s) "
                                    f"({run_.broken}); the records of those frames were written")

    try:
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
    except (KeyboardInterrupt, Terminated) as stop:
        where = "standard output" if args.output == STREAM else f"'{printable(args.output)}'"
        stop.kept = (f"interrupted after {run_.frames} frame(s); the records of those frames were written to "  # type: ignore[union-attr]
                     f"{where}, each frame whole")
        raise
    return run_


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

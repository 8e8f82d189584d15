"""What the commands' handlers share: flags turned into the API's records (a value the API refuses is a usage
error here, exit 2), standard input and output as the commands use them, lines on stderr, and the progress
bar. Only the command line prints."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import fields
from typing import Any, Optional

from ..apps.preprocessing import Preprocessing
from ..errors import ClosedOutputError, Fc2ConvError, InputError, UsageError
from ..model import writes
from ..model.detections import DetectionSettings, checked_scales
from ..plan.options import Options
from .flags import DETECTION_FLAGS, PROG, STREAM

logger = logging.getLogger(__name__)


def detection_settings(args: argparse.Namespace) -> DetectionSettings:
    given = {field: getattr(args, field) for field in DETECTION_FLAGS if getattr(args, field) is not None}
    try:
        return DetectionSettings(**given)
    except InputError as error:  # a flag's value: a usage error here
        raise UsageError(str(error)) from None


def options(args: argparse.Namespace) -> Options:
    """The options record from the flags a subcommand has (the flags are named like its fields)."""
    given = {f.name: getattr(args, f.name) for f in fields(Options) if hasattr(args, f.name)}
    if given.get("emit_detections"):
        given["emit_detections"] = detection_settings(args)
    if getattr(args, "size", None) is not None:  # `validate --size` is the window check's size
        given["validate_size"] = args.size
    try:
        return Options.of(None, given)
    except InputError as error:  # a flag's value: a usage error here
        raise UsageError(str(error)) from None


def model_source(name: str) -> Any:
    """A model argument: a path, or for '-' the bytes of standard input."""
    return sys.stdin.buffer.read() if name == STREAM else name


def stdout() -> Any:
    """Standard output as a binary stream, or None when the process has none (it was closed)."""
    return getattr(sys.stdout, "buffer", None) if sys.stdout is not None else None


def check_stdout(what: str, binary: bool = True) -> None:
    """`-o -`, before any work: standard output must be open, and not a terminal if `what` is binary."""
    if stdout() is None:
        raise ClosedOutputError(f"-o {STREAM}: standard output is closed; nothing was done")
    if binary and sys.stdout is not None and sys.stdout.isatty():
        raise UsageError(f"-o {STREAM} writes {what} to standard output, which is a terminal here; pipe it to a "
                         "program or give a file name")


def check_scales(scales: Optional[tuple]) -> None:
    """--scales (heatmap, detect): what the API takes (`checked_scales`), as a usage error."""
    if scales is not None:
        try:
            checked_scales(scales)
        except InputError as error:
            raise UsageError(f"--{error}") from None


def preprocessing(args: argparse.Namespace) -> Preprocessing:
    """How pixels become the model's input, from the picture flags (heatmap, detect)."""
    scale = args.scale
    if args.older_scale is not None:
        if scale is not None:
            raise UsageError("--scale is the older spelling of --pixel-scale: give one of them")
        logger.warning(
            "--scale %g divides the pixels (now spelled --pixel-scale); the scales of an image pyramid are --scales",
            args.older_scale)
        scale = args.older_scale
    try:
        made = Preprocessing(pixel_scale=255.0 if scale is None else scale, mean=args.mean, std=args.std,
                             channels=args.channels)
    except InputError as error:
        raise UsageError(str(error)) from None
    unusual = made.unusual()
    if unusual:
        logger.warning("%s", unusual)
    return made


def no_stdin_for_pictures(args: argparse.Namespace, pictures: list) -> None:
    """detect and heatmap open the model file with onnxruntime (which finds its data files next to it) and read
    pictures as files: '-' (standard input) is neither."""
    if args.model == STREAM or STREAM in pictures:
        what = "the model" if args.model == STREAM else "a picture"
        raise UsageError(f"{args.command} reads {what} from a file: '{STREAM}' (standard input) is taken only as "
                         "the model of convert, validate and inspect")


def say(text: str, end: str = "\n") -> None:
    """A line on stderr, for people; nothing when stderr is closed or failing (there is no one to tell)."""
    try:
        writes.write_text(text + end, sys.stderr, "standard error")
    except Fc2ConvError:
        pass


class ProgressBar:
    """Progress of a long step on stderr, for people watching a terminal (silent otherwise)."""

    DELAY = 1.0  # seconds before showing anything: short runs stay quiet

    def __init__(self, what: str = "windows") -> None:
        self.started = time.monotonic()
        self.shown = False
        self.what = what

    def __call__(self, done: int, total: int) -> None:
        if not self.shown and (done >= total or time.monotonic() - self.started < self.DELAY):
            return  # a run that ends within the delay draws nothing
        self.shown = True
        width = 30
        filled = width * done // max(total, 1)
        end = "\n" if done >= total else ""
        say(f"\r{PROG}: {self.what} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end)


def progress(what: str = "windows") -> Optional[ProgressBar]:
    return ProgressBar(what) if sys.stderr is not None and sys.stderr.isatty() else None

"""Command line: a thin shell over the API. Only this module prints.

Exit codes (also in the README):
  0  converted (`inspect`: the model was read; `validate`: the pair is equivalent)
  1  internal error (a bug: please report it)
  2  usage error (bad command line, or a flag value that cannot be used)
  3  bad input: missing, unreadable or invalid model, a trunk that bakes its size, dynamic spatial dims
     without --input-size, or an unusable output path
  4  nothing to convert (no convertible head, a --pooling mode a head cannot have, or already converted)
  5  validation failed: the converted model is not equivalent; nothing was written
  6  out of resources: memory ran out, or the output's disk is full; nothing was written
  7  -o -: standard output was closed before everything was written
  130, 143  interrupted (Ctrl-C, SIGTERM); temporaries removed, a previous OUT kept whole
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from .apps.pictures import Preprocessing, picture_files
from .apps.records import json_text
from .errors import ClosedOutputError, Fc2ConvError, InputError, ResourceError, UsageError, printable
from .model import guard, ort, writes
from .model.detections import DetectionSettings, checked_scales
from .model.writes import Terminated, signals_raise
from .parsers import DETECTION_FLAGS, PROG, STREAM, build_parser
from .plan.options import Options

if TYPE_CHECKING:
    from .report import Report

# The converter (and onnx, a second to import) is imported by the commands that convert, not at start:
# detect, heatmap and --help run without it.

logger = logging.getLogger(__name__)

def _detection_settings(args: argparse.Namespace) -> DetectionSettings:
    given = {field: getattr(args, field) for field in DETECTION_FLAGS if getattr(args, field) is not None}
    try:
        return DetectionSettings(**given)
    except InputError as error:  # a flag's value: a usage error here
        raise UsageError(str(error)) from None


class _ProgressBar:
    """Progress of the window check on stderr, for people watching a terminal (silent otherwise)."""

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
        _say(f"\r{PROG}: {self.what} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end)


def _progress(what: str = "windows") -> Optional[_ProgressBar]:
    return _ProgressBar(what) if sys.stderr is not None and sys.stderr.isatty() else None


def _options(args: argparse.Namespace) -> Options:
    """The options record from the flags a subcommand has (the flags are named like its fields)."""
    given = {f.name: getattr(args, f.name) for f in fields(Options) if hasattr(args, f.name)}
    if given.get("emit_detections"):
        given["emit_detections"] = _detection_settings(args)
    if getattr(args, "size", None) is not None:  # `validate --size` is the window check's size
        given["validate_size"] = args.size
    try:
        return Options.of(None, given)
    except InputError as error:  # a flag's value: a usage error here
        raise UsageError(str(error)) from None




def _model_source(name: str):
    """A model argument: a path, or for '-' the bytes of standard input."""
    return sys.stdin.buffer.read() if name == STREAM else name


def _run_convert(args: argparse.Namespace) -> Report:
    from . import api

    given = [flag for field, flag in DETECTION_FLAGS.items() if getattr(args, field) is not None]
    if given and not args.emit_detections:
        raise UsageError(f"{given[0]} sets the detector of --emit-detections; add --emit-detections or leave it out")
    if args.output != STREAM:
        if args.input == STREAM:  # `convert - -o m.onnx < m.onnx`: the file behind standard input is read too
            guard.check_outputs([("-o", args.output)], guard.Reads().add_stream("standard input's file", 0))
        return api.convert_file(_model_source(args.input), args.output, _options(args), progress=_progress(),
                                in_place=args.in_place, external_data=args.external_data)
    if args.external_data or args.in_place:
        raise UsageError(f"-o {STREAM} writes the model to standard output, whole: it cannot go with "
                         f"{'--external-data' if args.external_data else '--in-place'}")
    _check_stdout("the model")
    conversion = api.convert_with_report(_model_source(args.input), _options(args), progress=_progress())
    writes.write_stream(conversion.model.SerializeToString(), _stdout())
    conversion.report.output = "standard output"
    return conversion.report


def _run_validate(args: argparse.Namespace) -> Report:
    from . import api

    if args.original == args.converted == STREAM:
        raise UsageError(f"only one of ORIGINAL and CONVERTED can be {STREAM} (standard input)")
    return api.validate_pair(_model_source(args.original), _model_source(args.converted), _options(args),
                             progress=_progress())


def _run_inspect(args: argparse.Namespace) -> Report:
    from . import api

    report = api.inspect(_model_source(args.input), _options(args))
    if not report.plan.heads:
        raise api.nothing_to_convert(report.plan, args.input)
    return report


def _no_stdin_for_pictures(args: argparse.Namespace, pictures: List[str]) -> None:
    """detect and heatmap open the model file with onnxruntime (which finds its data files next to it) and read
    pictures as files: '-' (standard input) is neither."""
    if args.model == STREAM or STREAM in pictures:
        what = "the model" if args.model == STREAM else "a picture"
        raise UsageError(f"{args.command} reads {what} from a file: '{STREAM}' (standard input) is taken only as "
                         "the model of convert, validate and inspect")


def _run_heatmap(args: argparse.Namespace):
    _no_stdin_for_pictures(args, [args.image])
    if args.output == STREAM:
        _check_stdout("the PNG")
    _check_scales(args.scales)
    value_range = args.value_range
    if value_range is not None and (len(value_range) != 2 or value_range[0] >= value_range[1]):
        raise InputError(f"--range needs LOW,HIGH with LOW < HIGH, not {','.join(map(str, value_range))}")
    from .apps.heatmaps import heatmap

    drawn = heatmap(args.model, args.image, _stdout() if args.output == STREAM else args.output,
                    output_name=args.output_name, classes=args.classes, top=args.top,
                    preprocessing=_preprocessing(args), alpha=args.alpha, value_range=value_range,
                    resize=args.resize, scales=args.scales)
    if args.output == STREAM:
        drawn.output = "standard output"
    return drawn


def _stdout():
    """Standard output as a binary stream, or None when the process has none (it was closed)."""
    return getattr(sys.stdout, "buffer", None) if sys.stdout is not None else None


def _check_stdout(what: str, binary: bool = True) -> None:
    """`-o -`, before any work: standard output must be open, and not a terminal if `what` is binary."""
    if _stdout() is None:
        raise ClosedOutputError(f"-o {STREAM}: standard output is closed; nothing was done")
    if binary and sys.stdout is not None and sys.stdout.isatty():
        raise UsageError(f"-o {STREAM} writes {what} to standard output, which is a terminal here; pipe it to a "
                         "program or give a file name")


def _check_scales(scales: Optional[tuple]) -> None:
    """--scales (heatmap, detect): what the API takes (`checked_scales`), as a usage error."""
    if scales is not None:
        try:
            checked_scales(scales)
        except InputError as error:
            raise UsageError(f"--{error}") from None


def _preprocessing(args: argparse.Namespace) -> Preprocessing:
    scale = args.scale
    if args.older_scale is not None:
        if scale is not None:
            raise UsageError("--scale is the older spelling of --pixel-scale: give one of them")
        logger.warning(
            "--scale %g divides the pixels (now spelled --pixel-scale); the scales of an image pyramid are --scales",
            args.older_scale)
        scale = args.older_scale
    try:
        preprocessing = Preprocessing(scale=255.0 if scale is None else scale, mean=args.mean, std=args.std,
                                      channels=args.channels)
    except InputError as error:
        raise UsageError(str(error)) from None
    unusual = preprocessing.unusual()
    if unusual:
        logger.warning("%s", unusual)
    return preprocessing


def _run_detect(args: argparse.Namespace):
    _no_stdin_for_pictures(args, args.images)
    sizes = {"--min-size": args.min_size, "--max-size": args.max_size, "--scale-step": args.scale_step}
    if args.scales is not None and any(v is not None for v in sizes.values()):
        raise UsageError("--scales and --min-size/--max-size/--scale-step cannot go together")
    _check_scales(args.scales)
    if args.output == STREAM:
        _check_stdout("the detections", binary=False)
    if args.draw == "":
        raise UsageError("--draw needs a PNG or a folder, not an empty name")
    images = picture_files(args.images)  # folders and patterns: the pictures in them
    several = images != args.images[:1]  # more than one picture, or a folder or pattern of any
    into_folder = bool(args.draw) and (several or os.path.isdir(args.draw) or args.draw.endswith(("/", os.sep)))
    if into_folder and os.path.exists(args.draw) and not os.path.isdir(args.draw):
        raise UsageError(f"--draw {printable(args.draw)}: with several pictures it is a folder, and this is a file")
    settings = _detection_settings(args)
    drawings = _drawings(images, args.draw, into_folder)
    outputs = ([] if args.output == STREAM else [("-o", args.output)]) + \
        [(f"--draw's drawing of {printable(image)}", drawing) for image, drawing in drawings]
    guard.check_outputs(outputs, guard.pictures_read(args.model, images),
                        folder_to_make=args.draw if into_folder else None)
    from .apps.detecting import detect

    found = detect(args.model, images, settings, scales=args.scales, min_size=args.min_size,
                   max_size=args.max_size, scale_step=args.scale_step, preprocessing=_preprocessing(args),
                   progress=_progress("runs"))
    made = _make_folders(args.draw) if into_folder else []
    try:
        with writes.together() as group:  # the records and the drawings appear together, or none of them
            if args.output != STREAM:
                group.add(found.text(args.output).encode(), args.output)
                found.written = str(args.output)
            for image, drawing in drawings:
                group.add(found.drawing(image), drawing)
                found.drawn += (str(drawing),)
    except BaseException:
        for folder in reversed(made):  # innermost first: a run leaves no folder it made
            _remove_if_empty(folder)
        raise
    if args.output == STREAM:
        writes.write_stream(found.text().encode(), _stdout())
        found.written = "standard output"
    return found


def _drawings(images: List[str], draw: Optional[str], into_folder: bool) -> List[tuple]:
    """(picture, PNG to draw it in) for --draw: the PNG for one picture, else (or when it names a folder) one
    per picture in the folder, named after the picture."""
    if not draw:
        return []
    if not into_folder:
        return [(images[0], draw)]
    names = [os.path.splitext(os.path.basename(image))[0] + ".png" for image in images]
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    if twice:
        raise UsageError(f"--draw {printable(draw)}: two pictures would be drawn as {printable(twice[0])}; give "
                         "them distinct names")
    return [(image, os.path.join(draw, name)) for image, name in zip(images, names)]


def _make_folders(draw: str) -> List[str]:
    """The --draw folder and any missing folders above it, made once every check has passed (a refused run
    leaves none); returns those this run made, outermost first, so that a run that fails after can remove
    them."""
    missing = []
    folder = os.path.normpath(draw)
    while folder and not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    made: List[str] = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue
        except OSError as error:
            for done in reversed(made):
                _remove_if_empty(done)
            raise InputError(f"--draw {printable(draw)}: cannot make the folder '{printable(folder)}' "
                             f"({error.strerror})") from None
        made.append(folder)
    return made


def _remove_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:  # not empty: another program put something there meanwhile
        pass


def _print_report(report: Optional[Report], args: argparse.Namespace, error: Optional[Fc2ConvError] = None) -> None:
    """The report on stdout (on stderr when stdout carries the model), as text unless -q, or as JSON; through
    the checked writer (ClosedOutputError or ResourceError when the stream fails)."""
    stream = sys.stderr if getattr(args, "output", None) == STREAM else sys.stdout
    if args.json:
        payload = report.to_dict() if report is not None else {}
        if error is not None:
            payload["error"] = {"message": str(error), "exit_code": error.exit_code}
        writes.write_text(json_text(payload) + "\n", stream, "the report's stream")
    elif report is not None and not args.quiet:
        writes.write_text(report.to_text() + "\n", stream, "the report's stream")


def _finish(report: Any, args: argparse.Namespace) -> int:
    """The report of a run that succeeded, and the exit code. A report that cannot be written (a full disk, a
    reader gone) does not undo a result already written to a file or to standard output (exit 0, and a note
    on stderr if it takes one); when the report is the result (inspect, validate), its exit code is the
    stream's (6 or 7)."""
    try:
        _print_report(report, args)
    except Fc2ConvError as error:
        written = [getattr(report, name, None) for name in ("output", "written")] + list(getattr(report, "drawn", ()))
        if any(written):  # a file, or standard output whole (the report then goes to stderr)
            _say(f"{PROG}: note: the report was not written ({error}); the result was written")
            return 0
        _say(f"{PROG}: error: {error}")
        return error.exit_code
    return 0


def _say(text: str, end: str = "\n") -> None:
    """A line on stderr, for people; nothing when stderr is closed or failing (there is no one to tell)."""
    try:
        writes.write_text(text + end, sys.stderr, "standard error")
    except Fc2ConvError:
        pass


class _StderrHandler(logging.Handler):
    """Log lines on stderr through `_say`: control characters escaped (they carry names from the model), bytes
    the stream cannot encode escaped, and a closed stderr ignored."""

    def emit(self, record: logging.LogRecord) -> None:
        _say(printable(self.format(record)))


#: What each command runs.
_RUNS: Dict[str, Callable[[argparse.Namespace], Any]] = {
    "convert": _run_convert, "validate": _run_validate, "inspect": _run_inspect, "heatmap": _run_heatmap,
    "detect": _run_detect}
#: The commands that read a model with onnx and graphsurgeon (the others run a converted one in onnxruntime).
_CONVERTER_COMMANDS = ("convert", "validate", "inspect")


def _silence_graphsurgeon() -> None:
    """graphsurgeon prints its log to standard output (where `-o -` writes the model), in colour, with a note
    that the `colored` module is missing; what it has to say reaches users as this tool's own errors."""
    from onnx_graphsurgeon.logger import G_LOGGER

    G_LOGGER.colors = False
    G_LOGGER.severity = G_LOGGER.CRITICAL + 1  # critical() still raises, which the stages turn into errors


def main(argv: Optional[List[str]] = None) -> int:
    _occupy_closed_descriptors()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v and -q cannot go together")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    # The package's own loggers, not the root one: a program (or a test) that calls main() again, or has
    # configured logging its own way, still gets this run's lines, once.
    package = logging.getLogger(__package__)
    package.handlers, package.propagate = [handler], False
    package.setLevel(level)
    ort.QUIET_IMPORT["on"] = True  # the process is this command's: onnxruntime's import line goes nowhere
    run: Callable[[argparse.Namespace], Report] = _RUNS[args.command]
    if args.command in _CONVERTER_COMMANDS:
        _silence_graphsurgeon()
    try:
        with signals_raise():  # SIGTERM unwinds like Ctrl-C: temporaries (written or validation's) go
            report = run(args)
    except Fc2ConvError as error:
        try:
            if args.json:
                _print_report(error.report, args, error)
            elif error.report is not None and args.command == "inspect" and not args.quiet and \
                    not error.report.plan.heads:  # what was found and why none converts
                writes.write_text(error.report.to_text() + "\n", sys.stdout, "standard output")
        except Fc2ConvError:
            pass  # the error's own exit code says what went wrong first
        _say(f"{PROG}: error: {error}")
        return error.exit_code
    except (KeyboardInterrupt, Terminated) as stop:
        _say(f"{PROG}: interrupted; temporaries removed, and any previous output is as it was or wholly "
             "replaced, never partial")
        return 128 + (stop.number if isinstance(stop, Terminated) else signal.SIGINT)
    except MemoryError:
        _say(f"{PROG}: error: out of memory; nothing was written")
        return ResourceError.exit_code
    except Exception as error:  # a bug: one line, and the way to see more
        message = printable(" ".join(str(error).split()))
        _say(f"{PROG}: internal error ({type(error).__name__}: {message}); nothing was written. "
             "Please report it with the model if you can.")
        if args.verbose:
            raise
        return 1
    return _finish(report, args)


def _occupy_closed_descriptors() -> None:
    """A process started with standard input, output or error closed (`2>&-`) would give their numbers to the
    next files it opens - a model being written, say - and whatever writes to "standard error" (onnxruntime
    does, below Python) would write into that file. They are pointed at /dev/null first; Python's own view of
    them (None: closed) stays as it was."""
    for number in (0, 1, 2):
        try:
            os.fstat(number)
        except OSError:
            try:
                handle = os.open(os.devnull, os.O_RDWR)
                if handle != number:
                    os.dup2(handle, number)
                    os.close(handle)
            except OSError:
                pass

"""Command line: a thin shell over the API, and the one place that prints. The commands themselves (flags,
help, exit codes, handler) are one module each in `commands/`; this module parses, runs the one asked for,
prints its report, and maps every error to its exit code in one place.

Exit codes (also in the README; each command's --help lists its own):
  0  done (`inspect`: a head would be converted; `validate`: the pair is equivalent)
  1  internal error (a bug: please report it)
  2  usage error (bad command line, or a flag value that cannot be used)
  3  bad input: missing, unreadable or invalid model, a trunk that bakes its size, dynamic spatial dims
     without --input-size, or an unusable output path
  4  nothing to convert (no convertible head, a --pooling mode a head cannot have, or already converted)
  5  validation failed: the converted model is not equivalent; nothing was written
  6  out of resources: memory ran out, or the output's disk (or the report's) is full; nothing was written
  7  a stream's reader went away (-o -, or the report that is the result) before everything was written
  130, 143  interrupted (Ctrl-C, SIGTERM); temporaries removed, a previous OUT kept whole
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, List, Optional

from .apps.records import json_text
from .commands import BY_NAME, build_parser
from .commands.flags import PROG, STREAM
from .commands.running import say
from .errors import Fc2ConvError, ResourceError, printable
from .model import ort, writes
from .model.signals import Terminated, signals_raise

if TYPE_CHECKING:
    from .report import Report

# The converter (and onnx, a second to import) is imported by the commands that convert, not at start:
# detect, heatmap and --help run without it.


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
            say(f"{PROG}: note: the report was not written ({error}); the result was written")
            return 0
        say(f"{PROG}: error: {error}")
        return error.exit_code
    return 0


class _StderrHandler(logging.Handler):
    """Log lines on stderr through `say`: control characters escaped (they carry names from the model), bytes
    the stream cannot encode escaped, and a closed stderr ignored."""

    def emit(self, record: logging.LogRecord) -> None:
        say(printable(self.format(record)))


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
    command = BY_NAME[args.command]
    if command.CONVERTER:
        _silence_graphsurgeon()
    try:
        with signals_raise():  # SIGTERM unwinds like Ctrl-C: temporaries (written or validation's) go
            report = command.run(args)
    except Fc2ConvError as error:
        try:
            if args.json:
                _print_report(error.report, args, error)
            elif error.report is not None and args.command == "inspect" and not args.quiet and \
                    not error.report.plan.heads:  # what was found and why none converts
                writes.write_text(error.report.to_text() + "\n", sys.stdout, "standard output")
        except Fc2ConvError:
            pass  # the error's own exit code says what went wrong first
        say(f"{PROG}: error: {error}")
        return error.exit_code
    except (KeyboardInterrupt, Terminated) as stop:
        say(f"{PROG}: {getattr(stop, 'kept', '')}" if getattr(stop, "kept", "") else
            f"{PROG}: interrupted; temporaries removed, and any previous output is as it was or wholly "
            "replaced, never partial")
        return 128 + (stop.number if isinstance(stop, Terminated) else signal.SIGINT)
    except MemoryError:
        say(f"{PROG}: error: out of memory; nothing was written")
        return ResourceError.exit_code
    except Exception as error:  # a bug: one line, and the way to see more
        message = printable(" ".join(str(error).split()))
        say(f"{PROG}: internal error ({type(error).__name__}: {message}); nothing was written. "
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

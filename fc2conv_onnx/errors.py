"""The exceptions a user can meet, each carrying the CLI exit code it maps to.

The CLI turns any `Fc2ConvError` into one line on stderr and its `exit_code`; anything else is a bug.
"""
from __future__ import annotations

import re
from typing import Any


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (library errors can run to pages)."""
    return (str(error).strip() or type(error).__name__).splitlines()[0]


#: onnxruntime's decorations around a message: terminal colour codes, its error-code prefix, and the
#: source file and function that raised it.
_RUNTIME_NOISE = (re.compile(r"\x1b\[[0-9;]*m"), re.compile(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*"),
                  re.compile(r"/\S*onnxruntime_src/\S+:\d+\s+[^()\s]*(\([^)]*\))?\s*"),
                  re.compile(r"^Load model from .* failed:\s*"))  # the file is named by our words already


#: Control characters (C0, DEL, C1): names and strings from a model are shown with these escaped, so that a
#: name cannot forge report lines or send escape sequences to the terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with every control character (newlines too) written as a Python escape (\\n, \\x1b)."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def runtime_message(error: BaseException) -> str:
    """onnxruntime's message for `error`, on one line, without its decorations."""
    text = str(error)
    for noise in _RUNTIME_NOISE:
        text = noise.sub("", text)
    return " ".join(text.split()) or type(error).__name__


class Fc2ConvError(Exception):
    """Base of every error the tool reports to a user. The message is a single line."""

    exit_code = 1

    def __init__(self, message: str, *, report: Any = None) -> None:
        super().__init__(printable(" ".join(message.split())))
        #: The conversion report so far, when there is one (e.g. what was skipped and why).
        self.report = report


class UsageError(Fc2ConvError):
    """A command-line flag has a value that cannot be used."""

    exit_code = 2


class InputError(Fc2ConvError):
    """The input is missing, unreadable or not a valid ONNX model, or the output path is unusable."""

    exit_code = 3


class NothingToConvertError(Fc2ConvError):
    """The model has no fully connected head that can be converted (or was converted already)."""

    exit_code = 4


class ResourceError(Fc2ConvError):
    """The machine ran out of something the run needs: memory, or space on the output's disk."""

    exit_code = 6


class ClosedOutputError(Fc2ConvError):
    """Standard output was closed before everything was written (a pipe whose reader stopped early, like
    `| head -c 10`, or no standard output at all): what the reader got is incomplete."""

    exit_code = 7


class StreamBrokenError(Fc2ConvError):
    """A video source (a live stream, a camera, a truncated file) broke off before its end: the records of every
    frame done were written, each frame's whole."""

    exit_code = 8


class ValidationError(Fc2ConvError):
    """The converted model could not be proven equivalent to the original; nothing was written."""

    exit_code = 5

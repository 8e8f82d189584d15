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
                  re.compile(r"/\S*onnxruntime_src/\S+:\d+\s+[^()\s]*(\([^)]*\))?\s*"))


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
        super().__init__(" ".join(message.split()))
        #: The conversion report so far, when there is one (e.g. what was skipped and why).
        self.report = report


class InputError(Fc2ConvError):
    """The input is missing, unreadable or not a valid ONNX model, or the output path is unusable."""

    exit_code = 3


class NothingToConvertError(Fc2ConvError):
    """The model has no fully connected head that can be converted (or was converted already)."""

    exit_code = 4


class ValidationError(Fc2ConvError):
    """The converted model could not be proven equivalent to the original; nothing was written."""

    exit_code = 5

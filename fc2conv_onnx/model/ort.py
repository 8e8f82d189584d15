"""onnxruntime as this tool uses it, without onnx: its import, the session settings for each use, sessions on
a model file, and its failures as this tool's one-line errors. `detect` and `heatmap` run converted models
through this module alone, so they start without importing onnx (about a second, mostly ml_dtypes);
`runtime` builds the sessions that run on a graph in memory on top of it."""
from __future__ import annotations

import importlib
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from ..errors import Fc2ConvError, InputError, ResourceError, ValidationError, runtime_message
from . import work

#: What a session is for, which sets its memory and threads. CHECK: a run or two, sessions one after another
#: (validation, planning's probes). PICTURES: one session, many runs (heatmap, detect).
CHECK, PICTURES = "check", "pictures"

#: How much of onnxruntime's graph optimization a session gets. OFF is the other rounding of a model that
#: validation measures its own noise by (prove/rounding.py).
FULL, BASIC, OFF = "full", "basic", "off"

#: What to try when validation runs out of memory.
VALIDATION_HINT = "try a smaller --validate-size"


#: Set by the command line, which owns its process: onnxruntime's first import runs with the process's standard
#: error pointed at /dev/null. Its import writes a line of its own there, in colour, where no setting reaches
#: it yet ("Failed to persist telemetry device ID", whenever HOME is not writable).
QUIET_IMPORT = {"on": False}


def onnxruntime() -> Any:
    """The onnxruntime module, imported at the first session (importing the package stays light)."""
    if QUIET_IMPORT["on"] and "onnxruntime" not in sys.modules:
        with _standard_error_silenced():
            importlib.import_module("onnxruntime")
    import onnxruntime as ort

    # Its log lines (coloured, on stderr) would reach users of a successful run; its messages reach them
    # through our errors instead (errors.runtime_message).
    ort.set_default_logger_severity(4)
    return ort


@contextmanager
def _standard_error_silenced() -> Iterator[None]:
    """Descriptor 2 pointed at /dev/null for the block (below Python: onnxruntime writes to it directly)."""
    try:
        saved = os.dup(2)
    except OSError:  # no standard error at all: nothing to silence
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def session_options(use: str, optimization: str = FULL, threads: Optional[int] = None) -> Any:
    """onnxruntime's SessionOptions for `use`; `optimization` FULL, BASIC (the basic graph level) or OFF;
    `threads`: the threads one run uses (default: onnxruntime's, one per core)."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    levels = {FULL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL, BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              OFF: ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 4
    if use == CHECK:
        # Sessions run one after another: a session's threads spin-waiting after its run would take a core
        # from the next one (measured: 30-50 ms each time, see the project's benchmarking notes), and an
        # arena would keep each one's peak memory until it is dropped.
        options.enable_cpu_mem_arena = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # PICTURES: onnxruntime's defaults, as a hand loop has them: the arena reuses one run's buffers in the
    # next, and threads spin briefly between runs.
    return options


def file_session(path: Path, use: str, what: str, hint: str, threads: Optional[int] = None) -> Any:
    """An onnxruntime session on the model file `path` (onnxruntime reads it and its external data itself,
    as a hand-written loop does), or the one-line error of `failure`."""
    work.count(work.SESSIONS)
    source: Any = str(path)
    if not _encodable(source):
        source = _bytes_of_unnameable(path, what)
    try:
        return onnxruntime().InferenceSession(source, session_options(use, threads=threads),
                                              providers=["CPUExecutionProvider"])
    except Exception as error:
        raise failure(error, what, True, hint, doing="load") from None


def _encodable(name: str) -> bool:
    """Whether onnxruntime can be given `name`: its binding takes UTF-8 text, and a file name of other bytes
    (os.fsdecode's lone surrogates) is not."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bytes_of_unnameable(path: Path, what: str) -> bytes:
    """The bytes of a model file whose name onnxruntime cannot take: they are given instead, which is the same
    model unless it names external-data files (found relative to the model's path, which onnxruntime then
    does not have): those are refused in this tool's words."""
    from .wire import external_locations

    if external_locations(path):
        raise InputError(f"{what}: its file name is not valid UTF-8, which onnxruntime cannot open, and its weights "
                         "are in external-data files it would find by that name; rename the model's file")
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"{what} cannot be read ({error.strerror or error})") from None


#: onnxruntime's words for an allocation that failed (a thread it could not start included: ENOMEM's text).
_OUT_OF_MEMORY = ("bad_alloc", "failed to allocate", "out of memory", "bad allocation", "cannot allocate memory",
                  "failed to map segment")  # the last: its library could not be loaded


def failure(error: Exception, what: str, original: bool, hint: str = VALIDATION_HINT,
            doing: str = "run") -> Fc2ConvError:
    """The one-line error for `what` failing in onnxruntime (to `doing`: "run", or "load"): out of memory
    (ResourceError, with `hint`: what the command's user can try), the input's fault (`original`: InputError,
    nothing can be proven against it) or the conversion's (ValidationError)."""
    message = runtime_message(error)
    if isinstance(error, MemoryError) or any(words in message.lower() for words in _OUT_OF_MEMORY):
        return ResourceError(f"out of memory while running {what}; {hint}")
    return (InputError if original else ValidationError)(f"{what} does not {doing} in onnxruntime: {message}")

"""Writing models and pictures with one commit point: at every instant the output path holds the complete
previous result or the complete new one.

A model with external data is a pair, `OUT` and its data file. The new data file is written under a name
that nothing refers to yet (`OUT.data`, or `OUT.1.data`, ... when that name is taken), reserved exclusively
so that two runs never share one; the model is written to a temporary file and renamed onto `OUT`: that
rename is the one commit. Only then is the data file the previous `OUT` referred to removed. A failure or a
signal before the commit removes what this run made and leaves the previous pair as it was; a kill (which
no code can catch) leaves at worst an orphan temporary (`.OUT.*.tmp`, or an unreferenced data file), which
later runs ignore. Concurrent runs to one output end with the pair of whichever committed last.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import onnx

from .errors import ClosedOutputError, InputError, ResourceError, printable
from .weights import EMBEDDED_LIMIT, Weights, read_skeleton

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Errors that mean the disk, not the path, is the problem.
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when two paths name the same file (also through links), whether or not b exists yet."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        try:
            return Path(a).resolve() == Path(b).resolve()
        except (OSError, ValueError):
            return os.path.abspath(a) == os.path.abspath(b)


def write_stream(data: bytes, stream: Any, what: str = "standard output") -> None:
    """Write all of `data` to a binary stream and flush it, or fail saying how much went: no space (exit 6) or a
    reader that went away (exit 7), never "written" after a short write."""
    if stream is None:
        raise ClosedOutputError(f"{what} is closed; nothing was written")
    try:
        stream.write(data)
        stream.flush()
    except (BrokenPipeError, ValueError) as error:  # EPIPE; ValueError: the stream object was closed
        _detach(stream)
        raise ClosedOutputError(f"{what} was closed before the {len(data)} bytes were all written ({error}); what "
                                "its reader got is incomplete") from None
    except OSError as error:
        _detach(stream)
        if error.errno in _NO_SPACE:
            raise ResourceError(f"{what} ran out of space before the {len(data)} bytes were all written; what was "
                                "written there is incomplete") from None
        raise ClosedOutputError(f"{what} cannot be written ({error.strerror or error}); what was written there is "
                                "incomplete") from None


def _detach(stream: Any) -> None:
    """After a failed write to standard output, point it at /dev/null: Python would otherwise try the same write
    again when it exits and print a second, raw error."""
    try:
        if stream in (sys.stdout.buffer, sys.stdout):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def refuse_writing_over(outputs: Sequence[Tuple[str, PathLike]], inputs: Sequence[Tuple[str, PathLike]]) -> None:
    """Refuse (exit 3, before any work) an output that is one of the command's inputs or another of its outputs,
    compared as files (device and inode, through links and other spellings of the path): `detect M P -o P`,
    `heatmap M P -o M`, a --draw drawing named like a picture it reads. Each pair is (what it is, its path)."""
    for index, (what, output) in enumerate(outputs):
        for other, path in list(inputs) + list(outputs[:index]):
            if same_file(path, output):
                kind = "an input" if (other, path) in inputs else "another of its outputs"
                raise InputError(f"{what} {printable(str(output))} is {other} {printable(str(path))}, {kind}; "
                                 "the command never writes over what it reads or writes: give another name")


def check_output_path(output: PathLike) -> Path:
    """Refuse, before any work is done, an output path that cannot be written: a folder, a missing or
    read-only folder, a name too long for the folder's file system, or a device, FIFO or socket (or a link
    to one), which a rename would replace by a regular file."""
    path = Path(output)
    shown = printable(str(path))
    folder = path.parent if str(path.parent) else Path(".")
    try:
        if path.is_dir():
            raise InputError(f"output '{shown}' is a directory; give a file name")
        if not folder.is_dir():
            raise InputError(f"output folder '{printable(str(folder))}' does not exist")
        if not os.access(folder, os.W_OK):
            raise InputError(f"output folder '{printable(str(folder))}' is not writable")
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            raise InputError(f"output '{shown}' is a device, FIFO or socket (or a link to one), not a file; give "
                             "a file name")
        longest = os.pathconf(folder, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    except (OSError, ValueError) as error:
        raise InputError(f"output '{shown}' cannot be used ({getattr(error, 'strerror', None) or error})") from None
    # The longest name written next to it: '.OUT.xxxxxxxx.tmp' or 'OUT.NN.data'.
    if len(os.fsencode(path.name)) + 16 > longest:
        raise InputError(f"output name '{printable(path.name[:60])}...' is too long ({len(path.name)} characters; the "
                         f"file system takes {longest}, and the tool adds up to 16)")
    return path


def data_file_candidates(output: Path) -> Iterator[str]:
    """The names a data file next to `output` may get, in order of preference: OUT.data, OUT.1.data, ..."""
    yield output.name + ".data"
    for number in range(1, 100):
        yield f"{output.name}.{number}.data"


def save_model(model: onnx.ModelProto, weights: Weights, output: PathLike,
               external_data: Optional[bool] = None, overwrite_input: bool = False) -> Optional[Path]:
    """Write `model` to `output` with one commit point (see the module's text), streaming each weight from
    where it is; return the external-data file written, if any.

    `external_data`: None writes the weights next to the model (`OUT.data`, or the first free
    `data_file_candidates` name) when the input had external data or the model would reach protobuf's 2 GiB
    limit, else inside it; True or False forces either. The input model is replaced only with
    `overwrite_input`; a data file the input is read from is never written over, and is removed after the
    commit (as the replaced pair's) only with `overwrite_input`. A replaced file keeps its permission bits.
    """
    path = check_output_path(output)
    folder = path.parent if str(path.parent) else Path(".")
    if external_data is None:
        external_data = weights.has_external_data_files(model) or weights.embedded_size(model) >= EMBEDDED_LIMIT
    elif not external_data and weights.embedded_size(model) >= EMBEDDED_LIMIT:
        raise InputError("the converted model is too large for one protobuf message (2 GiB); write it with "
                         "external data")
    if not overwrite_input and weights.reads_from(path):
        raise InputError(f"output '{printable(str(path))}' is a file the input model is read from; choose another "
                         "output path or give --in-place")
    # The replaced model's data files, removed after the commit; never one the input is read from, unless
    # it is replaced in place.
    previous = [name for name in _data_files_of(path) if overwrite_input or not weights.reads_from(name)]
    mode = _mode_of(path)
    with _disk_errors(path), _transaction(folder) as made:
        data_path = None
        model_temporary = _temporary(folder, path.name, mode, made)
        with open(model_temporary, "wb") as out:
            if not external_data:
                weights.write_embedded(model, out)
            else:
                data_path = _reserve_data_file(folder, path, made)
                data_mode = _mode_of(previous[0]) if previous else None
                data_temporary = _temporary(folder, data_path.name, mode if data_mode is None else data_mode, made)
                with open(data_temporary, "wb") as data:
                    weights.write_external(model, out, data, data_path.name)
                    _sync(data)
                os.replace(data_temporary, data_path)  # onto the reserved name: still referred to by nothing
            _sync(out)
        with _signals_held():
            os.replace(model_temporary, path)  # the commit
            made.clear()
            _remove_replaced(previous, keep=data_path)
    return data_path


def save_bytes(data: bytes, output: PathLike) -> Path:
    """Write `data` to `output` with one commit point, like `save_model` (for pictures and other small files)."""
    path = check_output_path(output)
    folder = path.parent if str(path.parent) else Path(".")
    with _disk_errors(path), _transaction(folder) as made:
        name = _temporary(folder, path.name, _mode_of(path), made)
        with open(name, "wb") as out:
            out.write(data)
            _sync(out)
        os.replace(name, path)
        made.clear()
    return path


def _data_files_of(path: Path) -> List[Path]:
    """The data files next to `path` that the model there refers to and that this tool would have named
    (`data_file_candidates`): the ones to remove once a new model replaces it. Empty if `path` is not a
    readable model; a file the tool did not name is never removed."""
    if not path.is_file():
        return []
    try:
        model, _ = read_skeleton(path)
    except Exception:  # not a model, or damaged: nothing of its is removed
        return []
    ours = set(data_file_candidates(path))
    named: Set[str] = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                       if entry.key == "location" and entry.value in ours}
    return [path.parent / name for name in sorted(named)]


def _reserve_data_file(folder: Path, output: Path, made: List[str]) -> Path:
    """The first free data-file name next to `output`, created empty and exclusively: no other run can take
    it, and no existing file (the input's own data, a link) is written through."""
    for name in data_file_candidates(output):
        target = folder / name
        try:
            with _signals_held():  # made and recorded together, so that a signal cannot orphan it
                handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                made.append(str(target))
        except FileExistsError:
            continue
        os.close(handle)
        return target
    raise InputError(f"no free name for the data file next to '{printable(str(output))}' ({output.name}.data to "
                     f"{output.name}.99.data are taken)")


def _remove_replaced(previous: List[Path], keep: Optional[Path]) -> None:
    """After the commit: remove the replaced model's data files. A failure here loses nothing (the new pair
    is complete), so it is logged, not raised."""
    for name in previous:
        if keep is not None and name == keep:
            continue
        try:
            os.unlink(name)
        except OSError as error:
            logger.warning("could not remove the replaced data file '%s': %s", name, error.strerror or error)


def _mode_of(path: Path) -> Optional[int]:
    """The permission bits of an existing regular file at `path`, else None."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return stat.S_IMODE(status.st_mode) if stat.S_ISREG(status.st_mode) else None


@contextmanager
def _transaction(folder: Path) -> Iterator[List[str]]:
    """A list the block records the files it makes in; if the block fails (a signal included), those still
    listed are removed. The block clears the list at its commit."""
    made: List[str] = []
    try:
        with signals_raise():
            yield made
    except BaseException:
        for name in made:
            try:
                os.unlink(name)
            except OSError:
                pass
        raise


def _temporary(folder: Path, target: str, mode: Optional[int], made: List[str]) -> str:
    """A new empty file next to `target`: with `mode` (that of the file it replaces), else the permissions a
    plainly created file would get (mkstemp makes it private)."""
    with _signals_held():  # made and recorded together, so that a signal cannot orphan it
        handle, name = tempfile.mkstemp(prefix=f".{target}.", suffix=".tmp", dir=folder)
        made.append(name)
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.fchmod(handle, mode)
    os.close(handle)
    return name


def _sync(stream) -> None:
    stream.flush()
    os.fsync(stream.fileno())


@contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """An OSError while writing becomes a one-line error: a full disk a `ResourceError`, others an `InputError`."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or str(error)
        if error.errno in _NO_SPACE:
            raise ResourceError(f"no space left to write '{printable(str(path))}' ({reason}); nothing was "
                                "written") from None
        raise InputError(f"cannot write '{printable(str(path))}' ({reason}); nothing was written") from None


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C, so that temporaries are removed on the way out."""

    def __init__(self, number: int) -> None:
        super().__init__(f"signal {number}")
        self.number = number


_STOPS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
#: How deep in `_signals_held` blocks the main thread is, and the signals that arrived meanwhile.
_held: Dict[str, Any] = {"depth": 0, "pending": []}


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT raises KeyboardInterrupt and SIGTERM and SIGHUP raise `Terminated`, instead of
    ending the process where it stands; inside a `_signals_held` block they wait for its end. Only in the
    main thread, where Python runs signal handlers."""
    try:
        previous = {number: signal.signal(number, _on_signal) for number in _STOPS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _on_signal(number: int, frame) -> None:
    if _held["depth"]:
        _held["pending"].append(number)
        return
    _raise_for(number)


def _raise_for(number: int) -> None:
    if number == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(number)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Within the block, signals wait: a file is made and recorded together, and the commit and the removals
    after it happen together. (Masking the signal would not do: onnxruntime's and numpy's threads take it,
    and Python then runs the handler in the main thread at once.)"""
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        if not _held["depth"] and _held["pending"]:
            number = _held["pending"][0]
            _held["pending"].clear()
            _raise_for(number)

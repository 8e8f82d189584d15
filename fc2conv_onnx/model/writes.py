"""Writing models and pictures with one commit point: at every instant the output path holds the complete
previous result or the complete new one.

A model with external data is a pair, `OUT` and its data file. Every write gives its data file a new name,
`OUT.<12 hex digits>.data`, made exclusively: a name is never reused, so a reader that loaded an older `OUT`
finds its own data file or none at all (if the older pair has been removed since), never another
conversion's weights under the name it expects. The model is written to a temporary file and renamed onto
`OUT`: that rename is the one commit. Only then is the data file the previous `OUT` referred to removed. A
failure or a signal before the commit removes what this run made and leaves the previous pair as it was.

A kill (which no code can catch) leaves at worst an orphan: a temporary `.OUT.*.tmp` or a data file `OUT`
does not refer to. Every file a write makes is locked (flock) until the write ends, and the next write into
`OUT` removes the files of these names that no run holds and `OUT` does not refer to. Concurrent runs to one
output end with the pair of whichever committed last.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import signal
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from ..errors import ClosedOutputError, InputError, ResourceError, printable

if TYPE_CHECKING:
    import onnx

    from .weights import Weights

try:
    import fcntl
except ImportError:  # not POSIX: files are not locked, and orphans are left for the user to remove
    fcntl = None  # type: ignore[assignment]

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
    # The longest name written next to it: 'OUT.<12 hex>.data' ('.OUT.xxxxxxxx.tmp' is shorter).
    if len(os.fsencode(path.name)) + _ADDED > longest:
        raise InputError(f"output name '{printable(path.name[:60])}...' is too long ({len(path.name)} characters; the "
                         f"file system takes {longest}, and the tool adds up to {_ADDED})")
    return path


#: The characters a data file's name adds to OUT's: '.' + 12 hex digits + '.data'.
_ADDED = 18


def _new_data_file_name(output: Path) -> str:
    return f"{output.name}.{os.urandom(6).hex()}.data"  # as secrets.token_hex, without hashlib's import


def _is_data_file_name(output: Path, name: str, older_forms: bool = False) -> bool:
    """Whether `name` is one this tool gives a data file of `output`; `older_forms` adds the names earlier
    versions gave (OUT.data, OUT.1.data, ...), which are removed only when the replaced model refers to them."""
    pattern = r"\.[0-9a-f]{12}\.data" + (r"|\.data|\.[1-9][0-9]?\.data" if older_forms else "")
    return re.fullmatch(re.escape(output.name) + f"(?:{pattern})", name) is not None


def _is_temporary_name(output: Path, name: str) -> bool:
    return re.fullmatch(re.escape(f".{output.name}.") + r"[A-Za-z0-9_]{8}\.tmp", name) is not None


def save_model(model: onnx.ModelProto, weights: Weights, output: PathLike,
               external_data: Optional[bool] = None, overwrite_input: bool = False) -> Optional[Path]:
    """Write `model` to `output` with one commit point (see the module's text), streaming each weight from
    where it is; return the external-data file written, if any.

    `external_data`: None writes the weights next to the model (`OUT.<12 hex>.data`) when the input had
    external data or the model would reach protobuf's 2 GiB limit, else inside it; True or False forces
    either. The input model is replaced only with `overwrite_input`; a data file the input is read from is
    never written over, and is removed after the commit (as the replaced pair's) only with
    `overwrite_input`. A replaced file keeps its owner (where the user may give it) and its permission bits
    (set-user-ID, set-group-ID and sticky bits excepted). A file the input is read from that changed since
    it was read is refused before the commit (`Weights.check_unchanged`).
    """
    from .weights import EMBEDDED_LIMIT  # here, not above: detect and heatmap write bytes, without onnx

    path = check_output_path(output)
    folder = path.parent if str(path.parent) else Path(".")
    if external_data is None:
        external_data = weights.had_external_data_files() or weights.embedded_size(model) >= EMBEDDED_LIMIT
    elif not external_data and weights.embedded_size(model) >= EMBEDDED_LIMIT:
        raise InputError("the converted model is too large for one protobuf message (2 GiB); write it with "
                         "external data")
    if not overwrite_input and weights.reads_from(path):
        raise InputError(f"output '{printable(str(path))}' is a file the input model is read from; choose another "
                         "output path or give --in-place")
    # The replaced model's data files, removed after the commit; never one the input is read from, unless
    # it is replaced in place.
    previous = [name for name in _data_files_of(path) if overwrite_input or not weights.reads_from(name)]
    like = _FileLike.of(path)
    with _disk_errors(path), _transaction() as files:
        remove_orphans(path)
        data_path = None
        model_temporary = files.temporary(folder, path.name, like)
        with open(model_temporary, "wb") as out:
            if external_data:
                data_path = files.new_data_file(folder, path, _FileLike.of(previous[0]) if previous else like)
                with open(data_path, "r+b") as data:
                    weights.write_external(model, out, data, data_path.name)
                    _sync(data)
            else:
                weights.write_embedded(model, out)
            _sync(out)
        weights.check_unchanged()  # what was read and validated is what the files still hold
        with _signals_held():
            os.replace(model_temporary, path)  # the commit
            files.committed()
            _remove_replaced(previous, keep=data_path)
        remove_orphans(path)  # a run that raced with this one may have left its data file
    return data_path


def save_bytes(data: bytes, output: PathLike) -> Path:
    """Write `data` to `output` with one commit point, like `save_model` (for pictures and other small files)."""
    with together() as group:
        return group.add(data, output)


class Group:
    """Files written to temporaries as they come and committed together (`together`)."""

    def __init__(self, files: "_Files") -> None:
        self._files = files
        self._pending: List[Tuple[str, Path]] = []

    def add(self, data: bytes, output: PathLike) -> Path:
        """Write `data` for `output` now; it appears at `output` when the group commits."""
        path = check_output_path(output)
        folder = path.parent if str(path.parent) else Path(".")
        with _disk_errors(path):
            remove_orphans(path)
            name = self._files.temporary(folder, path.name, _FileLike.of(path))
            with open(name, "wb") as out:
                out.write(data)
                _sync(out)
        self._pending.append((name, path))
        return path

    def commit(self) -> None:
        """Rename every temporary onto its output, with signals held: an interruption comes before all of
        them or after. (Only a failing rename, which a temporary in the output's own folder makes unlikely,
        or a kill can stop it half way; the error then says which files were written.)"""
        with _signals_held():
            for done, (name, path) in enumerate(self._pending):
                try:
                    os.replace(name, path)
                except OSError as error:
                    written = ", ".join(printable(str(p)) for _, p in self._pending[:done]) or "none"
                    raise InputError(f"cannot write '{printable(str(path))}' ({error.strerror or error}); of this "
                                     f"run's files, these were written: {written}") from None
            self._files.committed()


@contextmanager
def together() -> Iterator[Group]:
    """A group of files (detect's records and drawings) that appear together when the block ends, or, if it
    fails or is interrupted, not at all: the temporaries made so far are removed."""
    with _transaction() as files:
        group = Group(files)
        yield group
        group.commit()


def remove_orphans(output: Path) -> None:
    """Remove what killed runs into `output` left next to it: temporaries and data files of this tool's
    names that no running write holds (each write locks its files until it ends) and that the model at
    `output` does not refer to (read after the locks are taken). Failures are logged: nothing depends on it."""
    if fcntl is None:
        return
    folder = output.parent if str(output.parent) else Path(".")
    try:
        names = [n for n in os.listdir(folder) if _is_temporary_name(output, n) or _is_data_file_name(output, n)]
    except OSError:
        return
    held: List[Tuple[str, int]] = []
    try:
        for name in names:
            handle = _lock_if_free(folder / name)
            if handle is not None:
                held.append((name, handle))
        if not held:
            return
        referenced = {p.name for p in _data_files_of(output)}
        for name, handle in held:
            if name not in referenced:
                try:
                    os.unlink(folder / name)
                    logger.info("removed '%s', left by a run that did not end", name)
                except OSError as error:
                    logger.warning("could not remove '%s', left by a run that did not end: %s", name,
                                   error.strerror or error)
    finally:
        for _, handle in held:
            os.close(handle)


def _lock_if_free(path: Path) -> Optional[int]:
    """A descriptor of the regular file at `path`, exclusively locked, if no other run holds it and `path`
    still names it once locked; else None."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(handle).st_mode):
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _names(path, handle):
                return handle
    except OSError:
        pass
    os.close(handle)
    return None


def _names(path: Path, handle: int) -> bool:
    """Whether `path` still names the file open as `handle`."""
    try:
        here, there = os.stat(path, follow_symlinks=False), os.fstat(handle)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _data_files_of(path: Path) -> List[Path]:
    """The data files next to `path` that the model there refers to and that this tool would have named:
    the ones to remove once a new model replaces it. Empty if `path` is not a readable model; a file the
    tool did not name is never removed."""
    if not path.is_file():
        return []
    try:
        from .skeleton import read_skeleton

        model, _ = read_skeleton(path)
    except Exception:  # not a model, or damaged: nothing of its is removed
        return []
    named: Set[str] = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                       if entry.key == "location" and _is_data_file_name(path, entry.value, older_forms=True)}
    return [path.parent / name for name in sorted(named)]


def _remove_replaced(previous: List[Path], keep: Optional[Path]) -> None:
    """After the commit: remove the replaced model's data files. A failure here loses nothing (the new pair
    is complete), so it is logged, not raised."""
    for name in previous:
        if keep is not None and name == keep:
            continue
        try:
            os.unlink(name)
        except FileNotFoundError:  # another run's cleanup was first
            pass
        except OSError as error:
            logger.warning("could not remove the replaced data file '%s': %s", name, error.strerror or error)


class _FileLike:
    """The owner and permission bits a new file takes from the file it replaces (or a plain new file's)."""

    def __init__(self, mode: int, owner: Optional[Tuple[int, int]]) -> None:
        self.mode, self.owner = mode, owner

    @classmethod
    def of(cls, path: Path) -> "_FileLike":
        try:
            status = os.stat(path)
        except OSError:
            status = None
        if status is None or not stat.S_ISREG(status.st_mode):
            umask = os.umask(0)
            os.umask(umask)
            return cls(0o666 & ~umask, None)
        # Never set-user-ID, set-group-ID or sticky: a model is data, and a copied bit would be a gift.
        return cls(stat.S_IMODE(status.st_mode) & 0o777, (status.st_uid, status.st_gid))

    def give(self, handle: int) -> None:
        if self.owner is not None and hasattr(os, "fchown") and self.owner != (os.geteuid(), os.getegid()):
            try:
                os.fchown(handle, *self.owner)
            except OSError:  # only root may give a file away: it stays the user's, as any rewrite would
                pass
        os.fchmod(handle, self.mode)


class _Files:
    """The files a write makes: removed if the write fails before its commit, and each locked until the
    write ends, so that another run's `remove_orphans` passes them by."""

    def __init__(self) -> None:
        self.made: List[str] = []
        self.locks: List[int] = []

    def temporary(self, folder: Path, target: str, like: _FileLike) -> str:
        """A new empty file next to `target`, owned and permitted like the file it replaces."""
        while True:
            with _signals_held():  # made and recorded together, so that a signal cannot orphan it
                handle, name = tempfile.mkstemp(prefix=f".{target}.", suffix=".tmp", dir=folder)
                self.made.append(name)
                self.locks.append(handle)
            if self._lock(name, handle):
                like.give(handle)
                return name

    def new_data_file(self, folder: Path, output: Path, like: _FileLike) -> Path:
        """A new empty data file for `output` under a name never used before."""
        while True:
            target = folder / _new_data_file_name(output)
            with _signals_held():
                try:
                    handle = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
                except FileExistsError:
                    continue
                self.made.append(str(target))
                self.locks.append(handle)
            if self._lock(str(target), handle):
                like.give(handle)
                return target

    def _lock(self, name: str, handle: int) -> bool:
        """Lock the new file; False if another run's cleanup removed it before the lock (then make another)."""
        if fcntl is None:
            return True
        fcntl.flock(handle, fcntl.LOCK_EX)
        if _names(Path(name), handle):
            return True
        self.made.remove(name)
        return False

    def committed(self) -> None:
        self.made.clear()

    def remove_uncommitted(self) -> None:
        for name in self.made:
            try:
                os.unlink(name)
            except OSError:
                pass

    def release(self) -> None:
        for handle in self.locks:
            try:
                os.close(handle)
            except OSError:
                pass
        self.locks.clear()


@contextmanager
def _transaction() -> Iterator[_Files]:
    """The files the block makes; if the block fails (a signal included), those not committed are removed.
    Their locks are released when it ends, either way."""
    files = _Files()
    try:
        with signals_raise():
            yield files
    except BaseException:
        files.remove_uncommitted()
        raise
    finally:
        files.release()


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

"""Writing models and pictures with one commit point: at every instant the output path holds the complete
previous result or the complete new one.

A model with external data is a pair, `OUT` and its data file. Every write gives its data file a new name,
`OUT.<12 hex digits>.data`, made exclusively: a name is never reused, so a reader that loaded an older `OUT`
finds its own data file, never another conversion's weights under the name it expects. The model is written
to a temporary file and renamed onto `OUT`: that rename is the one commit. A failure or a signal before the
commit removes what this run made and leaves the previous pair as it was.

A run deletes only what it made itself. The data file of a model that `OUT` replaces is left where it is: a
copy of that model, or the model renamed, may still name it, and no run can know (a warning names the file
left). A kill (which no code can catch) can leave a temporary `.OUT.*.tmp` or a new data file; while a run
writes them, each is locked (flock) and carries the extended attribute `user.fc2conv_onnx.uncommitted`,
removed from the data file just before the commit and from the temporary just after its rename (a name the
sweep never looks at). A later write into `OUT` removes only files of these names that carry that attribute
and that no run holds: a file this tool committed, or any file of the user's, never carries it. (On a file
system without extended attributes, leftovers are not recognised and stay.)
Concurrent runs to one output end with the pair of whichever committed last.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple, Union

from ..errors import ClosedOutputError, InputError, ResourceError, StreamBrokenError, printable
from .guard import check_output_path
from .signals import Terminated, held, signals_raise
from .wire import external_locations

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


def write_stream(data: bytes, stream: Any, what: str = "standard output") -> None:
    """Write all of `data` to a binary stream and flush it, or fail saying so: no space (exit 6) or a reader that
    went away (exit 7), never "written" after a short write. A write that takes fewer bytes than it was given
    (a pipe, a non-blocking descriptor) is repeated for the rest; one that takes none is a failure."""
    if stream is None:
        raise ClosedOutputError(f"{what} is closed; nothing was written")
    view = memoryview(data)
    try:
        while view:
            done = stream.write(view)
            if not done:  # None: a non-blocking stream took nothing; 0: nothing more can go
                raise ClosedOutputError(f"{what} took {len(data) - len(view)} of the {len(data)} bytes and no "
                                        "more; what its reader got is incomplete")
            view = view[done:]
        stream.flush()
    except ClosedOutputError:
        _detach(stream)
        raise
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


def write_piece(piece: bytes, stream: Any, what: str = "standard output") -> None:
    """`piece` written whole (`write_stream`), an interruption waiting for its end (a video frame's records on
    standard output: its reader never gets half a frame from us)."""
    with held():
        write_stream(piece, stream, what)


def write_text(text: str, stream: Any, what: str) -> None:
    """Write `text` to a text stream (standard output, standard error) through `write_stream`: in the stream's
    own encoding, anything it cannot encode (a file name of non-UTF-8 bytes, a name on an ASCII terminal)
    written as a backslash escape, never an error."""
    if stream is None:
        raise ClosedOutputError(f"{what} is closed; nothing was written")
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        stream.flush()  # what went through the text layer before (a log line) stays in order
    except (OSError, ValueError):
        pass
    write_stream(text.encode(encoding, "backslashreplace"), getattr(stream, "buffer", stream), what)


def _detach(stream: Any) -> None:
    """After a failed write to standard output or error, point it at /dev/null: Python would otherwise try the
    same write again when it exits and print a second, raw error."""
    for standard in (sys.stdout, sys.stderr):
        try:
            if standard is not None and stream in (standard, getattr(standard, "buffer", None)):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, standard.fileno())
                os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass


def _new_data_file_name(output: Path) -> str:
    return f"{output.name}.{os.urandom(6).hex()}.data"  # as secrets.token_hex, without hashlib's import


#: The names a write gives the files it makes next to OUT: its temporary, its data file.
_TEMPORARY_NAME = re.compile(r"\.(?P<output>.+)\.[A-Za-z0-9_]{8}\.tmp", re.DOTALL)
_DATA_FILE_NAME = re.compile(r"(?P<output>.+)\.[0-9a-f]{12}\.data", re.DOTALL)


def _output_named_by(name: str) -> Optional[str]:
    """The OUT whose temporary or data file `name` would be (None for any other name)."""
    for pattern in (_TEMPORARY_NAME, _DATA_FILE_NAME):
        found = pattern.fullmatch(name)
        if found:
            return found.group("output")
    return None


def save_model(model: onnx.ModelProto, weights: Weights, output: PathLike,
               external_data: Optional[bool] = None) -> Optional[Path]:
    """Write `model` to `output` with one commit point (see the module's text), streaming each weight from
    where it is; return the external-data file written, if any. Whether `output` may be written at all (not a
    file the run reads) is the caller's check (`guard.check_outputs`).

    `external_data`: None writes the weights next to the model (`OUT.<12 hex>.data`) when the input had
    external data or the model would reach protobuf's 2 GiB limit, else inside it; True or False forces
    either. The data files of a model this replaces are left (see the module's text). A replaced file keeps
    its owner (where the user may give it) and its permission bits (set-user-ID, set-group-ID and sticky bits
    excepted). A file the input is read from that changed since it was read is refused before the commit
    (`Weights.check_unchanged`).
    """
    from .weights import EMBEDDED_LIMIT  # here, not above: detect and heatmap write bytes, without onnx

    path = check_output_path(output)
    folder = path.parent if str(path.parent) else Path(".")
    if external_data is None:
        external_data = weights.had_external_data_files() or weights.embedded_size(model) >= EMBEDDED_LIMIT
    elif not external_data and weights.embedded_size(model) >= EMBEDDED_LIMIT:
        raise InputError("the converted model is too large for one protobuf message (2 GiB); write it with "
                         "external data")
    if external_data:
        check_data_file_name(path)
    like = _FileLike.of(path)
    with _disk_errors(path), _transaction() as files:
        remove_orphans(path)
        data_path = None
        model_temporary = files.temporary(folder, path.name, like)
        with open(model_temporary, "wb") as out:
            if external_data:
                data_path = files.new_data_file(folder, path, like)
                with open(data_path, "r+b") as data:
                    weights.write_external(model, out, data, data_path.name)
                    _sync(data)
            else:
                weights.write_embedded(model, out)
            _sync(out)
        weights.check_unchanged()  # what was read and validated is what the files still hold
        replaced = _data_files_named(path)
        if data_path is not None:
            files.unmark(data_path)  # from here on, never taken for a killed run's leftover
        with held():
            os.replace(model_temporary, path)  # the commit
            files.committed()
            files.unmark(model_temporary, committed=True)
    for left in replaced:
        logger.warning("'%s', a data file of the model '%s' replaced, is left in place: a copy or a renamed copy "
                       "of that model may still name it; remove it once none does", left, path)
    return data_path


def check_data_file_name(output: PathLike) -> None:
    """A model names its data file in UTF-8 text (a protobuf string): an output whose name is other bytes cannot
    have one."""
    try:
        os.fspath(output).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"output '{printable(os.fspath(output))}' is not a valid UTF-8 name, and a model names its "
                         "external-data file in UTF-8: give a UTF-8 name, or write the weights inside the model") \
            from None


def _data_files_named(path: Path) -> List[Path]:
    """The data files the model now at `path` names, for the note that they are left."""
    if not path.is_file():
        return []
    folder = path.parent if str(path.parent) else Path(".")
    return [folder / name for name in sorted(external_locations(path)) if (folder / name).is_file()]


def save_bytes(data: bytes, output: PathLike) -> Path:
    """Write `data` to `output` with one commit point, like `save_model` (for pictures and other small files)."""
    with together() as group:
        return group.add(data, output)


class Group:
    """Files written to temporaries as they come and committed together (`together`)."""

    def __init__(self, files: "_Files") -> None:
        self._files = files
        self._pending: List[Tuple[str, Path]] = []
        self._listings: Dict[Path, Dict[str, List[str]]] = {}  # each folder listed once (`leftover_names`)

    def add(self, data: bytes, output: PathLike) -> Path:
        """Write `data` for `output` now; it appears at `output` when the group commits."""
        path = check_output_path(output)
        folder = path.parent if str(path.parent) else Path(".")
        with _disk_errors(path):
            if folder not in self._listings:
                self._listings[folder] = leftover_names(folder)
            remove_orphans(path, self._listings[folder])
            name = self._files.temporary(folder, path.name, _FileLike.of(path))
            with open(name, "wb") as out:
                _write_whole(out, data)
                _sync(out)
        self._pending.append((name, path))
        return path

    def commit(self) -> None:
        """Rename every temporary onto its output, with signals held: an interruption comes before all of
        them or after. (Only a failing rename, which a temporary in the output's own folder makes unlikely,
        or a kill can stop it half way; the error then says which files were written.)"""
        with held():
            for done, (name, path) in enumerate(self._pending):
                try:
                    os.replace(name, path)
                    self._files.unmark(name, committed=True)
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


@contextmanager
def streamed_path(output: PathLike) -> Iterator[str]:
    """A temporary next to `output` that the block writes as a run goes (a video's records, an annotated video),
    and that appears at `output` when the block ends - also when an interruption (Ctrl-C, SIGTERM) or a source
    that broke off ends it, so that all written is kept: the block closes what it opened on the temporary before
    it ends, either way. Any other failure leaves nothing, as every write here."""
    path = check_output_path(output)
    folder = path.parent if str(path.parent) else Path(".")
    with _transaction() as files:
        with _disk_errors(path):
            remove_orphans(path)
            name = files.temporary(folder, path.name, _FileLike.of(path))

        def commit() -> None:
            with held(), _disk_errors(path):
                os.replace(name, path)
                files.unmark(name, committed=True)
                files.committed()

        try:
            yield name
        except (KeyboardInterrupt, Terminated, StreamBrokenError):
            commit()
            raise
        commit()


@contextmanager
def streamed(output: PathLike) -> Iterator[Callable[[bytes], None]]:
    """`streamed_path` written piece by piece, each piece whole (written with signals held) and flushed."""
    with streamed_path(output) as name:
        path = Path(output)
        with open(name, "wb") as out:

            def write(piece: bytes) -> None:
                with held(), _disk_errors(path):
                    _write_whole(out, piece)
                    out.flush()

            yield write
            with _disk_errors(path):
                _sync(out)


def remove_orphans(output: Path, listing: Optional[Dict[str, List[str]]] = None) -> None:
    """Remove what killed runs into `output` left next to it: temporaries and data files of this tool's names
    that carry the uncommitted mark and that no running write holds (each write locks its files until it
    ends). Nothing is removed by its name alone. `listing` is `leftover_names` of the folder, made once for
    many outputs in it (a folder of 10,000 drawings listed once, not once a drawing). Failures are logged:
    nothing depends on it."""
    if fcntl is None:
        return
    folder = output.parent if str(output.parent) else Path(".")
    names = (leftover_names(folder) if listing is None else listing).get(output.name, [])
    for name in names:
        handle = _lock_if_free(folder / name)
        if handle is None:
            continue
        try:
            if _is_marked(handle):
                os.unlink(folder / name)
                logger.info("removed '%s', left by a run that did not end", name)
        except OSError as error:
            logger.warning("could not remove '%s', left by a run that did not end: %s", name,
                           error.strerror or error)
        finally:
            os.close(handle)


def leftover_names(folder: Path) -> Dict[str, List[str]]:
    """OUT's name -> the names in `folder` that a write into OUT gives its temporary or data file."""
    found: Dict[str, List[str]] = {}
    try:
        entries = os.listdir(folder)
    except OSError:
        return found
    for name in entries:
        output = _output_named_by(name)
        if output is not None:
            found.setdefault(output, []).append(name)
    return found


#: The extended attribute a write's files carry until just before its commit.
_UNCOMMITTED = "user.fc2conv_onnx.uncommitted"


def _mark(handle: int) -> None:
    """Mark a new file as uncommitted; on a file system without extended attributes it stays unmarked (and
    a kill's leftover of it is then never removed)."""
    try:
        os.setxattr(handle, _UNCOMMITTED, b"1")
    except (OSError, AttributeError):
        pass


def _unmark(handle: int) -> None:
    try:
        os.removexattr(handle, _UNCOMMITTED)
    except AttributeError:  # no extended attributes on this system: never marked
        pass
    except OSError as error:
        if error.errno not in (getattr(errno, "ENODATA", None), getattr(errno, "ENOATTR", None),
                               getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), errno.EOPNOTSUPP):
            raise  # a committed file must never carry the mark: fail before the commit


def _is_marked(handle: int) -> bool:
    try:
        return os.getxattr(handle, _UNCOMMITTED) == b"1"
    except (OSError, AttributeError):
        return False


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
        self.handles: Dict[str, int] = {}  # by the name each file was made under

    def temporary(self, folder: Path, target: str, like: _FileLike) -> str:
        """A new empty file next to `target`, owned and permitted like the file it replaces."""
        while True:
            with held():  # made and recorded together, so that a signal cannot orphan it
                handle, name = tempfile.mkstemp(prefix=f".{target}.", suffix=".tmp", dir=folder)
                self.made.append(name)
                self.locks.append(handle)
            if self._lock(name, handle):
                _mark(handle)
                self.handles[name] = handle
                like.give(handle)
                return name

    def new_data_file(self, folder: Path, output: Path, like: _FileLike) -> Path:
        """A new empty data file for `output` under a name never used before."""
        while True:
            target = folder / _new_data_file_name(output)
            with held():
                try:
                    handle = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
                except FileExistsError:
                    continue
                self.made.append(str(target))
                self.locks.append(handle)
            if self._lock(str(target), handle):
                _mark(handle)
                self.handles[str(target)] = handle
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

    def unmark(self, name: Union[str, Path], committed: bool = False) -> None:
        """The file `name` made stops carrying the uncommitted mark: a data file just before the commit (a kill
        from there on leaves, at worst, a file no later run removes), a temporary just after its rename (a
        committed name is never one the sweep looks at, so a kill between leaves nothing it would take)."""
        handle = self.handles.get(str(name))
        if handle is None:
            return
        try:
            _unmark(handle)
        except OSError:
            if not committed:
                raise

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


def _write_whole(out: BinaryIO, data: bytes) -> None:
    """`data` written to the file `out`, every byte counted: a buffered file writes all or raises, and a short
    count is taken for the full disk it would mean (inside `_disk_errors`)."""
    done = out.write(data)
    if done != len(data):
        raise OSError(errno.ENOSPC, f"{done} of {len(data)} bytes written")


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

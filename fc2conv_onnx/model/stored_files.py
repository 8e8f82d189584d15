"""The files a model's weights are read from: opened the way onnx opens them, and read only while they are
still the file that was checked.

An external-data location is opened beneath the model's folder one component at a time, never following a
symbolic link (a folder swapped for a link between the check and the read cannot lead outside), and is
refused where onnx's own opener refuses it: empty, absolute, climbing out after lexical normalisation, a
link anywhere on the way, not a regular file. On POSIX a backslash is part of a file name, as it is for
onnx. tests/test_stored_files.py proves the two agree on every spelling it tries (the one difference: a
NUL byte, which onnx cuts the name at and this tool refuses).

Each file's identity (device, inode, size, modification time) is taken from the opened descriptor when it
is checked; every later read opens it again and refuses a file that is no longer that one: weights that
change during a run (an exporter rewriting them) are never mixed with the ones already read, and never
written.
"""
from __future__ import annotations

import errno
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..errors import InputError, printable

#: Whether folders can be walked with descriptors (os.open's dir_fd); elsewhere the resolved path is checked.
_WALKS_BENEATH = os.open in os.supports_dir_fd and hasattr(os, "O_NOFOLLOW")
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class StoredFile:
    """A file weights are read from: the model file itself (`location` None: opened by the path given) or
    an external-data file (`location` beneath `folder`), with what it was when checked."""

    path: Path  # its real path, for messages and comparisons
    folder: Path
    location: Optional[str]
    identity: Tuple[int, int, int, int]  # device, inode, size, modification time in ns

    @property
    def size(self) -> int:
        return self.identity[2]

    def open(self) -> int:
        """A descriptor of the file, refused if it is no longer the file that was checked."""
        if self.location is None:
            try:
                handle = os.open(self.path, _READ_FLAGS)
            except OSError as error:
                raise InputError(f"'{printable(str(self.path))}' changed during the run (it cannot be opened now: "
                                 f"{error.strerror or error}); nothing was written") from None
        else:
            handle = open_beneath(self.folder, self.location, f"'{printable(str(self.path))}'")
        if _identity(handle) != self.identity:
            os.close(handle)
            raise InputError(f"'{printable(str(self.path))}' changed during the run (it was replaced or written "
                             "to after it was read); nothing was written: run again once it is complete")
        return handle

    def read(self, offset: int, length: int) -> np.ndarray:
        """`length` bytes at `offset`, as a new uint8 array."""
        buffer = np.empty(length, dtype=np.uint8)
        view = buffer.data
        handle = self.open()
        try:
            done = 0
            while done < length:
                got = os.preadv(handle, [view[done:]], offset + done) if hasattr(os, "preadv") \
                    else _pread_into(handle, view[done:], offset + done)
                if not got:
                    raise InputError(f"'{printable(str(self.path))}' changed during the run (it ended at byte "
                                     f"{offset + done}); nothing was written")
                done += got
        finally:
            os.close(handle)
        return buffer

    def unchanged(self) -> None:
        """Refuse (InputError) if the file is no longer the one that was checked."""
        os.close(self.open())


def model_file(path: Path, handle: int) -> StoredFile:
    """The model file at `path` (the path the user gave, links followed), opened as `handle`."""
    real = Path(os.path.realpath(path))
    return StoredFile(real, real.parent, None, _identity(handle))


def external_file(folder: Path, location: str, where: str) -> StoredFile:
    """The external-data file at `location` beneath `folder`, checked (see the module's text); `where` starts
    each refusal ("input 'm.onnx': tensor 'w' has external data at 'x.bin'")."""
    handle = open_beneath(folder, location, where)
    try:
        identity = _identity(handle)
    finally:
        os.close(handle)
    return StoredFile(Path(os.path.realpath(folder / posixpath.normpath(location))), folder, location, identity)


def open_beneath(folder: Path, location: str, where: str) -> int:
    """A read-only descriptor of the regular file `location` names beneath `folder`, refused as onnx refuses it."""
    if not location:
        raise InputError(f"{where}: the location is empty")
    if "\0" in location:  # no path holds one; the tool's own held arrays are named so (see Weights.hold)
        raise InputError(f"{where}: the location holds a NUL byte")
    if os.path.isabs(location) or location.startswith("/"):
        raise InputError(f"{where}, an absolute path; only files in the model's folder are read")
    normal = posixpath.normpath(location)
    if normal == ".." or normal.startswith("../"):
        raise InputError(f"{where}, which climbs out of the model's folder; refused")
    if location.endswith("/") or normal == ".":
        raise InputError(f"{where}, which is not a regular file")
    try:
        handle = _walk(folder, normal.split("/"), where) if _WALKS_BENEATH else _open_resolved(folder, normal, where)
    except FileNotFoundError:
        raise InputError(f"{where}, which does not exist") from None
    except OSError as error:
        raise InputError(f"{where}, which cannot be read ({error.strerror or error})") from None
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise InputError(f"{where}, which is not a regular file")
    return handle


def _walk(folder: Path, parts: list, where: str) -> int:
    """Open each component beneath the one before with O_NOFOLLOW: a link anywhere on the way is refused."""
    current = os.open(folder, _READ_FLAGS | os.O_DIRECTORY)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            flags = _READ_FLAGS | os.O_NOFOLLOW | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                following = os.open(part, flags, dir_fd=current)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, current):
                    raise InputError(f"{where}, which passes through the symbolic link '{printable(part)}'; "
                                     "links are not followed (as onnx does not)") from None
                if error.errno == errno.ENOTDIR:
                    raise InputError(f"{where}, which is not a regular file") from None
                raise
            os.close(current)
            current = following
        return current
    except BaseException:
        os.close(current)
        raise


def _is_link(name: str, folder: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_resolved(folder: Path, normal: str, where: str) -> int:
    """Where descriptors cannot walk folders: refuse a link on the way by comparing real paths."""
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(folder / normal))
    if target != root / normal:
        raise InputError(f"{where}, which passes through a symbolic link; links are not followed (as onnx "
                         "does not)")
    return os.open(target, _READ_FLAGS)


def _identity(handle: int) -> Tuple[int, int, int, int]:
    status = os.fstat(handle)
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _pread_into(handle: int, view: memoryview, offset: int) -> int:
    data = os.pread(handle, len(view), offset)
    view[:len(data)] = data
    return len(data)


def check_input_file(path: Path, label: str) -> None:
    """Refuse an input that is missing or not a regular file (a FIFO or a device would block or never end)."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise InputError(f"input {label} does not exist") from None
    except (OSError, ValueError) as error:  # a name too long, a NUL byte in it, no permission
        raise InputError(f"input {label} cannot be read ({getattr(error, 'strerror', None) or error})") from None
    if stat.S_ISDIR(status.st_mode):
        raise InputError(f"input {label} is a directory, not an ONNX file")
    if not stat.S_ISREG(status.st_mode):
        raise InputError(f"input {label} is not a regular file (a device, FIFO or socket); give an .onnx file")

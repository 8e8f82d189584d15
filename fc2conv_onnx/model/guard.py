"""The one output guard, for every writer (the CLI's commands and the API's `convert_file`, `heatmap`,
`Detections.save` and `.draw` alike): before anything is written, an output may not be

- a file the run reads, compared by identity (device and inode, through links, hard links and other spellings)
  and by real path: the model, every external-data file it names, the pictures, standard input's file;
- another output of the same run;
- a folder, a device, FIFO or socket, a symbolic link (a rename would replace the link, not the file it names:
  `/dev/stdout` is one), or a name in a system folder (/dev, /proc, /sys).

The check is one pass over the inputs and one over the outputs, against sets: 10,000 pictures with 10,000
drawings cost 20,000 lookups, not 10^8 comparisons.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

from ..errors import InputError, printable
from .wire import external_locations

PathLike = Union[str, "os.PathLike[str]"]
#: Folders whose files are the system's, not data: writing a file there replaces what the system put there.
SYSTEM_FOLDERS = ("/dev", "/proc", "/sys")
#: The characters a data file's name adds to OUT's: '.' + 12 hex digits + '.data'.
ADDED_CHARACTERS = 18

Identity = Tuple[int, int]


def _identity(status: os.stat_result) -> Identity:
    return status.st_dev, status.st_ino


def _real(path: PathLike) -> str:
    return os.path.realpath(os.fspath(path))


class Reads:
    """The files a run reads, by identity and by real path, each with what it is ("the model", "the picture
    'a.png'") for the refusal's words."""

    def __init__(self) -> None:
        self._by_identity: Dict[Identity, str] = {}
        self._by_path: Dict[str, str] = {}

    def add(self, what: str, path: PathLike) -> "Reads":
        try:
            self._by_path.setdefault(_real(path), what)
        except (OSError, ValueError):  # a NUL byte: no file has it
            return self
        identity = identity_of(path)
        if identity is not None:  # not there (yet): its path still counts
            self._by_identity.setdefault(identity, what)
        return self

    def add_model(self, what: str, path: PathLike) -> "Reads":
        """A model file and every external-data file it names (read from its bytes, without onnx)."""
        self.add(what, path)
        folder = Path(os.fspath(path)).parent
        for location in external_locations(Path(os.fspath(path))):
            self.add(f"a data file of {what}", folder / location)
        return self

    def add_stream(self, what: str, handle: int) -> "Reads":
        """The file behind an open descriptor (standard input redirected from a file)."""
        try:
            status = os.fstat(handle)
        except OSError:
            return self
        if stat.S_ISREG(status.st_mode):
            self._by_identity.setdefault(_identity(status), what)
        return self

    def what(self, path: PathLike, identity: Optional[Identity]) -> Optional[str]:
        """What the run reads at `path` (None if nothing)."""
        found = self._by_identity.get(identity) if identity is not None else None
        return found or self._by_path.get(_real(path))


def check_outputs(outputs: Iterable[Tuple[str, PathLike]], reads: Reads,
                  may_replace: Optional[PathLike] = None, replace_hint: str = "",
                  folder_to_make: Optional[PathLike] = None) -> None:
    """Refuse (InputError, exit 3, before any work) an output the module's text forbids. Each output is (what it
    is, e.g. "-o", its path). `may_replace` is the one input an output may be (the model, converted in place);
    any other read file it is refused, with `replace_hint` said when it is that one. `folder_to_make` is a
    folder the run will make (detect's --draw): outputs in it need it only to be possible."""
    to_make = None if folder_to_make is None else os.path.normpath(os.fspath(folder_to_make))
    allowed = None if may_replace is None else identity_of(may_replace)
    seen: Dict[str, str] = {}
    for what, output in outputs:
        path = check_output_path(output, folder_made=to_make is not None and
                                  os.path.normpath(os.path.dirname(os.fspath(output)) or ".") == to_make)
        identity = identity_of(path)
        shown = printable(os.fspath(output))
        read = reads.what(path, identity)
        if read and not (allowed is not None and identity == allowed):
            raise InputError(f"{what} '{shown}' is {read}, which the command reads; it never writes over what it "
                             f"reads: give another name{replace_hint if read == 'the model' else ''}")
        key = _real(path)
        if key in seen:
            raise InputError(f"{what} '{shown}' is also {seen[key]}; give each output its own name")
        seen[key] = f"{what} '{shown}'"


def identity_of(path: PathLike) -> Optional[Identity]:
    """The (device, inode) of the file at `path`, links followed; None if there is none."""
    try:
        return _identity(os.stat(path))
    except (OSError, ValueError):
        return None


def check_output_path(output: PathLike, folder_made: bool = False) -> Path:
    """Refuse, before any work is done, an output path that cannot be written or must not be: a folder (or a
    name ending in '/'), a missing or read-only folder, a name too long for the folder's file system, a
    device, FIFO or socket, a symbolic link, or a name in a system folder. `folder_made`: its folder is made
    by the run later; the nearest folder above it that exists is checked instead."""
    given = os.fspath(output)
    path = Path(given)
    shown = printable(given)
    if "\0" in given:
        raise InputError(f"output '{shown}' holds a NUL byte, which no file name can")
    folder = path.parent if str(path.parent) else Path(".")
    if folder_made:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    try:
        if path.is_dir() or given.endswith(("/", os.sep)):
            raise InputError(f"output '{shown}' is a folder (or names one: it ends with '/'); give a file name")
        if path.is_symlink():
            raise InputError(f"output '{shown}' is a symbolic link (to '{printable(os.readlink(path))}'); a write "
                             "would replace the link, not the file it names: give that file's own path")
        real_folder = os.path.realpath(folder)
        if any(real_folder == top or real_folder.startswith(top + "/") for top in SYSTEM_FOLDERS):
            raise InputError(f"output '{shown}' is in {real_folder}, a system folder; give a file name elsewhere")
        if not folder.is_dir():
            raise InputError(f"output folder '{printable(str(folder))}' does not exist")
        if not os.access(folder, os.W_OK):
            raise InputError(f"output folder '{printable(str(folder))}' is not writable")
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            raise InputError(f"output '{shown}' is a device, FIFO or socket, not a file; give a file name")
        longest = os.pathconf(folder, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    except (OSError, ValueError) as error:
        raise InputError(f"output '{shown}' cannot be used ({getattr(error, 'strerror', None) or error})") from None
    # The longest name written next to it: 'OUT.<12 hex>.data' ('.OUT.xxxxxxxx.tmp' is shorter).
    if len(os.fsencode(path.name)) + ADDED_CHARACTERS > longest:
        raise InputError(f"output name '{printable(path.name[:60])}...' is too long ({len(path.name)} characters; the "
                         f"file system takes {longest}, and the tool adds up to {ADDED_CHARACTERS})")
    return path


def pictures_read(model: object, pictures: Sequence[PathLike], original: object = None,
                  labels: Optional[PathLike] = None, cascade: Optional[PathLike] = None) -> Reads:
    """What detect and heatmap read: the model (when it is a file) with its data files, the pictures, the
    original classifier of a refining stage and the classifiers of a cascade (`original`: one path or a list),
    a labels file and a cascade file."""
    reads = Reads()
    if labels is not None:
        reads.add("the labels file", labels)
    if isinstance(model, (str, os.PathLike)):
        reads.add_model("the model", model)
    if cascade is not None:
        reads.add("the cascade file", cascade)
    for number, classifier in enumerate(original if isinstance(original, (list, tuple)) else [original]):
        if isinstance(classifier, (str, os.PathLike)):
            reads.add_model(f"cascade stage {number}'s model" if number else "the original model", classifier)
    for picture in pictures:
        reads.add(f"the picture '{printable(os.fspath(picture))}'", picture)
    return reads

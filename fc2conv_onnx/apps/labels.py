"""Class names: a labels file (one name per line, class 0 first, as most model zoos ship them), shown in records,
drawings and heatmap panels in place of bare class numbers."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

from ..errors import InputError, printable
from ..model.stored_files import check_input_file

#: The most names a labels file may hold (ImageNet-21k has 21,843).
MAX_LABELS = 1 << 17


def read_labels(path: Union[str, "os.PathLike[str]"]) -> Tuple[str, ...]:
    """The names in a labels file: one a line, class 0 first; a final empty line is not a name."""
    from pathlib import Path

    label = f"'{printable(os.fspath(path))}'"
    check_input_file(Path(path), f"labels file {label}")
    try:
        with open(path, "rb") as stream:
            data = stream.read(64 << 20)
    except OSError as error:
        raise InputError(f"labels file {label} cannot be read ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"labels file {label} is not UTF-8 text") from None
    names = tuple(line.strip() for line in text.splitlines())
    if names and not names[-1]:
        names = names[:-1]
    if not names or len(names) > MAX_LABELS:
        raise InputError(f"labels file {label} holds {len(names)} names; give one name a line, class 0 first")
    return names


def checked_labels(labels: Optional[Sequence[str]]) -> Optional[Tuple[str, ...]]:
    """Labels given to the API: a sequence of strings (or None)."""
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not all(isinstance(name, str) for name in labels):
        raise InputError("labels must be a list of class names (strings), class 0 first")
    return tuple(labels)


def name_of(labels: Optional[Sequence[str]], klass: int) -> str:
    """The name of class `klass`, or its number when there are no labels; InputError when the labels are too few."""
    if labels is None:
        return str(klass)
    if klass >= len(labels):
        raise InputError(f"class {klass} has no name: the labels name classes 0 to {len(labels) - 1}")
    return labels[klass]

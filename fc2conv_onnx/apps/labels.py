"""Class names: a labels file (one name per line, class 0 first, as most model zoos ship them), shown in records,
drawings and heatmap panels in place of bare class numbers."""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Tuple, Union

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


#: Metadata keys exporters keep class names under, in the order they are looked for: Ultralytics' "names" (a Python
#: dict {0: 'person', ...}), "labels", "classes", "class_names", and PaddleOCR's / RapidOCR's "character" (one a line).
METADATA_KEYS = ("names", "labels", "classes", "class_names", "character")
#: The longest metadata value read as names (ImageNet-21k's names are about 400 KB).
_MAX_METADATA = 4 << 20


def labels_from_metadata(metadata: Mapping[str, str]) -> Optional[Tuple[Tuple[str, ...], str]]:
    """The class names a model's metadata holds, and the key they were under; None when none is readable (a
    JSON or Python list, a dict {0: name, 1: name, ...}, or several lines)."""
    for key in METADATA_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and len(value) <= _MAX_METADATA:
            names = _names(value)
            if names:
                return names, key
    return None


def _names(text: str) -> Optional[Tuple[str, ...]]:
    import ast
    import json

    text = text.strip()
    value: object = None
    for parse in (json.loads, ast.literal_eval):  # literals only: no code runs
        try:
            value = parse(text)
            break
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    if isinstance(value, dict) and value and all(isinstance(k, int) for k in value) and \
            sorted(value) == list(range(len(value))):
        value = [value[k] for k in range(len(value))]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, int, float)) for v in value):
        return tuple(str(v) for v in value)
    lines = [line.strip() for line in text.splitlines()]
    return tuple(lines) if len(lines) > 1 and all(lines) else None

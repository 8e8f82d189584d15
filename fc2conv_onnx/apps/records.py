"""Detections as files: JSON (a list, one record per line) or CSV, written so that any reader takes them: no
NaN or Infinity in JSON, names of any bytes escaped."""
from __future__ import annotations

import csv
import io as text_io
import json
import math
from typing import Any, Optional, Sequence, Union

from ..model.detections import Detection

#: Columns of the CSV form, one record per row.
CSV_COLUMNS = ("image", "x1", "y1", "x2", "y2", "score", "class", "scale", "row", "column", "label")
#: The columns records of video frames add: the frame's index in the stream and its time in seconds.
FRAME_COLUMNS = ("frame", "time")
#: Output names written as JSON Lines.
JSON_LINES = (".jsonl", ".ndjson")



def finite(value: Any) -> Any:
    """`value` (numbers, lists, dicts of them) with every float that is not finite as None: JSON has no
    infinity (a logit output can be inf), and `Infinity` would make the file unreadable to strict parsers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def json_text(payload: Any, indent: Optional[int] = None) -> str:
    """Strict JSON (no NaN or Infinity: `finite`), ASCII: a name of non-UTF-8 bytes (os.fsdecode's lone
    surrogates) is written as its \\udcXX escape, which json.loads and os.fsencode turn back into the bytes."""
    return json.dumps(finite(payload), indent=indent, default=str, allow_nan=False)


def as_json(records: Sequence[Detection]) -> str:
    """A JSON list, one record per line."""
    return "[" + ",".join("\n " + json_text(r.to_dict()) for r in records) + "\n]\n"


def escaped_name(name: str) -> str:
    """A file name as text any reader takes: bytes that are not UTF-8 (lone surrogates, as os.fsdecode gives
    them) written as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def as_csv(records: Sequence[Detection], header: bool = True, frames: Optional[bool] = None) -> str:
    """CSV rows, after the header (`CSV_COLUMNS`, and `FRAME_COLUMNS` for records of video frames: `frames`, or
    whether any record has a frame)."""
    frames = any(r.frame is not None for r in records) if frames is None else frames
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS + (FRAME_COLUMNS if frames else ()))
    for r in records:
        extra = [r.frame, repr(r.time)] if frames else []
        writer.writerow([escaped_name(r.image), *(repr(v) for v in r.box), repr(r.score), r.klass, repr(r.scale),
                         *r.cell, r.label or "", *extra])
    return buffer.getvalue()


def as_json_lines(records: Sequence[Detection]) -> str:
    """JSON Lines: one record a line (a stream's records, written as its frames are done)."""
    return "".join(json_text(r.to_dict()) + "\n" for r in records)


def is_csv(path: Union[str, None]) -> bool:
    return bool(path) and str(path).lower().endswith(".csv")


def records_text(records: Sequence[Detection], path: Union[str, None]) -> str:
    """The records in the form `path`'s extension asks for: CSV for .csv, JSON Lines for .jsonl, else JSON."""
    if is_csv(path):
        return as_csv(records)
    if path and str(path).lower().endswith(JSON_LINES):
        return as_json_lines(records)
    return as_json(records)

"""Checkers for the values the API takes, shared by every app (the CLI's flags reach the same records): each
returns the value normalized or raises InputError naming the parameter and what it got. Numbers may be
Python's or numpy's (`np.float32(1)` is a number); strings, booleans, NaN and infinities are not."""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple

from ..errors import InputError, printable

#: The most threads a run may be given: more than any machine this runs on has cores, and onnxruntime makes
#: every one it is asked for.
MAX_THREADS = 256


def _shown(value: Any) -> str:
    return printable(repr(value))[:80]


def number(value: Any, name: str, positive: bool = False) -> float:
    """A finite real number (positive when asked), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a number, not {_shown(value)}")
    result = float(value)
    if not math.isfinite(result) or (positive and result <= 0):
        raise InputError(f"{name} must be a {'positive' if positive else 'finite'} number, not {_shown(value)}")
    return result


def optional_number(value: Any, name: str, positive: bool = False) -> Optional[float]:
    return None if value is None else number(value, name, positive)


def numbers_of(value: Any, name: str) -> Tuple[float, ...]:
    """One finite number or a sequence of them, as a tuple."""
    values = value if isinstance(value, (list, tuple)) or _is_array(value) else (value,)
    checked = tuple(number(item, name) for item in _flat(values))
    if not checked:
        raise InputError(f"{name} must be a number or a list of numbers, not an empty list")
    return checked


def whole(value: Any, name: str, low: int = 0, high: Optional[int] = None) -> int:
    """A whole number from `low` (to `high`): 3 and np.int64(3), not 3.0, 0.5 or True."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be a whole number, not {_shown(value)}")
    result = int(value)
    if result < low or (high is not None and result > high):
        span = f"from {low}" + (f" to {high}" if high is not None else "")
        raise InputError(f"{name} must be a whole number {span}, not {result}")
    return result


def class_numbers(value: Any, name: str = "classes") -> Tuple[int, ...]:
    """One class number or distinct ones (0, 1, ...)."""
    values = value if isinstance(value, (list, tuple)) or _is_array(value) else (value,)
    checked = tuple(whole(item, f"each of {name}", 0) for item in _flat(values))
    if not checked or len(set(checked)) != len(checked):
        raise InputError(f"{name} must be distinct class numbers from 0, not {_shown(value)}")
    return checked


def callable_or_none(value: Any, name: str) -> Any:
    if value is not None and not callable(value):
        raise InputError(f"{name} must be a function (called as {name}(done, total)), not {_shown(value)}")
    return value


def of_type(value: Any, kind: type, name: str) -> Any:
    """`value` if it is None or a `kind`, else InputError saying what it should be."""
    if value is not None and not isinstance(value, kind):
        raise InputError(f"{name} must be a {kind.__name__}, not {_shown(value)}")
    return value


def _is_array(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "ndim") and value.ndim > 0


def _flat(values: Any) -> Sequence[Any]:
    return list(values.ravel()) if _is_array(values) else list(values)

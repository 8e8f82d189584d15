"""Spatial sizes and strides as people give them ("512x1024", "16", (512, 1024)), checked: positive whole
numbers, at most 3 axes of at most MAX_SIZE pixels."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

from ..errors import InputError

#: A spatial size: (512, 1024), "512x1024", "512,1024" or "512" (every axis).
Size = Union[str, Sequence[int]]
#: `stride`: 16 or "16" or "16x8" (per spatial axis).
Stride = Union[int, str, Sequence[int]]


def split_ints(text: str) -> Tuple[int, ...]:
    """'512x1024', '512,1024' or '512' -> its integers; ValueError if they are not integers."""
    return tuple(int(part) for part in text.lower().replace(",", "x").split("x"))


def parse_stride_values(value: Stride) -> Tuple[int, ...]:
    """A stride's positive whole numbers (16, "16", "16x8"); how many the model needs is `atrous`'s check."""
    return parse_size((value,) if isinstance(value, int) else value, "stride", "16 or 16x8")


def parse_size(value: Size, what: str = "size", example: str = "512x1024") -> Tuple[int, ...]:
    """A spatial size from text or a sequence; InputError unless it is positive integers."""
    try:
        size = split_ints(value) if isinstance(value, str) else tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{what} '{value}' is not a list of integers like {example}") from None
    if not size or min(size) <= 0:
        raise InputError(f"{what} '{value}' must be positive integers like {example}")
    if max(size) > MAX_SIZE or len(size) > 3:
        raise InputError(f"{what} '{value}' is more than this tool handles: at most 3 axes of at most {MAX_SIZE} "
                         "pixels")
    return size


#: The largest spatial size a flag may ask for on one axis (a picture of 65536 x 65536 RGB floats is 48 GiB already;
#: the 1 GiB cap on a model's input then applies to the whole).
MAX_SIZE = 1 << 16

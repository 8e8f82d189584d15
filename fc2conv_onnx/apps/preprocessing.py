"""How pixels become a model's input: values / scale, then (value - mean) / std per channel, in the channel order
the model reads, as a float32 batch of one in its layout. The values are looked up in a table of the 256
possible ones per channel, written into a buffer the caller may reuse."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np

from ..errors import InputError
from ..model import arguments
from ..model.layout import CHANNELS_LAST
from .pictures import in_mode


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes the model's input: values / pixel_scale, then (value - mean) / std per channel,
    in `channels` order ("rgb", "bgr", or "gray" for one channel). `mean` and `std` are one number or one
    per channel, as on the command line (the fields are named like its flags). `scale` is the older name of
    `pixel_scale`, still taken (and read: it holds the same value)."""

    pixel_scale: float = 255.0
    mean: Union[float, Tuple[float, ...]] = (0.0,)
    std: Union[float, Tuple[float, ...]] = (1.0,)
    channels: str = "rgb"
    scale: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("mean", "std"):  # frozen: set once, here
            object.__setattr__(self, name, arguments.numbers_of(getattr(self, name), name))
        pixel_scale = arguments.number(self.pixel_scale, "pixel_scale")
        if self.scale is not None:
            older = arguments.number(self.scale, "scale")
            if pixel_scale not in (255.0, older):
                raise InputError("scale is the older name of pixel_scale: give one of them")
            pixel_scale = older
        object.__setattr__(self, "pixel_scale", pixel_scale)
        object.__setattr__(self, "scale", pixel_scale)
        if not self.pixel_scale or 0 in self.std:  # type: ignore[operator]
            raise InputError("pixel_scale and std must not be 0")
        if self.channels not in ("rgb", "bgr", "gray"):
            raise InputError(f"channels {self.channels!r} is not rgb, bgr or gray")

    def unusual(self) -> str:
        """What to tell a user whose numbers turn every pixel (0..255) into nearly one value, into values far
        from any a network is trained on (a mean in pixel units after the default division by 255: all
        inputs about -1, and no detections), or into raw values up to the hundreds (--pixel-scale 1 alone: MTCNN
        then finds 899 "faces"), with what to try; '' when they look usable."""
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        low, high = (0.0 / self.pixel_scale - mean) / std, (255.0 / self.pixel_scale - mean) / std
        span = float(np.abs(high - low).min())
        far = float(np.minimum(np.abs(low), np.abs(high)).max())
        reach = float(np.maximum(np.abs(low), np.abs(high)).max())
        if span >= 0.1 and far <= 10.0 and reach <= 10.0:
            return ""
        shown = ", ".join(f"{a:.3g}..{b:.3g}" for a, b in zip(np.atleast_1d(low), np.atleast_1d(high)))
        hint = (" (--mean and --std look like pixel units: give --pixel-scale 1)"
                if self.pixel_scale != 1.0 and float(np.abs(mean).max()) > 1.0 else
                " (most networks are trained on 0..1 or standardised values: give --pixel-scale 255, or --mean and "
                "--std; a model trained on raw 0..255 pixels, as Keras applications with their preprocessing "
                "inside are, is right as it is)" if far <= 10.0 and span >= 0.1 else "")
        what = "nearly one value" if span < 0.1 else "values far from any a network is usually trained on" \
            if far > 10.0 else "values up to the hundreds"
        return (f"--pixel-scale {self.pixel_scale:g}, --mean and --std turn pixels 0..255 into {shown}: {what}; the "
                f"model may find nothing{hint}")


def model_mode(channels: int, prep: Preprocessing) -> str:
    """The Pillow mode the model's input is read from: "L" (one channel) or "RGB"."""
    if prep.channels == "gray" or channels == 1:
        if channels != 1:
            raise InputError(f"--channels gray gives 1 channel; the model takes {channels}")
        return "L"
    if channels != 3:
        raise InputError(f"the model takes {channels} channels; pictures are read as RGB or grayscale")
    return "RGB"


def model_input(image, channels: int, layout: str, prep: Preprocessing,
                buffer: Optional[np.ndarray] = None) -> np.ndarray:
    """The image as a batch of one, [1, C, H, W] or [1, H, W, C], float32, preprocessed. `buffer` (a
    [C, H, W] float32 array, the last call's, say) is written over when it has that shape: a frame-sized
    array made anew for every run is fresh memory whose pages fault in as it is filled (measured: model_input
    2.3x slower, detect 1.17x a hand loop instead of 1.01x)."""
    mode = model_mode(channels, prep)
    pixels = np.asarray(in_mode(image, mode))  # 8 bits: 256 values a channel
    if mode == "L":
        pixels = pixels[..., None]
    elif prep.channels == "bgr":
        pixels = pixels[..., ::-1]
    table = value_table(prep, pixels.shape[-1])
    shape = (pixels.shape[-1],) + pixels.shape[:2]
    planes = buffer if buffer is not None and buffer.shape == shape else np.empty(shape, np.float32)
    for channel, plane in enumerate(planes):  # 'clip': the indices are known to be in range, and it is 3x faster
        np.take(table[channel], pixels[..., channel], out=plane, mode="clip")
    return planes[None] if layout != CHANNELS_LAST else np.ascontiguousarray(planes.transpose(1, 2, 0))[None]


def value_table(prep: Preprocessing, channels: int) -> np.ndarray:
    """[C, 256] float32: each 8-bit value of each channel preprocessed, (value / scale - mean) / std, in
    float32 as an image's values would be one by one; looking pixels up in it is 4x faster than computing."""
    mean, std = np.atleast_1d(np.asarray(prep.mean, np.float32)), np.atleast_1d(np.asarray(prep.std, np.float32))
    for name, given in (("mean", mean), ("std", std)):
        if given.size not in (1, channels):
            raise InputError(f"--{name} has {given.size} values; give 1 or {channels}")
    values = np.arange(256, dtype=np.float32)[:, None] / np.float32(prep.pixel_scale)
    return np.ascontiguousarray(np.broadcast_to((values - mean) / std, (256, channels)).T)

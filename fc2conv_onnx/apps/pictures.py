"""Pictures of class maps: run a converted model on an image file and draw its output map over the image,
each cell at the input window it stands for (the geometry stored in the model), with a colour bar.

Needs Pillow, an optional extra: pip install 'fc2conv-onnx[heatmap]'.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError, printable
from ..model import arguments
from ..model.geometry import Geometry
from ..model.layout import CHANNELS_LAST

#: Colour map anchors, low to high (dark blue, blue, cyan, yellow, red): readable over photographs.
COLOURS = np.array([[0, 0, 96], [0, 64, 255], [0, 224, 224], [255, 224, 0], [224, 0, 0]], dtype=np.float64)
#: The colour bar's stripe and its margins; the labels beside it set the rest of its width.
BAR_STRIPE, BAR_MARGIN = 16, 4
#: Pictures smaller than this on their long side are drawn enlarged by a whole factor (pixels as blocks).
MIN_LONG_SIDE = 512


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes the model's input: values / scale, then (value - mean) / std per channel,
    in `channels` order ("rgb", "bgr", or "gray" for one channel). `mean` and `std` are one number or one
    per channel, as on the command line."""

    scale: float = 255.0
    mean: Union[float, Tuple[float, ...]] = (0.0,)
    std: Union[float, Tuple[float, ...]] = (1.0,)
    channels: str = "rgb"

    def __post_init__(self) -> None:
        for name in ("mean", "std"):  # frozen: set once, here
            object.__setattr__(self, name, arguments.numbers_of(getattr(self, name), name))
        object.__setattr__(self, "scale", arguments.number(self.scale, "scale"))
        if not self.scale or 0 in self.std:  # type: ignore[operator]
            raise InputError("scale and std must not be 0")
        if self.channels not in ("rgb", "bgr", "gray"):
            raise InputError(f"channels {self.channels!r} is not rgb, bgr or gray")

    def unusual(self) -> str:
        """What to tell a user whose numbers turn every pixel (0..255) into nearly one value or into values far
        from any a network is trained on (a mean in pixel units after the default division by 255: all
        inputs about -1, and no detections), with what to try; '' when they look usable."""
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        low, high = (0.0 / self.scale - mean) / std, (255.0 / self.scale - mean) / std
        span = float(np.abs(high - low).min())
        far = float(np.minimum(np.abs(low), np.abs(high)).max())
        if span >= 0.1 and far <= 10.0:
            return ""
        shown = ", ".join(f"{a:.3g}..{b:.3g}" for a, b in zip(np.atleast_1d(low), np.atleast_1d(high)))
        hint = (" (--mean and --std look like pixel units: give --pixel-scale 1)"
                if self.scale != 1.0 and float(np.abs(mean).max()) > 1.0 else "")
        what = "nearly one value" if span < 0.1 else "values far from any a network is usually trained on"
        return (f"--pixel-scale {self.scale:g}, --mean and --std turn pixels 0..255 into {shown}: {what}; the "
                f"model may find nothing{hint}")


def colour(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8, along the COLOURS anchors."""
    positions = np.linspace(0.0, 1.0, len(COLOURS))
    values = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(values, positions, COLOURS[:, c]) for c in range(3)], axis=-1).astype(np.uint8)


def _pillow(drawing: bool = False):
    """Pillow's Image module, and its ImageDraw when `drawing` (else None: ImageDraw loads FreeType, about 12 ms
    of a detect run that draws nothing)."""
    try:
        from PIL import Image

        if drawing:
            from PIL import ImageDraw
    except ImportError:
        raise InputError("the heatmap command needs Pillow: pip install 'fc2conv-onnx[heatmap]'") from None
    return Image, ImageDraw if drawing else None


def read_image(path: Union[str, "os.PathLike[str]"], load: bool = True,
               expected: Optional[Tuple[int, int]] = None):
    """The image at `path` as a Pillow image, or InputError. `load=False` reads only its header (its size and
    mode; the pixels are decoded when first used).

    Pictures are taken as people see them: an EXIF orientation (a phone's portrait photo is stored sideways) is
    applied, as every viewer does, so boxes are in the pixels of the picture shown. A file of several frames (an
    animated GIF, a multi-page TIFF) is refused: which frame is meant is the user's to say. Pixels beyond
    MAX_PIXELS are refused before they are decoded; `expected` (width, height as shown, from an earlier
    `image_size`) refuses a picture replaced by one of another size since.
    """
    Image, _ = _pillow()
    path = Path(path)
    if path.is_dir():
        raise InputError(f"image '{path}' is a folder, not a picture")
    if not path.exists():
        raise InputError(f"image '{path}' does not exist")
    if not path.is_file():
        raise InputError(f"image '{path}' is not a regular file (a device, FIFO or socket); give a picture file")
    try:
        with warnings.catch_warnings():  # Pillow's own size warning: the tool's caps say it in its words
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            frames = getattr(image, "n_frames", 1)
            if load and frames == 1:
                # The cap holds where the pixels are decoded: a 20 KB PNG of 1-bit pixels can be 13000 x 13000.
                width, height = image.size
                check_pixels(width, height, f"'{printable(str(path))}' as stored")
                if expected is not None and _shown_size(image) != tuple(expected):
                    raise InputError(f"image '{printable(str(path))}' changed during the run: it was "
                                   f"{expected[0]}x{expected[1]} when its header was read, and is now "
                                   f"{'x'.join(map(str, _shown_size(image)))}; run again once it is complete")
                image.load()
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"image '{path}' is not a readable picture ({error})") from None
    if frames != 1:
        raise InputError(f"image '{path}' has {frames} frames (an animation or a multi-page file); give one picture, "
                         "the frame you want saved on its own")
    if image.mode.startswith(("I", "F")):  # Pillow would clip them to 8 bits: a wrong picture, not an error
        raise InputError(f"image '{path}' has {image.mode} pixels (16 or 32 bits); give an 8-bit picture (RGB or "
                         "gray), scaled as the model was trained")
    if load and _orientation(image) not in (None, 1):
        from PIL import ImageOps

        image = ImageOps.exif_transpose(image)
    return image


#: What a folder is searched for: the files with these extensions (in any case), the formats Pillow reads.
PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def picture_files(given: Sequence[Union[str, "os.PathLike[str]"]]) -> List[str]:
    """The picture files `given` names, in order: a file as it is; a folder, the pictures in it (not in its
    subfolders), by name; a pattern (*, ?, [...]) that names no file, the pictures it matches, by name.
    InputError for a folder or pattern that holds no picture."""
    import glob

    found: List[str] = []
    for item in given:
        name = os.fspath(item)
        if os.path.isdir(name):
            try:
                inside = sorted(os.path.join(name, entry) for entry in os.listdir(name))
            except OSError as error:
                raise InputError(f"folder '{printable(name)}' cannot be listed ({error.strerror or error})") from None
            what = f"folder '{printable(name)}'"
        elif not os.path.exists(name) and glob.has_magic(name):
            inside, what = sorted(glob.glob(name)), f"pattern '{printable(name)}'"
        else:
            found.append(name)
            continue
        pictures = [path for path in inside if path.lower().endswith(PICTURE_EXTENSIONS) and os.path.isfile(path)]
        if not pictures:
            raise InputError(f"{what} holds no picture ({', '.join(PICTURE_EXTENSIONS)})")
        found += pictures
    return found


def from_array(pixels, name: str):
    """A picture given as pixels (uint8, H x W x C with C 1, 3 or 4, or H x W: Ray Data's `image` column) as a
    Pillow image, taken as it is (no EXIF: an array has none); InputError naming `name` otherwise."""
    Image, _ = _pillow()
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise InputError(f"picture {name} has {pixels.dtype} pixels; give uint8 pixels (0..255), as read_images "
                         "gives them")
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)) or 0 in pixels.shape:
        raise InputError(f"picture {name} is an array of shape {list(pixels.shape)}; give height x width x "
                         "channels (1, 3 or 4)")
    return Image.fromarray(np.ascontiguousarray(pixels))


#: EXIF orientations that turn the stored raster by 90 degrees (its width and height swap when shown).
_QUARTER_TURNS = (5, 6, 7, 8)


def _orientation(image) -> Optional[int]:
    try:
        return image.getexif().get(0x0112)  # the EXIF Orientation tag
    except Exception:  # a damaged EXIF block: the raster as stored
        return None


def _png_orientation(path: Path) -> Optional[int]:
    """The EXIF orientation of a PNG, from its eXIf chunk, found by reading chunk headers only: Pillow's
    getexif() decodes the whole picture to look past the pixels (an eXIf chunk may follow them), which
    doubled what a picture costs `detect`. tests/test_pictures_header.py proves it agrees with Pillow."""
    from PIL import Image

    with open(path, "rb") as stream:
        if stream.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        for _ in range(1 << 16):  # chunks; a damaged file ends the walk, never loops
            header = stream.read(8)
            if len(header) < 8:
                return None
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind == b"eXIf":
                exif = Image.Exif()
                try:
                    exif.load(stream.read(min(length, 1 << 20)))
                    return exif.get(0x0112)
                except Exception:  # a damaged EXIF block: the raster as stored
                    return None
            if kind == b"IEND":
                return None
            stream.seek(length + 4, 1)  # the chunk's data and CRC
    return None


def image_size(path: Union[str, "os.PathLike[str]"]) -> Tuple[int, int]:
    """(width, height) of the picture at `path` as shown (EXIF orientation applied), from its header (for a PNG,
    its chunk headers); InputError if it is not a picture."""
    with read_image(path, load=False) as image:
        return _shown_size(image)


def _shown_size(image) -> Tuple[int, int]:
    """(width, height) of an opened picture as shown, its EXIF orientation applied (read from its header)."""
    width, height = image.size
    turn = _png_orientation(Path(image.filename)) if image.format == "PNG" else _orientation(image)
    return (height, width) if turn in _QUARTER_TURNS else (width, height)


def resized(image, resize: Union[float, Tuple[int, int]]):
    """`image` resized by a factor, or to (height, width) pixels: by area averaging (Pillow's box filter) when
    it shrinks, as image pyramids are made (OpenCV's INTER_AREA, torch's "area"), else bilinear. An image
    that is neither RGB nor gray is made RGB first."""
    Image, _ = _pillow()
    width, height = image.size
    if isinstance(resize, (tuple, list)):
        check_pixels(resize[1], resize[0], f"resized to {resize[0]}x{resize[1]}")
        size = (int(resize[1]), int(resize[0]))
    else:
        size = scaled_size(image.size, resize)
    if min(size) < 1:
        raise InputError(f"resizing the {width}x{height} image (width x height) by {resize} leaves no pixel")
    shrinks = size[0] <= width and size[1] <= height
    source = image if image.mode in ("RGB", "L") else image.convert("RGB")
    return source.resize(size, Image.BOX if shrinks else Image.BILINEAR)


def scaled_size(size: Tuple[int, int], scale: float) -> Tuple[int, int]:
    """A picture's (width, height) resized by `scale`, as `resized` makes it; a scale that is not a finite
    positive number, or that makes more than MAX_PIXELS pixels, is refused (exit 3, naming the cap)."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise InputError(f"scale {scale} is not a positive number")
    width, height = size[0] * float(scale), size[1] * float(scale)
    check_pixels(width, height, f"scaled by {scale:g}")
    return round(width), round(height)


#: The most pixels a picture may have once scaled or resized: the model's input for it is float32, so 2^26
#: pixels of 3 channels are 768 MiB, within the 1 GiB a model's input may take (io.MAX_INPUT_BYTES).
MAX_PIXELS = 1 << 26


def check_pixels(width: float, height: float, how: str) -> None:
    if width * height > MAX_PIXELS:
        raise InputError(f"the picture {how} would have {width * height:.3g} pixels, more than the {MAX_PIXELS} "
                         "(8192 x 8192) this tool runs a model on")


def model_mode(channels: int, prep: Preprocessing) -> str:
    """The Pillow mode the model's input is read from: "L" (one channel) or "RGB"."""
    if prep.channels == "gray" or channels == 1:
        if channels != 1:
            raise InputError(f"--channels gray gives 1 channel; the model takes {channels}")
        return "L"
    if channels != 3:
        raise InputError(f"the model takes {channels} channels; pictures are read as RGB or grayscale")
    return "RGB"


def in_mode(image, mode: str):
    """`image` in Pillow mode `mode` (itself, not a copy, when it already is)."""
    return image if image.mode == mode else image.convert(mode)


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
    values = np.arange(256, dtype=np.float32)[:, None] / np.float32(prep.scale)
    return np.ascontiguousarray(np.broadcast_to((values - mean) / std, (256, channels)).T)


def spread(cells: np.ndarray, geometry: Geometry, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """A [h, w] map of cells as an image-sized array: each cell's value at the centre of its input window,
    interpolated in between; and the mask of the pixels the cells cover (window centres +- half a stride)."""
    height, width = size
    planes = []
    covered = []
    for axis, (count, length) in enumerate(((cells.shape[0], height), (cells.shape[1], width))):
        centres = geometry.offset[axis] + np.arange(count) * geometry.stride[axis] + geometry.window[axis] / 2.0
        pixels = np.arange(length) + 0.5
        planes.append((centres, pixels))
        half = geometry.stride[axis] / 2.0
        covered.append((pixels >= centres[0] - half) & (pixels <= centres[-1] + half))
    (row_centres, rows), (column_centres, columns) = planes
    along_rows = np.stack([np.interp(rows, row_centres, cells[:, j]) for j in range(cells.shape[1])], axis=1)
    values = np.stack([np.interp(columns, column_centres, along_rows[i]) for i in range(height)], axis=0)
    return values, covered[0][:, None] & covered[1][None, :]


#: A map spread over a picture: its values per pixel, and the pixels its cells cover.
Layer = Tuple[np.ndarray, np.ndarray]


def over_scales(layers: Sequence[Layer], size: Tuple[int, int]) -> Layer:
    """Maps spread over the picture at several scales, brought to `size` (height, width) and combined: per
    pixel the highest value among the scales whose cells cover it."""
    Image, _ = _pillow()
    height, width = size
    best = np.full(size, -np.inf)
    covered = np.zeros(size, dtype=bool)
    for values, mask in layers:
        if values.shape == size:  # at the picture's own scale: as it is
            best, covered = np.where(mask, np.maximum(best, values), best), covered | mask
            continue
        scaled = np.asarray(Image.fromarray(values.astype(np.float32), mode="F").resize((width, height),
                                                                                         Image.BILINEAR))
        reach = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 0
        best = np.where(reach, np.maximum(best, scaled), best)
        covered |= reach
    return np.where(covered, best, 0.0), covered


def value_range(maps: Sequence[np.ndarray]) -> Tuple[float, float]:
    """The lowest and highest value of the maps' cells: the colour bar's ends unless the caller sets them."""
    return min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)


def render(image, maps: Sequence[Tuple[str, Layer]], alpha: float, ends: Tuple[float, float]):
    """The picture: one panel per (label, map spread over the image) - the image with the map over it - side
    by side, and a colour bar from `ends[0]` to `ends[1]`. A small image is drawn `enlargement(image)` times
    larger, in blocks of pixels, so that the picture is at least MIN_LONG_SIDE pixels on its long side."""
    Image, ImageDraw = _pillow(drawing=True)
    base = np.asarray(image.convert("RGB"), dtype=np.float64)
    height, width = base.shape[:2]
    factor = enlargement(image)
    low, high = ends
    span = high - low if high > low else 1.0
    panels = []
    for label, (values, covered) in maps:
        heat = colour((values - low) / span).astype(np.float64)
        weight = (alpha * covered)[..., None]
        panel = Image.fromarray((base * (1 - weight) + heat * weight).round().astype(np.uint8))
        panel = panel.resize((width * factor, height * factor), Image.NEAREST)
        ImageDraw.Draw(panel).text((4, 2), label, fill=(255, 255, 255))
        panels.append(panel)
    top, bottom = f"{high:.3g}", f"{low:.3g}"
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = int(np.ceil(max(measure.textlength(top), measure.textlength(bottom))))
    left = width * factor * len(panels)
    picture = Image.new("RGB", (left + bar_width(labels), height * factor), (255, 255, 255))
    for index, panel in enumerate(panels):
        picture.paste(panel, (index * width * factor, 0))
    bar = colour(np.linspace(1.0, 0.0, height * factor))[:, None, :].repeat(BAR_STRIPE, axis=1)
    picture.paste(Image.fromarray(bar), (left + BAR_MARGIN, 0))
    draw = ImageDraw.Draw(picture)
    text_left = left + 2 * BAR_MARGIN + BAR_STRIPE
    draw.text((text_left, 2), top, fill=(0, 0, 0))
    draw.text((text_left, height * factor - 12), bottom, fill=(0, 0, 0))
    return picture


def enlargement(image) -> int:
    """The whole factor a picture of `image` is drawn at: 1, or enough for MIN_LONG_SIDE on its long side."""
    return max(1, -(-MIN_LONG_SIDE // max(image.size)))


def bar_width(label_width: int) -> int:
    """The colour bar's width for labels `label_width` pixels wide: stripe, margins and the labels whole."""
    return 3 * BAR_MARGIN + BAR_STRIPE + label_width


def choose(scores: np.ndarray, classes: Optional[Sequence[int]], top: Optional[int]) -> List[int]:
    """The classes to draw from a [K, h, w] map: `classes`, the `top` ones by their highest cell, or (default)
    the single highest one (the only one, for K = 1)."""
    count = scores.shape[0]
    for value in list(classes or ()) + ([top] if top is not None else []):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise InputError(f"{'class' if value is not top else 'top'} {value!r} is not a whole number")
    if top is not None and top < 1:
        raise InputError(f"top {top} is not a positive number of classes")
    if classes is not None:
        if not classes or len(set(classes)) != len(classes):
            raise InputError(f"classes {list(classes)} must be distinct class numbers, at least one")
        outside = [k for k in classes if not 0 <= k < count]
        if outside:
            raise InputError(f"--class {outside[0]}: the output has classes 0 to {count - 1}")
        return [int(k) for k in classes]
    peaks = scores.reshape(count, -1).max(axis=1)
    return [int(k) for k in np.argsort(-peaks, kind="stable")[:max(1, top or 1)]]


#: Box colours by class, cycling (red, cyan, yellow, magenta, green, orange): visible over photographs.
BOX_COLOURS = ((230, 25, 25), (0, 200, 220), (250, 220, 0), (220, 0, 220), (40, 200, 40), (255, 140, 0))


def draw_boxes(image, boxes: Sequence[Tuple[Tuple[float, float, float, float], str, int]]):
    """The picture with each (box x1, y1, x2, y2 in its pixels, label, class) drawn as a rectangle in its
    class's colour, its label above it; enlarged like `render` (at least MIN_LONG_SIDE pixels, whole factor)."""
    Image, ImageDraw = _pillow(drawing=True)
    factor = enlargement(image)
    width, height = image.size
    picture = image.convert("RGB").resize((width * factor, height * factor), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    line = max(1, factor // 2)
    for box, label, klass in boxes:
        x1, y1, x2, y2 = (v * factor for v in box)
        tint = BOX_COLOURS[klass % len(BOX_COLOURS)]
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=tint, width=line)
        text_width = draw.textlength(label)
        top = y1 - 12 if y1 >= 12 else y1 + line
        draw.rectangle((x1, top, x1 + text_width + 3, top + 11), fill=tint)
        draw.text((x1 + 2, top), label, fill=(0, 0, 0))
    return picture

"""Drawing over pictures: a class map spread over the picture at the windows its cells stand for, combined over
scales, coloured with a colour bar (heatmap); boxes with their class and score (detect --draw)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..model.geometry import Geometry
from .pictures import pillow

#: Colour map anchors, low to high (dark blue, blue, cyan, yellow, red): readable over photographs.
COLOURS = np.array([[0, 0, 96], [0, 64, 255], [0, 224, 224], [255, 224, 0], [224, 0, 0]], dtype=np.float64)
#: The colour bar's stripe and its margins; the labels beside it set the rest of its width.
BAR_STRIPE, BAR_MARGIN = 16, 4
#: Pictures smaller than this on their long side are drawn enlarged by a whole factor (pixels as blocks).
MIN_LONG_SIDE = 512


def colour(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8, along the COLOURS anchors."""
    positions = np.linspace(0.0, 1.0, len(COLOURS))
    values = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(values, positions, COLOURS[:, c]) for c in range(3)], axis=-1).astype(np.uint8)


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
    Image, _ = pillow()
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
    Image, ImageDraw = pillow(drawing=True)
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
    Image, ImageDraw = pillow(drawing=True)
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

"""The heatmap command: a converted model's class map drawn over a picture, at one scale or several."""
from __future__ import annotations

import os
from dataclasses import dataclass
from io import BytesIO
from typing import Any, BinaryIO, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError, printable
from ..model import arguments, guard, writes
from ..model.detections import checked_scales
from ..model.geometry import Geometry
from . import drawing, pictures
from .labels import checked_labels, name_of
from .maps import at_taken_size, check_picture_size, open_map_model, taken_size
from .preprocessing import Preprocessing

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Heatmap:
    """What `heatmap` drew."""

    output: str
    model_output: str
    classes: Tuple[int, ...]
    grid: Tuple[int, ...]
    #: The colour bar's ends: the data's range, or the one asked for.
    value_range: Tuple[float, float]
    geometry: Geometry
    #: The lowest and highest value of the drawn maps.
    data_range: Tuple[float, float] = (0.0, 0.0)
    #: The picture is the image drawn this many times larger (at least 512 pixels on its long side).
    enlargement: int = 1
    #: The scales the model ran at (their maps combined by the highest value per pixel).
    scales: Tuple[float, ...] = (1.0,)
    #: How the classes drawn were chosen when none were asked for ('' when they were).
    picked: str = ""
    #: The drawn classes' names, when the model or the caller gave labels.
    names: Tuple[str, ...] = ()

    def to_text(self) -> str:
        axes = lambda values: "x".join(map(str, values))  # noqa: E731
        bar = "" if self.value_range == self.data_range else \
            f" (colour bar {self.value_range[0]:.4g} .. {self.value_range[1]:.4g})"
        if self.scales != (1.0,):
            bar += f"; at scales {', '.join(f'{s:g}' for s in self.scales)} (cells counted at the first)"
        named = f" ({', '.join(self.names)})" if self.names else ""
        picked = f" ({self.picked})" if self.picked else ""
        lines = [f"heatmap of '{self.model_output}', class(es) {', '.join(map(str, self.classes))}{named}{picked}: "
                 f"{axes(self.grid)} cells, stride {axes(self.geometry.stride)}, window {axes(self.geometry.window)}, "
                 f"values {self.data_range[0]:.4g} .. {self.data_range[1]:.4g}{bar}"]
        if not self.geometry.local:
            lines.append(self.geometry.locality())
        return "\n".join(map(printable, lines + [f"written: {self.output}"]))

    def to_dict(self) -> dict:
        return {"output": self.output, "model_output": self.model_output, "classes": list(self.classes),
                "local": self.geometry.local, "grid": list(self.grid), "value_range": list(self.value_range),
                "data_range": list(self.data_range), "enlargement": self.enlargement, "scales": list(self.scales),
                "geometry": self.geometry.to_dict(), "labels": list(self.names), "picked": self.picked}


def heatmap(model: Any, image: PathLike, output: Union[PathLike, BinaryIO], *,
            output_name: Optional[str] = None, classes: Optional[Union[int, Sequence[int]]] = None,
            top: Optional[int] = None,
            preprocessing: Optional[Preprocessing] = None, alpha: float = 0.6,
            value_range: Optional[Tuple[float, float]] = None,
            resize: Optional[Union[float, Tuple[int, int]]] = None,
            scales: Optional[Sequence[float]] = None, klass: Optional[int] = None, transpose: bool = False,
            labels: Optional[Sequence[str]] = None) -> Heatmap:
    """Run a converted model on an image file (PNG, JPEG, ... via Pillow) and write a PNG of its class map over
    the image: each cell at the centre of the input window it stands for (the geometry stored in the model),
    interpolated between cells, with a colour bar.

    `classes` picks classes (channels) of the map, one panel each, as `detect`'s `classes` does (`klass`, one
    class, is the older spelling); `top` the N classes whose highest cell is highest; by default the class
    with the highest cell. `preprocessing` turns pixels into the model's input
    (scale, mean, std, channel order); `alpha` is the map's opacity; `value_range` fixes the colour bar's
    ends (default: the maps' min and max). `resize` (a factor, or (height, width)) resizes the image before
    the model sees it: objects should be about the model's window in size. `scales` runs the model on the
    image at each scale (1, 0.5, ...: an image pyramid, for objects of several sizes) and draws one map, per
    pixel the highest value among the scales. `output` is a file name (written atomically) or a binary file
    object (sys.stdout.buffer, ...), which gets the PNG's bytes. `transpose`: the model reads pictures as
    W x H; it runs on the picture transposed, and the map is drawn in the picture's frame. `labels`: the
    classes' names (class 0 first), shown on the panels.
    """
    if klass is not None:
        if classes is not None:
            raise InputError("give classes or klass (its older spelling), not both")
        classes = klass
    if classes is not None:
        classes = list(arguments.class_numbers(classes))
    if top is not None:
        top = arguments.whole(top, "top", 1)
    alpha = arguments.number(alpha, "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha {alpha} is not between 0 and 1")
    if value_range is not None:
        value_range = checked_value_range(value_range)
    arguments.of_type(preprocessing, Preprocessing, "preprocessing")
    if isinstance(output, (str, os.PathLike)):
        guard.check_outputs([("the heatmap", output)], guard.pictures_read(model, [image]))
    runner = open_map_model(model)
    name = runner.placed(output_name)
    geometry = runner.geometries[name]
    labels = checked_labels(labels)
    stored = runner.stored_labels(name) if labels is None else None
    if stored is not None:
        labels = stored[0]
    picture = pictures.read_image(image)
    if resize is not None:
        picture = pictures.resized(picture, resize)
    if scales is not None:
        scales = checked_scales(scales)
    seen = pictures.transposed(picture) if transpose else picture  # the picture as the model reads it
    for scale in scales or (1.0,):  # every scale before anything runs
        check_picture_size(taken_size(pictures.scaled_size(seen.size, scale), geometry), geometry, _at(scale))
    runs = []  # (the picture at one scale, its [K, h, w] map)
    for scale in scales or (1.0,):
        scaled = at_taken_size(seen, scale, geometry)
        runs.append((scaled, runner.maps(scaled, [name], preprocessing or Preprocessing(), _at(scale))[name]))
    peaks = np.stack([scores.reshape(scores.shape[0], -1).max(axis=1) for _, scores in runs], axis=1)
    chosen = drawing.choose(peaks[:, None, :], classes, top)  # by each class's highest cell at any scale
    size = (picture.size[1], picture.size[0])
    maps = [(name_of(labels, k) if labels is not None else f"class {k}", drawing.over_scales(
        [_framed(drawing.spread(scores[k], geometry, (scaled.size[1], scaled.size[0])), transpose)
         for scaled, scores in runs], size)) for k in chosen]
    data = drawing.value_range([scores[k] for k in chosen for _, scores in runs])
    ends = (float(value_range[0]), float(value_range[1])) if value_range else data
    drawn = drawing.render(picture, maps, alpha, ends)
    buffer = BytesIO()
    drawn.save(buffer, format="PNG")
    count = runs[0][1].shape[0]
    picked = "" if classes is not None or count == 1 else \
        f"the {top} of {count} with the highest cells; --class K for others" if top else \
        f"the one of {count} with the highest cell; --class K or --top N for others"
    return Heatmap(_write(buffer.getvalue(), output), name, tuple(chosen), tuple(runs[0][1].shape[1:]), ends,
                   geometry, data, drawing.enlargement(picture), tuple(scales or (1.0,)), picked,
                   tuple(name_of(labels, k) for k in chosen) if labels is not None else ())


def checked_value_range(values: Any, name: str = "value_range") -> Tuple[float, float]:
    """The colour bar's ends, LOW < HIGH (the API's value_range, the CLI's --range: `name` says which)."""
    ends = arguments.numbers_of(values, name)
    if len(ends) != 2 or ends[0] >= ends[1]:
        raise InputError(f"{name} needs LOW,HIGH with LOW < HIGH, not {','.join(map(str, ends))}")
    return ends[0], ends[1]


def _framed(layer: drawing.Layer, transpose: bool) -> drawing.Layer:
    """A map spread over the picture as the model read it, in the picture's own frame."""
    return (layer[0].T, layer[1].T) if transpose else layer


def _at(scale: float) -> str:
    return "" if scale == 1.0 else f" at scale {scale:g}"


def _write(png: bytes, output: Union[PathLike, BinaryIO]) -> str:
    """Write `png` to a file name (atomically) or a binary file object; what to call where it went."""
    if isinstance(output, (str, os.PathLike)):
        writes.save_bytes(png, output)
        return str(output)
    if not hasattr(output, "write"):
        raise InputError(f"the heatmap's output must be a file name or a binary file object, not "
                         f"{type(output).__name__}")
    writes.write_stream(png, output, str(getattr(output, "name", "the file object")))
    return str(getattr(output, "name", "a file object"))

"""The detect command: a converted model run on pictures at the scales of an image pyramid, its cells turned
into boxes in each picture's pixels, suppressed per class across scales (the steps are in `detections`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from io import BytesIO
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..model import writes
from . import pictures
from .detections import (AUTO, UNION, Detection, DetectionSettings, best_first, candidates, checked_scales,
                         overridden, pyramid, records_text)
from ..errors import InputError, printable
from ..model.geometry import Geometry
from .maps import MapModel, check_picture_size, open_map_model

PathLike = Union[str, "os.PathLike[str]"]
#: Called as progress(done, total) after each run of the model (one per picture and scale).
Progress = Callable[[int, int], None]
#: The default ratio between neighbouring scales of a pyramid made from object sizes.
SCALE_STEP = 1.25


@dataclass
class Detections:
    """What `detect` found: the records best first, and how they were made."""

    records: List[Detection]
    settings: DetectionSettings
    geometry: Geometry
    #: Picture -> the scales the model ran at on it.
    scales: Dict[str, Tuple[float, ...]]
    #: The scores are the output's values as they are, and it is not made by a Softmax or Sigmoid.
    logits: bool = False
    written: Optional[str] = None
    drawn: Tuple[str, ...] = ()

    def to_text(self) -> str:
        s = self.settings
        which = "each cell's best class" if s.classes is None else f"class(es) {', '.join(map(str, s.classes))}"
        regression = f", boxes moved by '{s.regression}'" if s.regression else ""
        measure = "IoU" if s.overlap == UNION else "over the smaller box"
        lines = [f"detections of '{s.output_name}' ({which}, score above {s.threshold:g}, overlap ({measure}) up to "
                 f"{s.iou:g}{regression}): {len(self.records)} in {len(self.scales)} picture(s)"]
        for image, scales in self.scales.items():
            count = sum(1 for r in self.records if r.image == image)
            lines.append(f"  {image}: {count}, at scale(s) {', '.join(f'{v:.4g}' for v in scales)}")
        if self.logits:
            lines.append(f"scores: '{s.output_name}' is not made by a Softmax or Sigmoid, so its values are taken as "
                         "they are (logits; the threshold is in their units); --activation sigmoid or softmax makes "
                         "them probabilities")
        if not self.geometry.local:
            lines.append(self.geometry.locality())
        lines += [f"written: {self.written}"] if self.written else []
        lines += [f"drawn: {path}" for path in self.drawn]
        return "\n".join(map(printable, lines))

    def to_dict(self) -> dict:
        settings = {f.name: getattr(self.settings, f.name) for f in fields(self.settings)}
        return {"settings": settings, "logits": self.logits, "local": self.geometry.local,
                "scales": {image: list(scales) for image, scales in self.scales.items()},
                "detections": [r.to_dict() for r in self.records], "written": self.written, "drawn": list(self.drawn)}

    def text(self, path: Optional[PathLike] = None) -> str:
        """The records as the file `path` would hold them: CSV for a .csv name, else JSON."""
        return records_text(self.records, None if path is None else str(path))

    def save(self, path: PathLike) -> None:
        """Write the records to `path` (CSV for a .csv name, else JSON), atomically."""
        writes.save_bytes(self.text(path).encode(), path)
        self.written = str(path)

    def draw(self, image: PathLike, output: PathLike) -> None:
        """Write a PNG of `image` with the boxes found on it and their class and score."""
        writes.save_bytes(self.drawing(image), output)
        self.drawn += (str(output),)

    def drawing(self, image: PathLike) -> bytes:
        """A PNG of `image` with the boxes found on it and their class and score."""
        picture = pictures.read_image(image)
        boxes = [(r.box, f"{r.klass}: {r.score:.2f}", r.klass) for r in self.records if r.image == str(image)]
        buffer = BytesIO()
        pictures.draw_boxes(picture, boxes).save(buffer, format="PNG")
        return buffer.getvalue()


def detect(model: Any, images: Sequence[PathLike], settings: Optional[DetectionSettings] = None, *,
           scales: Optional[Sequence[float]] = None, min_size: Optional[float] = None,
           max_size: Optional[float] = None, scale_step: Optional[float] = None,
           preprocessing: Optional[pictures.Preprocessing] = None, progress: Optional[Progress] = None,
           **overrides) -> Detections:
    """Find objects in pictures with a converted classifier: the model runs once per picture and scale (one
    session for all), each cell above the threshold becomes its window's box in the picture's pixels, and
    overlapping boxes of a class are suppressed across scales.

    Args:
        model: a model converted by fc2conv-onnx (a path, ModelProto, ...; see `convert`).
        images: picture files (PNG, JPEG, ...; needs Pillow).
        settings: a `DetectionSettings` (output, classes, threshold, iou, overlap, regression, activation); keyword
            arguments named like its fields override it.
        scales: the scales to run at (1, 0.5, 0.25: each picture resized by each); default: 1 only, the
            pictures as they are. Or instead
        min_size, max_size, scale_step: the sizes of the objects to find, in pixels on the window's long side
            (any of them makes a pyramid; min_size defaults to the window, max_size to the whole picture): the
            scales run from window / min_size down, each `scale_step` (default 1.25) times smaller, while the
            picture holds a window and is a size the model takes. Every picture at every scale is checked
            before the first run.
        preprocessing: how pixels become the model's input (as for `heatmap`).
        progress: called as progress(done, total) after each run.

    Returns:
        `Detections`: `.records` best first (image, box [x1, y1, x2, y2], score, class, scale, cell), and
        `.save(path)` / `.draw(image, png)` to write them.
    """
    settings = overridden(settings or DetectionSettings(), overrides, "detection setting")
    if scales is not None and (min_size, max_size, scale_step) != (None, None, None):
        raise InputError("give either scales or object sizes (min size, max size, scale step), not both")
    if isinstance(images, (str, bytes, os.PathLike)):
        images = [images]  # one picture, not the letters of its name
    if scales is not None:
        scales = checked_scales(scales)
    if not all(isinstance(image, (str, os.PathLike)) for image in images):
        raise InputError("images must be picture paths (str or os.PathLike)")
    names = [str(image) for image in images]
    if not names:
        raise InputError("no picture given")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"picture '{twice[0]}' is given twice")
    runner = open_map_model(model, "detect")
    name = runner.placed(settings.output_name)
    settings = settings.with_output(name)
    geometry = runner.geometries[name]
    if len(geometry.window) != 2:
        raise InputError(f"detect reads pictures; output '{name}' is on a {len(geometry.window)}-D grid")
    outputs = [name] + _regression(runner, settings, geometry)
    found: List[Detection] = []
    # Every picture's header first (a missing or unreadable one is refused before anything runs, and the
    # progress knows its total); then one picture in memory at a time.
    sizes = {image: pictures.image_size(image) for image in names}
    plans = {image: _scales(sizes[image], geometry, scales, min_size, max_size, scale_step) for image in names}
    for image, planned in plans.items():  # every picture at every scale, before anything runs
        for scale in planned:
            check_picture_size(pictures.scaled_size(sizes[image], scale), geometry, _where(image, scale))
    total, done = sum(len(s) for s in plans.values()), 0
    prep = preprocessing or pictures.Preprocessing()
    mode = pictures.model_mode(runner.channels(name), prep)
    for image in names:
        picture = pictures.in_mode(pictures.read_image(image), mode)  # once, not at every scale
        width, height = picture.size
        for scale, size, feed in _inputs(runner, name, picture, plans[image], prep, image):
            maps = runner.run(feed, outputs, size, _where(image, scale))
            offsets = maps[outputs[1]] if settings.regression else None
            if offsets is not None and offsets.shape[1:] != maps[name].shape[1:]:
                raise InputError(f"the regression output '{settings.regression}' has a {offsets.shape[1]}x"
                                 f"{offsets.shape[2]} grid where '{name}' has {maps[name].shape[1]}x"
                                 f"{maps[name].shape[2]}")
            factor = (size[1] / height, size[0] / width)
            found += candidates(maps[name], offsets, geometry, settings, image, scale, factor, (height, width))
            done += 1
            if progress is not None:
                progress(done, total)
    logits = settings.activation == AUTO and name not in runner.scores
    return Detections(best_first(found, settings.iou, settings.overlap), settings, geometry, plans, logits)


def _where(image: str, scale: float) -> str:
    return f" ({image})" + ("" if scale == 1.0 else f" at scale {scale:.4g}")


def _inputs(runner: MapModel, name: str, picture, scales: Sequence[float], prep: pictures.Preprocessing,
            image: str) -> Iterator[Tuple[float, Tuple[int, int], np.ndarray]]:
    """(scale, the scaled picture's size (width, height), the model's input) for each scale. (Made in a
    worker thread while the model ran on the one before, this was 7% faster on a light model and 6% slower
    on a CaffeNet-sized one, whose onnxruntime threads it competed with on 2 cores: not worth a thread.)"""
    for scale in scales:
        scaled = picture if scale == 1.0 else pictures.resized(picture, scale)
        yield scale, scaled.size, runner.feed(scaled, name, prep, _where(image, scale))


def _regression(runner: MapModel, settings: DetectionSettings, geometry: Geometry) -> List[str]:
    """[the regression output], checked to be on the scores' grid; [] without one."""
    if not settings.regression:
        return []
    name = runner.placed(settings.regression, "regression output")
    if runner.geometries[name] != geometry:
        raise InputError(f"the regression output '{name}' is not on the grid of '{settings.output_name}' (their "
                         "stored geometries differ)")
    return [name]


def _scales(size: Tuple[int, int], geometry: Geometry, scales: Optional[Sequence[float]], min_size: Optional[float],
            max_size: Optional[float], step: Optional[float]) -> Tuple[float, ...]:
    """The scales to run a picture of `size` (width, height) at: those given, or the pyramid for the object
    sizes."""
    if scales is not None:
        return tuple(float(s) for s in scales)
    if min_size is None and max_size is None and step is None:
        return (1.0,)  # nothing asked: the picture as it is
    window = (int(geometry.window[0]), int(geometry.window[1]))
    return pyramid(window, (size[1], size[0]), min_size, max_size, step or SCALE_STEP,
                   smallest=tuple(geometry.smallest_taken()))

"""From class maps to detections, in numpy: each cell's window as a box (the stored geometry), an optional
box-regression output, a score threshold, and non-maximum suppression per class; and the scales of an
image pyramid for the object sizes asked for.

The same steps, in the same order and float32 arithmetic, are what `detector_graph` appends to a converted
model (`convert --emit-detections`), and validation compares the two:

1. scores: the output as it is, or through a sigmoid or softmax over the classes (`activation`);
2. classes: those asked for, or per cell only its best class (the others drop out);
3. boxes: cell (i, j)'s window [x1, y1, x2, y2] = [ox + j*sx, oy + i*sy, x1 + ww, y1 + wh] in the model
   input's pixels, moved by the regression's 4 channels times the window's width and height, clipped to
   the input;
4. candidates: scores above the threshold (strictly, as onnx's NonMaxSuppression);
5. suppression: per class, best first, a box is dropped when its IoU with a kept one is above `iou`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np

from ..errors import InputError
from . import arguments
from .geometry import Geometry

R = TypeVar("R")


def overridden(record: R, overrides: Optional[Mapping[str, Any]], what: str) -> R:
    """The dataclass `record` with the API's keyword `overrides` applied (its checks run again); TypeError
    naming an unknown one."""
    overrides = dict(overrides or {})
    known = {f.name for f in fields(record)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown {what}(s) {', '.join(unknown)}; they are {', '.join(sorted(known))}")
    return replace(record, **overrides)  # type: ignore[type-var]


#: `activation`: how an output's values become scores.
AUTO, NO_ACTIVATION, SIGMOID, SOFTMAX = "auto", "none", "sigmoid", "softmax"
ACTIVATIONS = (AUTO, NO_ACTIVATION, SIGMOID, SOFTMAX)
#: `overlap`: what two boxes' intersection is measured against in the suppression. UNION: intersection over
#: union (IoU). SMALLER: intersection over the smaller box's area, which also drops a box lying inside a
#: better one, as cascaded face detectors (MTCNN) do across the scales of a pyramid.
UNION, SMALLER = "union", "smaller"
OVERLAPS = (UNION, SMALLER)


@dataclass(frozen=True)
class DetectionSettings:
    """How a class map becomes detections; the same for `detect` and `convert(emit_detections=...)`.

    Attributes:
        output_name: the output with the class scores (default: the one made by a Softmax or Sigmoid, else
            the first with a geometry).
        classes: the classes (channels) to detect; default: every class, each cell giving only its best one
            (give the object classes of a model with a background class, e.g. (1,)).
        threshold: a cell is a candidate when its score is above this.
        iou: a box overlapping a better box of its class by more than this is dropped.
        overlap: what the overlap is measured against: "union" (default: IoU) or "smaller" (the smaller
            box's area, so that a box inside a better one goes too).
        regression: an output with 4 channels on the scores' grid: corner offsets (x1, y1, x2, y2) as
            fractions of the window's width and height, added to the window's corners (cascaded face
            detectors' convention).
        activation: "auto" (default: the values as they are; for an output not made by a Softmax or Sigmoid
            they are logits, and the report says so), "none", "sigmoid" or "softmax" (over the classes).
    """

    output_name: Optional[str] = None
    classes: Optional[Tuple[int, ...]] = None
    threshold: float = 0.5
    iou: float = 0.5
    regression: Optional[str] = None
    activation: str = AUTO
    overlap: str = UNION

    def __post_init__(self) -> None:
        if self.classes is not None:  # frozen: normalized once, here
            object.__setattr__(self, "classes", arguments.class_numbers(self.classes))
        for name in ("threshold", "iou"):
            object.__setattr__(self, name, arguments.number(getattr(self, name), name))
        for name in ("output_name", "regression"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise InputError(f"{name} must be an output's name (a string), not {getattr(self, name)!r}")
        if not 0.0 <= self.iou <= 1.0:
            raise InputError(f"iou {self.iou} is not between 0 and 1")
        if self.activation not in ACTIVATIONS:
            raise InputError(f"activation '{self.activation}' is not one of {', '.join(ACTIVATIONS)}")
        if self.overlap not in OVERLAPS:
            raise InputError(f"overlap '{self.overlap}' is not one of {', '.join(OVERLAPS)}")

    def with_output(self, name: str) -> "DetectionSettings":
        return replace(self, output_name=name)


def activated(scores: np.ndarray, activation: str) -> np.ndarray:
    """[K, ...] values as scores: as they are, or through a sigmoid or a softmax over K (float32)."""
    scores = np.asarray(scores, np.float32)
    if activation == SIGMOID:
        return (1.0 / (1.0 + np.exp(-scores))).astype(np.float32)
    if activation == SOFTMAX:
        refuse_softmax_of_one(scores.shape[0])
        shifted = np.exp(scores - scores.max(axis=0, keepdims=True))
        return (shifted / shifted.sum(axis=0, keepdims=True)).astype(np.float32)
    return scores


def refuse_softmax_of_one(classes: int) -> None:
    if classes == 1:
        raise InputError("a softmax over one class is 1 everywhere; use --activation sigmoid for a one-class output")


def class_scores(scores: np.ndarray, classes: Optional[Sequence[int]]) -> Tuple[np.ndarray, np.ndarray]:
    """[K, h, w] scores -> ([C, h*w] the scores of the classes that compete, their class numbers [C]).
    Given classes: those channels. Default: every class, each cell keeping only its best (ties: all of
    them), the others -inf so that no threshold lets them through."""
    count = scores.shape[0]
    flat = scores.reshape(count, -1)
    if classes is not None:
        if max(classes) >= count:
            raise InputError(f"class {max(classes)}: the output has classes 0 to {count - 1}")
        return flat[list(classes)], np.asarray(classes, np.int64)
    best = flat == flat.max(axis=0, keepdims=True)
    return np.where(best, flat, np.float32(-np.inf)), np.arange(count, dtype=np.int64)


def cell_boxes(geometry: Geometry, grid: Tuple[int, int], cells: Optional[np.ndarray] = None) -> np.ndarray:
    """[n, 4] float32: the windows of `cells` (flat indices into the [h, w] grid, row by row; default: every
    cell) as x1, y1, x2, y2 in the model input's pixels."""
    cells = np.arange(grid[0] * grid[1]) if cells is None else np.asarray(cells)
    y1 = (geometry.offset[0] + (cells // grid[1]) * geometry.stride[0]).astype(np.float32)
    x1 = (geometry.offset[1] + (cells % grid[1]) * geometry.stride[1]).astype(np.float32)
    starts = np.stack([x1, y1], axis=1)
    size = np.asarray([geometry.window[1], geometry.window[0]], np.float32)
    return np.concatenate([starts, starts + size], axis=1)


def regressed(boxes: np.ndarray, offsets: np.ndarray, geometry: Geometry,
              cells: Optional[np.ndarray] = None) -> np.ndarray:
    """`boxes` [n, 4] of `cells` (default: every cell) moved by a [4, h, w] regression map: corners + offsets *
    the window's width, height."""
    if offsets.shape[0] != 4:
        raise InputError(f"the regression output has {offsets.shape[0]} channels; it needs 4 (x1, y1, x2, y2)")
    span = np.asarray([geometry.window[1], geometry.window[0]] * 2, np.float32)
    moves = offsets.reshape(4, -1) if cells is None else offsets.reshape(4, -1)[:, cells]
    return boxes + moves.T.astype(np.float32) * span


def clipped(boxes: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Boxes x1, y1, x2, y2 cut to a picture of `size` (height, width)."""
    high = np.asarray([size[1], size[0]] * 2, np.float32)
    return np.minimum(np.maximum(boxes, np.float32(0)), high)


def iou(box: np.ndarray, others: np.ndarray, overlap: str = UNION) -> np.ndarray:
    """Intersection over union of `box` [4] with each of `others` [n, 4] (0 where either is empty); with
    `overlap` SMALLER, over the smaller of the two areas."""
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    measure = area + areas - inter if overlap == UNION else np.minimum(area, areas)
    empty = (area <= 0) | (areas <= 0)
    return np.where(empty, 0.0, inter / np.where(measure > 0, measure, 1.0))


def suppressed(boxes: np.ndarray, scores: np.ndarray, threshold: float, overlap: str = UNION) -> List[int]:
    """Greedy non-maximum suppression: the indices kept, best first; a box is dropped when its overlap
    (`iou`) with a kept box is above `threshold`."""
    order = np.argsort(-scores, kind="stable")
    kept: List[int] = []
    for index in order:
        if not kept or iou(boxes[index], boxes[kept], overlap).max() <= threshold:
            kept.append(int(index))
    return kept


@dataclass(frozen=True)
class Detection:
    """One object found: its box [x1, y1, x2, y2] in the input picture's pixels, score, class, the scale it
    was found at and the cell (row, column) of the map at that scale."""

    image: str
    box: Tuple[float, float, float, float]
    score: float
    klass: int
    scale: float
    cell: Tuple[int, int]
    #: The class's name, when labels were given.
    label: Optional[str] = None
    #: On a video: the frame's index in the stream (0 first) and its time in seconds.
    frame: Optional[int] = None
    time: Optional[float] = None

    def to_dict(self) -> Dict:
        found = {"image": self.image, "box": list(self.box), "score": self.score, "class": self.klass,
                 "scale": self.scale, "cell": list(self.cell)}
        if self.label is not None:
            found["label"] = self.label
        if self.frame is not None:
            found.update(frame=self.frame, time=self.time)
        return found


def candidates(scores: np.ndarray, offsets: Optional[np.ndarray], geometry: Geometry, settings: DetectionSettings,
               image: str, scale: float, factor: Tuple[float, float], picture: Sequence[int],
               only: Optional[np.ndarray] = None) -> List[Detection]:
    """The cells of one [K, h, w] map (and its [4, h, w] regression) scoring above the threshold, as
    detections in the picture's pixels: the model saw the picture resized by `factor` (height, width). `only`
    ([h * w] booleans): the cells that may become detections (a refining stage's proposals)."""
    grid = (scores.shape[1], scores.shape[2])
    chosen, numbers = class_scores(activated(scores, settings.activation), settings.classes)
    if only is not None:
        chosen = np.where(only[None, :], chosen, np.float32(-np.inf))
    rows, cells = np.nonzero(chosen > np.float32(settings.threshold))  # by class, then cell: boxes of these only
    boxes = cell_boxes(geometry, grid, cells)
    if offsets is not None:
        boxes = regressed(boxes, offsets, geometry, cells)
    if factor != (1.0, 1.0):
        boxes = boxes / np.asarray([factor[1], factor[0]] * 2, np.float32)
    boxes = clipped(boxes, picture)
    return [Detection(image, tuple(box), score, klass, scale, divmod(cell, grid[1]))
            for box, score, klass, cell in zip(boxes.tolist(), chosen[rows, cells].tolist(), numbers[rows].tolist(),
                                                cells.tolist())]


def best_first(found: Sequence[Detection], iou_threshold: float, overlap: str = UNION) -> List[Detection]:
    """Non-maximum suppression per image and class (across scales), then every kept detection best first."""
    groups: Dict[Tuple[str, int], List[Detection]] = {}
    for detection in found:
        groups.setdefault((detection.image, detection.klass), []).append(detection)
    kept = []
    for group in groups.values():
        boxes = np.asarray([d.box for d in group], np.float32)
        scores = np.asarray([d.score for d in group], np.float32)
        kept += [group[i] for i in suppressed(boxes, scores, iou_threshold, overlap)]
    return sorted(kept, key=lambda d: -d.score)


#: The most scales a pyramid may have (from 1/64 to 64 in steps of 1.1 is 88).
MAX_SCALES = 100


def checked_scales(scales: Any) -> Tuple[float, ...]:
    """Scales given by a caller (detect's and heatmap's `scales`, --scales): 1 to MAX_SCALES finite positive
    numbers, else InputError naming what is wrong."""
    if isinstance(scales, (str, bytes)) or not hasattr(scales, "__iter__"):
        raise InputError(f"scales must be a sequence of positive factors, not a {type(scales).__name__}")
    scales = tuple(scales)
    if not scales:
        raise InputError("scales must be positive factors, not none")
    scales = tuple(arguments.number(s, "scales", positive=True) for s in scales)
    if len(scales) > MAX_SCALES:
        raise InputError(f"scales: at most {MAX_SCALES} factors, not {len(scales)}")
    return scales


def pyramid(window: Tuple[int, int], picture: Tuple[int, int], min_size: Optional[float] = None,
            max_size: Optional[float] = None, step: float = 1.25,
            smallest: Optional[Tuple[int, ...]] = None) -> Tuple[float, ...]:
    """The scales at which objects from `min_size` to `max_size` pixels (on the window's long side) become
    window-sized, from the largest scale down, each `step` times smaller than the last, while the picture
    (height, width) still holds a window (or `smallest`, the smallest input the model takes, when larger).
    Default sizes: from the window itself to the whole picture."""
    if not (math.isfinite(step) and step > 1.0):
        raise InputError(f"scale step {step} must be above 1 (each scale is that many times smaller)")
    for name, value in (("min size", min_size), ("max size", max_size)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"{name} {value} must be a positive number of pixels")
    long_side = max(window)
    top = long_side / min_size if min_size else 1.0
    least = smallest or window
    fits = max(w / p for w, p in zip(least, picture))  # the smallest scale at which the model takes the picture
    bottom = max(long_side / max_size if max_size else fits, fits)
    if min_size and max_size and min_size > max_size:
        raise InputError(f"min size {min_size:g} is larger than max size {max_size:g}")
    if top < bottom * (1 - 1e-9):
        raise InputError(f"no scale holds objects of {min_size or long_side:g} pixels or more in a "
                         f"{picture[1]}x{picture[0]} picture (width x height) with a "
                         f"{'x'.join(map(str, window))} window")
    count = int(math.floor(math.log(top / bottom) / math.log(step) + 1e-9)) + 1
    if count > MAX_SCALES:
        raise InputError(f"the pyramid from scale {top:.3g} down to {bottom:.3g}, each {step:.9g} times smaller, has "
                         f"{count} scales, more than the {MAX_SCALES} this tool runs; take a larger --scale-step or "
                         "a narrower --min-size/--max-size")
    scales = []
    scale = top
    while scale >= bottom * (1 - 1e-9):
        scales.append(float(scale))
        scale = top / step ** len(scales)
    return tuple(scales)

"""How far a converted model's map is from its classifier on the user's own picture: every cell's score against
the original classifier run on that cell's image crop alone (the refining stage with every cell proposed). The
gap is the trunk's padding and receptive field at work; where it changes decisions, `detect --refine` gives the
classifier's own answers."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..errors import InputError, printable
from ..model.detections import DetectionSettings, activated
from .detector import Detector
from .maps import at_taken_size
from .pictures import in_mode, read_image, transposed
from .preprocessing import Preprocessing
from .refine import Refiner

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Gap:
    """|map - classifier on the crop| over every cell and class of one picture, and the decisions that differ."""

    picture: str
    output: str
    cells: int
    median: float
    p95: float
    max: float
    #: Cells whose decision (a score above `threshold`, any class) differs between the map and the crops.
    flipped: int
    threshold: float

    def to_text(self) -> str:
        share = self.flipped / self.cells if self.cells else 0.0
        return printable(
            f"gap between the map of '{self.output}' and the classifier on each cell's image crop, {self.picture}: "
            f"{self.cells} cells, median {self.median:.4g}, 95th percentile {self.p95:.4g}, max {self.max:.4g}; "
            f"{self.flipped} cell(s) ({100 * share:.3g}%) on the other side of {self.threshold:g}"
            + ("; detect --refine ORIGINAL gives the classifier's own answers" if self.flipped else ""))

    def to_dict(self) -> dict:
        return {"picture": self.picture, "output": self.output, "cells": self.cells, "median": self.median,
                "p95": self.p95, "max": self.max, "flipped": self.flipped, "threshold": self.threshold}


def gap(model: Any, original: PathLike, picture: PathLike, settings: Optional[DetectionSettings] = None, *,
        preprocessing: Optional[Preprocessing] = None, **overrides: Any) -> Gap:
    """The gap on `picture` (a file) between `model` (converted) and `original` (the classifier it was converted
    from), at the picture's own size (the nearest the trunk takes). `settings` (or keywords named like its
    fields) give the output, the classes compared, the activation and the decision threshold; `transpose=True`
    for a model that reads pictures as W x H (as `detect`)."""
    detector = Detector(model, settings, preprocessing=preprocessing, **overrides)
    opened = detector.opened
    refiner = Refiner(original, proposal_threshold=None)
    refiner.open(opened.geometry, opened.outputs[:1], detector.threads)
    image = in_mode(read_image(picture), opened.mode)
    image = at_taken_size(transposed(image) if detector.transpose else image, 1.0, opened.geometry)
    feed = opened.runner.feed(image, opened.name, detector.preprocessing)
    maps = opened.runner.run(feed, opened.outputs[:1], image.size)
    refined, _ = refiner.refine(feed, maps, opened.outputs[:1], opened.geometry, opened.settings, -np.inf)
    chosen = _compared(maps[opened.name], opened.settings)
    crops = _compared(refined[opened.name], opened.settings)
    gaps = np.abs(chosen - crops).ravel()
    threshold = np.float32(opened.settings.threshold)
    flipped = int(np.count_nonzero((chosen > threshold).any(axis=0) != (crops > threshold).any(axis=0)))
    return Gap(str(picture), opened.name, int(chosen.shape[1]), float(np.median(gaps)),
               float(np.percentile(gaps, 95)), float(gaps.max()), flipped, float(threshold))


def _compared(scores: np.ndarray, settings: DetectionSettings) -> np.ndarray:
    """[C, h * w]: the scores compared, after the activation, of the classes asked for (default: every class)."""
    values = activated(scores, settings.activation).reshape(scores.shape[0], -1)
    classes: Sequence[int] = settings.classes if settings.classes is not None else range(values.shape[0])
    if max(classes) >= values.shape[0]:
        raise InputError(f"class {max(classes)}: the output has classes 0 to {values.shape[0] - 1}")
    return values[list(classes)]

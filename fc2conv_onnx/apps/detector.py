"""The detector itself: a converted model, opened once, that finds objects on one picture after another - the
pyramid of scales for each, the cells above the threshold as boxes in the picture's pixels, suppressed per
class across scales (the steps are in `detections`). `detect` runs it over files; batch engines call it on
batches of rows (Ray Data's `map_batches`), so it opens its model lazily and pickles without it.
"""
from __future__ import annotations

import numbers
import os
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..model import arguments
from ..model.detections import (
    AUTO,
    SIGMOID,
    SOFTMAX,
    Detection,
    DetectionSettings,
    best_first,
    candidates,
    checked_scales,
    overridden,
    pyramid,
)
from ..model.geometry import Geometry
from . import pictures
from .cascade import Cascade, checked_stages
from .labels import checked_labels, name_of
from .maps import MapModel, at_taken_size, check_picture_size, open_map_model, taken_size
from .parallel import plan_threads
from .preprocessing import Preprocessing, model_mode
from .refine import Refiner

#: The default ratio between neighbouring scales of a pyramid made from object sizes.
SCALE_STEP = 1.25
#: Called after each run of the model (one per picture and scale).
AfterRun = Callable[[], None]


@dataclass
class _Opened:
    """The model as the detector runs it: its session, the output read and how."""

    runner: MapModel
    name: str
    outputs: List[str]
    geometry: Geometry
    settings: DetectionSettings
    mode: str
    #: With a refining stage: the map score above which a cell is proposed to the original classifier.
    proposal: Optional[float] = None
    #: The classes' names: the caller's, or the model's metadata's.
    labels: Optional[Tuple[str, ...]] = None
    #: Where the names came from: '' (the caller's, or none) or the model's metadata key.
    labels_from: str = ""


class Detector:
    """Finds objects in pictures with a converted classifier (see `detect` for the settings).

    `detector(batch)` takes a batch in Ray Data's numpy form - a dict with a "path" column of picture files,
    or an "image" column of uint8 H x W x C pixels with an "id" (or "path") column naming each picture - and
    returns a dict of equal-length numpy columns, one row per detection, named as detect's CSV columns: image
    (the picture's key; also under the batch's "id" or "path"), x1, y1, x2, y2, score, class, scale, row, column
    (the cell), and label with labels. The rows of each picture are detect's records for it, best first.

    The model is opened at the first call, once, and never pickled: a detector sent to a worker opens it
    there (the model's file must be reachable from the worker). `threads` sets onnxruntime's threads per
    run (default one per core: give cores / workers when several share a machine). A detector may be called
    from several threads at once: each thread has its own input buffer, and one session serves them all.
    """

    def __init__(self, model: Any, settings: Optional[DetectionSettings] = None, *,
                 scales: Optional[Sequence[float]] = None, min_size: Optional[float] = None,
                 max_size: Optional[float] = None, scale_step: Optional[float] = None,
                 preprocessing: Optional[Preprocessing] = None, threads: Optional[int] = None,
                 refine: Any = None, proposal_threshold: Optional[float] = None, transpose: bool = False,
                 labels: Optional[Sequence[str]] = None, cascade: Any = None, scale_iou: Optional[float] = None,
                 **overrides: Any) -> None:
        self.model = model
        base = arguments.of_type(settings, DetectionSettings, "settings") or DetectionSettings()
        self.settings = overridden(base, overrides, "detection setting")
        if scales is not None and (min_size, max_size, scale_step) != (None, None, None):
            raise InputError("give either scales or object sizes (min size, max size, scale step), not both")
        self.scales = None if scales is None else checked_scales(scales)
        self.sizes = (arguments.optional_number(min_size, "min_size", positive=True),
                      arguments.optional_number(max_size, "max_size", positive=True),
                      arguments.optional_number(scale_step, "scale_step", positive=True))
        self.preprocessing = arguments.of_type(preprocessing, Preprocessing, "preprocessing") or \
            Preprocessing()
        self.threads = None if threads is None else arguments.whole(threads, "threads", 1, arguments.MAX_THREADS)
        proposal = arguments.optional_number(proposal_threshold, "proposal_threshold")
        if refine is None and proposal is not None:
            raise InputError("proposal_threshold sets the refining stage: give refine (the original classifier) too")
        self.refiner = None if refine is None else Refiner(refine, proposal)
        if not isinstance(transpose, bool):
            raise InputError(f"transpose must be True or False, not {transpose!r}")
        self.transpose = transpose
        self.labels = checked_labels(labels)
        self.scale_iou = arguments.optional_number(scale_iou, "scale_iou")
        if self.scale_iou is not None and not 0.0 <= self.scale_iou <= 1.0:
            raise InputError(f"scale_iou {self.scale_iou:g} is not between 0 and 1")
        stages = checked_stages(cascade)
        self.cascade = Cascade(stages, self.preprocessing, self.transpose) if stages else None
        self._opened: Optional[_Opened] = None
        self._opening = threading.Lock()

    def use_workers(self, workers: Optional[int], items: Optional[int] = None) -> int:
        """How many pictures (or frames) run at once: `workers`, or one per core (no more than `items`). Before
        the first use, each run then gets its share of the cores as onnxruntime threads (unless `threads` was
        given)."""
        workers, threads = plan_threads(workers, self.threads, items)
        if self.threads is None and self._opened is None:
            self.threads = threads
        return workers

    def __getstate__(self) -> Dict[str, Any]:
        # A session does not pickle, nor does a lock; a worker opens its own.
        return {**self.__dict__, "_opened": None, "_opening": None}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state, _opening=threading.Lock())

    @property
    def opened(self) -> _Opened:
        """The model, opened at the first use (once, whichever thread comes first): its session, which output
        is read, and its geometry."""
        if self._opened is None:
            with self._opening:
                if self._opened is None:
                    self._opened = self._open()
        return self._opened

    def _open(self) -> _Opened:
        runner = open_map_model(self.model, "detect", self.threads)
        name = runner.placed(self.settings.output_name)
        geometry = runner.geometries[name]
        if len(geometry.window) != 2:
            raise InputError(f"detect reads pictures; output '{name}' is on a {len(geometry.window)}-D grid")
        settings = self.settings.with_output(name)
        outputs = [name] + _regression(runner, settings, geometry)
        mode = model_mode(runner.channels(name), self.preprocessing)
        proposal = None
        if self.refiner is not None:
            self.refiner.open(geometry, outputs, self.threads)
            probabilities = settings.activation in (SIGMOID, SOFTMAX) or \
                (settings.activation == AUTO and name in runner.scores)
            proposal = self.refiner.threshold_for(settings, probabilities)
        if self.cascade is not None:
            self.cascade.open(self.threads)
        labels, labels_from = self.labels, ""
        stored = runner.stored_labels(name) if labels is None and self.cascade is None else None
        if stored is not None:  # a cascade's classes are its last stage's, not this model's
            labels, labels_from = stored
        return _Opened(runner, name, outputs, geometry, settings, mode, proposal, labels, labels_from)

    def scales_for(self, size: Tuple[int, int], key: str) -> Tuple[float, ...]:
        """The scales a picture of `size` (width, height) runs at, each checked to be one the model takes
        (InputError naming the picture `key` otherwise)."""
        geometry = self.opened.geometry
        if self.scales is not None:
            planned = self.scales
        elif self.sizes == (None, None, None):
            planned = (1.0,)  # nothing asked: the picture as it is
        else:
            min_size, max_size, step = self.sizes
            window = (int(geometry.window[0]), int(geometry.window[1]))
            planned = pyramid(window, (size[1], size[0]), min_size, max_size, step or SCALE_STEP,
                              smallest=tuple(geometry.smallest_taken()))
        for scale in planned:
            check_picture_size(taken_size(pictures.scaled_size(size, scale), geometry), geometry, _where(key, scale))
        return planned

    def candidates(self, picture: Any, key: str, scales: Optional[Sequence[float]] = None,
                   after_run: Optional[AfterRun] = None) -> List[Detection]:
        """The cells above the threshold on `picture` (a Pillow image, named `key` in the records and errors)
        at each scale, as detections before suppression."""
        opened = self.opened
        picture = pictures.in_mode(picture, opened.mode)  # once, not at every scale
        if self.transpose:  # the model reads W x H: it runs on the picture transposed, boxes come back below
            picture = pictures.transposed(picture)
        width, height = pictures.size_of(picture)
        found: List[Detection] = []
        for scale, size, feed in self._inputs(picture, scales or self.scales_for(pictures.size_of(picture), key), key):
            maps = opened.runner.run(feed, opened.outputs, size, _where(key, scale))
            name = opened.name
            offsets = maps[opened.outputs[1]] if opened.settings.regression else None
            if offsets is not None and offsets.shape[1:] != maps[name].shape[1:]:
                raise InputError(f"the regression output '{opened.settings.regression}' has a {offsets.shape[1]}x"
                                 f"{offsets.shape[2]} grid where '{name}' has {maps[name].shape[1]}x"
                                 f"{maps[name].shape[2]}")
            mask = None
            if self.refiner is not None and opened.proposal is not None:
                maps, mask = self.refiner.refine(feed, maps, opened.outputs, opened.geometry, opened.settings,
                                                 opened.proposal)
                offsets = maps[opened.outputs[1]] if opened.settings.regression else None
            if offsets is not None and self.transpose and offsets.shape[0] == 4:  # else refused below, as ever
                # A net that reads pictures as W x H gives its box offsets in the picture's frame (MTCNN's ported
                # nets, as their packages apply them): x1, y1, x2, y2 of the picture are y1, x1, y2, x2 here.
                offsets = offsets[[1, 0, 3, 2]]
            factor = (size[1] / height, size[0] / width)
            found += candidates(maps[name], offsets, opened.geometry, opened.settings, key, scale, factor,
                                (height, width), mask)
            if after_run is not None:
                after_run()
        if self.transpose:
            found = [replace(d, box=(d.box[1], d.box[0], d.box[3], d.box[2])) for d in found]
        return found

    def framed(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """A picture's (width, height) as the model sees it: swapped when it reads pictures transposed."""
        return (size[1], size[0]) if self.transpose else size

    def find(self, picture: Any, key: str, scales: Optional[Sequence[float]] = None,
             after_run: Optional[AfterRun] = None) -> List[Detection]:
        """The detections on `picture` (a Pillow image or pixels, named `key`), best first: the candidates of
        every scale suppressed together (after each scale's own, with `scale_iou`), then each cascade stage, then
        the classes' names."""
        found = self.candidates(picture, key, scales, after_run)
        overlap = self.settings.overlap
        if self.scale_iou is not None:  # MTCNN's first stage: 0.5 within each scale, then 0.7 across them
            found = [kept for scale in dict.fromkeys(d.scale for d in found)
                     for kept in best_first([d for d in found if d.scale == scale], self.scale_iou, overlap)]
        found = best_first(found, self.settings.iou, overlap)
        if self.cascade is not None:
            found = self.cascade.run(picture, found)
        labels = self.opened.labels
        if labels is not None:
            found = [replace(d, label=name_of(labels, d.klass)) for d in found]
        return found

    def __call__(self, batch: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        keys, column, sources, files = _rows(batch)
        frames, times = _frame_columns(batch, len(keys))
        found: List[Tuple[int, Detection]] = []
        for index, (key, source) in enumerate(zip(keys, sources)):
            name = str(key)
            picture = pictures.read_image(source) if files else pictures.checked_array(source, f"'{name}'")
            records = self.find(picture, name)
            if frames is not None:
                records = [replace(r, frame=int(frames[index]), time=None if times is None else float(times[index]))
                           for r in records]
            found += [(index, record) for record in records]
        rows = np.asarray([index for index, _ in found], np.int64)
        boxes = np.asarray([record.box for _, record in found], np.float32).reshape(-1, 4)
        key_column = np.asarray(keys)[rows]
        columns = {"image": key_column, column: key_column,
                   "x1": boxes[:, 0], "y1": boxes[:, 1], "x2": boxes[:, 2], "y2": boxes[:, 3],
                   "score": np.asarray([r.score for _, r in found], np.float32),
                   "class": np.asarray([r.klass for _, r in found], np.int64),
                   "scale": np.asarray([r.scale for _, r in found], np.float64),
                   "row": np.asarray([r.cell[0] for _, r in found], np.int64),
                   "column": np.asarray([r.cell[1] for _, r in found], np.int64)}
        if self.opened.labels is not None:  # labels reach every output, the batch's columns too
            columns["label"] = np.asarray([r.label for _, r in found], dtype=object)
        if frames is not None:  # video frames: each row's frame index and time, as detect's records on a video
            columns["frame"] = np.asarray([r.frame for _, r in found], np.int64)
            columns["time"] = np.asarray([np.nan if r.time is None else r.time for _, r in found], np.float64)
        return columns

    def _inputs(self, picture: Any, scales: Sequence[float],
                key: str) -> Iterator[Tuple[float, Tuple[int, int], np.ndarray]]:
        """(scale, the scaled picture's size (width, height), the model's input) for each scale. (Made in a
        worker thread while the model ran on the one before, this was 7% faster on a light model and 6% slower
        on a CaffeNet-sized one, whose onnxruntime threads it competed with on 2 cores: not worth a thread.)"""
        opened = self.opened
        for scale in scales:
            scaled = at_taken_size(picture, scale, opened.geometry)
            feed = opened.runner.feed(scaled, opened.name, self.preprocessing, _where(key, scale))
            yield scale, pictures.size_of(scaled), feed


def _rows(batch: Mapping[str, Any]) -> Tuple[Sequence[Any], str, Sequence[Any], bool]:
    """(each picture's key, the key's column name, each picture's source, whether the sources are files (the
    keys themselves) rather than pixels)."""
    if not isinstance(batch, Mapping):
        raise InputError(f"a batch is a dict of columns (Ray Data's numpy batch format), not a "
                         f"{type(batch).__name__}")
    batch = _named_as_pictures(batch)
    if "image" in batch:
        column = "id" if "id" in batch else "path" if "path" in batch else None
        if column is None:
            raise InputError("a batch of images needs an 'id' or 'path' column to say which picture each "
                             "detection is on (read_images(..., include_paths=True) gives 'path')")
        keys, sources = batch[column], batch["image"]
    elif "path" in batch:
        column, keys = "path", batch["path"]
        sources = keys
    else:
        raise InputError(f"a batch needs a 'path' column (picture files) or an 'image' column (pixels); it has "
                         f"{', '.join(map(repr, batch)) or 'none'}")
    for name, values in ((column, keys), ("image" if "image" in batch else column, sources)):
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise InputError(f"the batch's '{name}' column must hold one value per row (a list or array), not "
                             f"a {type(values).__name__}")
    if not all(isinstance(key, (str, bytes, numbers.Number, np.generic)) for key in keys):
        raise InputError(f"the batch's '{column}' column must hold one name or number per row (a picture's key)")
    if len(keys) != len(sources):
        raise InputError(f"the batch's '{column}' column has {len(keys)} rows and its pictures {len(sources)}")
    files = "image" not in batch
    if files and not all(isinstance(p, (str, os.PathLike)) for p in keys):
        raise InputError("the batch's 'path' column must hold picture paths (str)")
    return keys, column, sources, files


def _named_as_pictures(batch: Mapping[str, Any]) -> Mapping[str, Any]:
    """A batch of Ray's `read_videos` (pixels under 'frame', beside 'frame_index') with its pixels as 'image'."""
    if "image" not in batch and "frame" in batch and "frame_index" in batch:
        return {**{k: v for k, v in batch.items() if k != "frame"}, "image": batch["frame"]}
    return batch


def _frame_columns(batch: Mapping[str, Any], rows: int) -> Tuple[Optional[Sequence[Any]], Optional[Sequence[Any]]]:
    """The frames' indices and times of a batch of video frames (`video.frame_rows`' 'frame' and 'time', or Ray
    `read_videos`' 'frame_index' and 'frame_timestamp'); (None, None) for pictures."""
    ray_form = "frame_index" in batch
    index = batch.get("frame_index") if ray_form else batch.get("frame") if "image" in batch else None
    if index is None:
        return None, None
    time = batch.get("frame_timestamp") if ray_form else batch.get("time")
    for name, values in (("frame", index), ("time", time)):
        if values is not None and (isinstance(values, (str, bytes)) or not hasattr(values, "__len__")
                                   or len(values) != rows):
            raise InputError(f"the batch's '{name}' column must hold one value per row")
    return index, time


def _where(key: str, scale: float) -> str:
    return f" ({key})" + ("" if scale == 1.0 else f" at scale {scale:.4g}")


def _regression(runner: MapModel, settings: DetectionSettings, geometry: Geometry) -> List[str]:
    """[the regression output], checked to be on the scores' grid; [] without one."""
    if not settings.regression:
        return []
    name = runner.placed(settings.regression, "regression output")
    if runner.geometries[name] != geometry:
        raise InputError(f"the regression output '{name}' is not on the grid of '{settings.output_name}' (their "
                         "stored geometries differ)")
    return [name]

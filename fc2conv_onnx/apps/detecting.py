"""The detect command: a `Detector` run over picture files, every picture and scale checked before the first
run, and what it found as records to save or draw."""
from __future__ import annotations

import itertools
import os
import threading
from collections import Counter
from dataclasses import dataclass, field, fields
from io import BytesIO
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import InputError, printable
from ..model import arguments, guard, writes
from ..model.detections import AUTO, UNION, Detection, DetectionSettings
from ..model.geometry import Geometry
from . import drawing, pictures
from .detector import Detector
from .parallel import ordered_map
from .preprocessing import Preprocessing
from .records import records_text
from .video import Sampling, is_live, is_video

PathLike = Union[str, "os.PathLike[str]"]
#: Called as progress(done, total) after each run of the model (one per picture and scale).
Progress = Callable[[int, int], None]


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
    #: The model's metadata key the classes' names were read from ('' when given, or none).
    labels_from: str = ""
    #: On a video: the run's frames, undecodable packets and how it ended (`video_detect.VideoRun`).
    video: Any = None
    #: The classifiers of the cascade stages that rescored the boxes, in order.
    cascade: Tuple[str, ...] = ()
    #: What the run read (the model, its data files, the pictures): never written over by `save` or `draw`.
    reads: guard.Reads = field(default_factory=guard.Reads, repr=False, compare=False)
    _index: Optional[Tuple[List[Detection], int, Dict[str, List[Detection]]]] = field(
        default=None, init=False, repr=False, compare=False)

    def to_text(self) -> str:
        s = self.settings
        which = "each cell's best class" if s.classes is None else f"class(es) {', '.join(map(str, s.classes))}"
        regression = f", boxes moved by '{s.regression}'" if s.regression else ""
        measure = "IoU" if s.overlap == UNION else "over the smaller box"
        where = f"1 video ({self.video.frames} frame(s))" if self.video is not None else \
            f"{len(self.scales)} picture(s)"
        lines = [f"detections of '{s.output_name}' ({which}, score above {s.threshold:g}, overlap ({measure}) up to "
                 f"{s.iou:g}{regression}): {len(self.records)} in {where}"]
        if self.labels_from:
            lines.append(f"class names: from the model's metadata '{self.labels_from}' (--labels FILE gives others)")
        if self.cascade:
            models = ", ".join(os.path.basename(model) for model in self.cascade)
            lines.append(f"then {len(self.cascade)} cascade stage(s), each box rescored on its crop: {models} (scores "
                         "and boxes: the last's)")
        if self.video is not None:
            lines += self.video.to_text().splitlines()[1:]  # its first line is the summary above
            return "\n".join(map(printable, lines))
        counts = Counter(r.image for r in self.records)
        for image, scales in self.scales.items():
            lines.append(f"  {image}: {counts[image]}, at scale(s) {', '.join(f'{v:.4g}' for v in scales)}")
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
                "detections": [r.to_dict() for r in self.records], "cascade": list(self.cascade),
                "written": self.written, "drawn": list(self.drawn)}

    def _on(self, image: str) -> List[Detection]:
        """The records on `image`, from an index made once for all the pictures drawn (not a pass over every
        record per picture: 10,000 pictures drawn would be 10,000 passes)."""
        if self._index is None or self._index[0] is not self.records or self._index[1] != len(self.records):
            index: Dict[str, List[Detection]] = {}
            for record in self.records:
                index.setdefault(record.image, []).append(record)
            self._index = (self.records, len(self.records), index)
        return self._index[2].get(image, [])

    def text(self, path: Optional[PathLike] = None) -> str:
        """The records as the file `path` would hold them: CSV for a .csv name, else JSON."""
        return records_text(self.records, None if path is None else str(path))

    def save(self, path: PathLike) -> None:
        """Write the records to `path` (CSV for a .csv name, else JSON), atomically; never over the model, its
        data files or a picture (InputError)."""
        guard.check_outputs([("the records' file", path)], self.reads)
        writes.save_bytes(self.text(path).encode(), path)
        self.written = str(path)

    def draw(self, image: PathLike, output: PathLike) -> None:
        """Write a PNG of `image` with the boxes found on it and their class and score; never over the model, its
        data files or a picture (InputError)."""
        guard.check_outputs([("the drawing", output)], self.reads)
        writes.save_bytes(self.drawing(image), output)
        self.drawn += (str(output),)

    def drawing(self, image: PathLike) -> bytes:
        """A PNG of `image` with the boxes found on it and their class and score."""
        picture = pictures.read_image(image)
        boxes = [(r.box, f"{r.label or r.klass}: {r.score:.2f}", r.klass) for r in self._on(str(image))]
        buffer = BytesIO()
        drawing.draw_boxes(picture, boxes).save(buffer, format="PNG")
        return buffer.getvalue()


def detect(model: Any, images: Sequence[PathLike], settings: Optional[DetectionSettings] = None, *,
           scales: Optional[Sequence[float]] = None, min_size: Optional[float] = None,
           max_size: Optional[float] = None, scale_step: Optional[float] = None,
           preprocessing: Optional[Preprocessing] = None, progress: Optional[Progress] = None,
           refine: Optional[PathLike] = None, proposal_threshold: Optional[float] = None, transpose: bool = False,
           labels: Optional[Sequence[str]] = None, cascade: Any = None, scale_iou: Optional[float] = None,
           sampling: Optional[Sampling] = None, workers: Optional[int] = None, threads: Optional[int] = None,
           **overrides) -> Detections:
    """Find objects in pictures with a converted classifier: the model runs once per picture and scale (one
    session for all), each cell above the threshold becomes its window's box in the picture's pixels, and
    overlapping boxes of a class are suppressed across scales.

    Args:
        model: a model converted by fc2conv-onnx (a path, ModelProto, ...; see `convert`).
        images: picture files (PNG, JPEG, ...; needs Pillow), folders (the pictures in them) or patterns
            ("frames/*.jpg"); or one video file or stream (.mp4, rtsp://..., /dev/video0; needs PyAV), whose
            sampled frames (`sampling`: every Nth or a rate, a start and a duration) are run one by one, each
            record with its frame's index and time (`detect_video` yields them frame by frame).
        settings: a `DetectionSettings` (output, classes, threshold, iou, overlap, regression, activation); keyword
            arguments named like its fields override it.
        scales: the scales to run at (1, 0.5, 0.25: each picture resized by each); default: 1 only, the
            pictures as they are. Or instead
        min_size, max_size, scale_step: the sizes of the objects to find, in pixels on the window's long side
            (any of them makes a pyramid; min_size defaults to the window, max_size to the whole picture): the
            scales run from window / min_size down, each `scale_step` (default 1.25) times smaller, while the
            picture holds a window and is a size the model takes. Every picture at every scale is checked
            before the first run.
        scale_iou: suppress overlapping boxes within each scale first, at this overlap, then across scales at
            `iou` (MTCNN's first stage: 0.5, then 0.7).
        preprocessing: how pixels become the model's input (as for `heatmap`).
        progress: called as progress(done, total) after each run (from the workers' threads, one call at a
            time).
        refine: the original classifier's file: the map's cells above `proposal_threshold` (default: half the
            threshold, for probabilities) are rescored by it on their image crops, and every box reported carries
            its score (and its regression, if one is read); see `apps/refine.py`.
        transpose: the model reads pictures as W x H (networks ported from Caffe or Matlab, MTCNN's): it runs on
            each picture transposed, and the boxes come back in the picture's frame (a record's cell is the
            transposed map's).
        labels: the classes' names, class 0 first (`apps.labels.read_labels` reads a labels file): in the records
            ("label") and the drawings.
        cascade: further stages that look again at each box kept, each a classifier on the box's image crop
            (a cascade file's path, or a list of `Stage`; see `apps/cascade.py`): a box is reported when every
            stage keeps it, with the last stage's score, class and box.
        workers: how many pictures (or frames) are read and run at once, each in a thread of its own, on the one
            session (default: one per core, no more than there are pictures); records come in input order.
        threads: onnxruntime's threads per run (default: the cores shared between the workers).

    Returns:
        `Detections`: `.records` best first (image, box [x1, y1, x2, y2], score, class, scale, cell), and
        `.save(path)` / `.draw(image, png)` to write them.
    """
    arguments.callable_or_none(progress, "progress")
    if sampling is not None and not (isinstance(images, (str, os.PathLike)) and is_video(images)):
        raise InputError("sampling is for a video: give one video file or stream as images")
    detector = Detector(model, settings, scales=scales, min_size=min_size, max_size=max_size, scale_step=scale_step,
                        preprocessing=preprocessing, refine=refine,
                        proposal_threshold=proposal_threshold, transpose=transpose, labels=labels, cascade=cascade,
                        scale_iou=scale_iou, threads=threads, **overrides)
    if isinstance(images, (str, os.PathLike)) and is_video(images):
        return _on_video(detector, model, images, sampling or Sampling(), detector.use_workers(workers))
    if isinstance(images, (str, bytes, os.PathLike)):
        images = [images]  # one picture, not the letters of its name
    if not hasattr(images, "__iter__") or isinstance(images, Mapping) or \
            not all(isinstance(image, (str, os.PathLike)) for image in images):
        raise InputError("images must be picture paths (str or os.PathLike), one or a list of them")
    names = pictures.picture_files(images)
    if not names:
        raise InputError("no picture given")
    _refuse_twice(names)
    workers = detector.use_workers(workers, len(names))
    opened = detector.opened
    # Every picture's header first, and every scale checked (a missing or unreadable picture, or one the model
    # cannot take, is refused before anything runs, and the progress knows its total); then `workers` pictures
    # in memory at a time.
    sizes = {image: pictures.image_size(image) for image in names}
    plans = {image: detector.scales_for(detector.framed(sizes[image]), image) for image in names}
    total, runs, one_at_a_time = sum(len(s) for s in plans.values()), itertools.count(1), threading.Lock()

    def after_run() -> None:  # from the workers' threads: the caller's progress is called one call at a time
        with one_at_a_time:
            done = next(runs)
            if progress is not None:
                progress(done, total)

    def one(image: str) -> List[Detection]:
        return detector.find(pictures.read_image(image, expected=sizes[image]), image, plans[image], after_run)

    found: List[Detection] = []
    for records in ordered_map(one, names, workers):  # read and run `workers` at once, in input order
        found += records
    settings = opened.settings
    logits = settings.activation == AUTO and opened.name not in opened.runner.scores
    stages = detector.cascade.stages if detector.cascade is not None else ()
    return Detections(sorted(found, key=lambda d: -d.score), settings, opened.geometry, plans, logits,
                      labels_from=opened.labels_from, cascade=tuple(os.fspath(stage.model) for stage in stages),
                      reads=guard.pictures_read(model, names, [refine, *(stage.model for stage in stages)]))


def _on_video(detector: Detector, model: Any, source: PathLike, sampling: Sampling, workers: int) -> Detections:
    """`detect` on a video: every sampled frame's records, frame by frame (best first within a frame)."""
    from .video_detect import frames_detected, open_video

    opened = detector.opened
    reader, run = open_video(source, sampling, opened.settings)
    found = [record for _, records in frames_detected(detector, reader, run, workers=workers) for record in records]
    logits = opened.settings.activation == AUTO and opened.name not in opened.runner.scores
    name = os.fspath(source)
    return Detections(found, opened.settings, opened.geometry, {name: run.scales}, logits,
                      labels_from=opened.labels_from, video=run,
                      reads=guard.pictures_read(model, [] if is_live(name) else [name]))


def _refuse_twice(names: Sequence[str]) -> None:
    """Refuse a picture given twice, under one spelling or two ('a.png', './a.png', a link to it): it would run
    twice and its records count double."""
    seen: Dict[guard.Identity, str] = {}
    for name in names:
        identity = guard.identity_of(name)
        if identity is None:
            continue  # read later, where a missing picture is refused in its own words
        first = seen.setdefault(identity, name)
        if first is not name:
            same = "" if first == name else f" (as '{printable(first)}')"
            raise InputError(f"picture '{printable(name)}' is given twice{same}")

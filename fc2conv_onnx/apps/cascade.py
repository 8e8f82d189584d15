"""Cascades: every box a detector kept is looked at again by further classifiers, one stage after another, each on
the box's own image crop resized to the stage's input - as cascaded detectors (MTCNN's R- and O-Net, the 2015 CNN
face cascade's 24- and 48-pixel nets) verify the proposals of a cheap first net with stronger ones.

A stage keeps a box when its classifier scores the crop above the stage's threshold; the box is moved by the
stage's regression output (corner offsets times the crop's width and height, in the picture's frame), the
stage's score and class replace the box's, and the stage's suppression runs. A box's scale and cell stay those of
the map cell it came from.

A stage is a `Stage` (API) or an entry of a cascade file (`read_cascade`): a JSON list of objects whose keys are
named like detect's flags.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError, printable
from ..model import arguments, ort
from ..model.detections import Detection, DetectionSettings, activated, best_first, class_scores, clipped
from ..model.layout import CHANNELS_FIRST, CHANNELS_LAST
from ..model.stored_files import check_input_file
from . import pictures
from .preprocessing import Preprocessing, model_input, model_mode

PathLike = Union[str, "os.PathLike[str]"]
#: Crops run through a stage's classifier at once (its batch dim permitting).
BATCH = 128
#: The largest cascade file read (a list of a few stages is a few hundred bytes).
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Stage:
    """One stage of a cascade: a classifier (a model file with a fixed input size) that rescores each box kept so
    far on the box's image crop.

    Attributes:
        model: the classifier's file (.onnx).
        settings: which output holds the scores (default: the only output that is not the regression), the
            classes, the threshold, the regression output ([N, 4] corner offsets as fractions of the crop's width
            and height), the activation and the suppression (iou, overlap) after the stage.
        preprocessing: how the crop's pixels become the classifier's input; None (default): as the detector's.
        square: each box is made square (its long side, about its centre) before it is cut, as MTCNN cuts them.
        transpose: the classifier reads crops as W x H (MTCNN's ported nets); its regression is in the picture's
            frame. None (default): as the detector reads pictures.
        layout: "nchw" or "nhwc" when the classifier's input shape does not tell (default: from the shape).
        size: (height, width) of the crops when the classifier's input size is not fixed.
    """

    model: PathLike
    settings: DetectionSettings = field(default_factory=DetectionSettings)
    preprocessing: Optional[Preprocessing] = None
    square: bool = False
    transpose: Optional[bool] = None
    layout: Optional[str] = None
    size: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, (str, os.PathLike)):
            raise InputError("a cascade stage's model is a file path (.onnx)")
        arguments.of_type(self.settings, DetectionSettings, "a stage's settings")
        arguments.of_type(self.preprocessing, Preprocessing, "a stage's preprocessing")
        for name in ("square", "transpose"):
            if not isinstance(getattr(self, name), bool) and (name == "square" or self.transpose is not None):
                raise InputError(f"a stage's {name} must be true or false, not {getattr(self, name)!r}")
        if self.layout not in (None, *_LAYOUTS):
            raise InputError(f"a stage's layout '{self.layout}' is not one of {', '.join(_LAYOUTS)}")
        if self.size is not None:
            if isinstance(self.size, (str, bytes)) or not hasattr(self.size, "__len__") or len(self.size) != 2:
                raise InputError(f"a stage's size is [height, width], not {self.size!r}")
            object.__setattr__(self, "size", tuple(arguments.whole(v, "a stage's size", 1, 1 << 14) for v in self.size))

    @property
    def pixels(self) -> Preprocessing:
        """How the stage reads pixels (once a `Cascade` has given it the detector's when it said none)."""
        return self.preprocessing or Preprocessing()


#: A stage's `layout` -> the layout it names.
_LAYOUTS = {"nchw": CHANNELS_FIRST, "nhwc": CHANNELS_LAST}
#: A cascade file's keys (detect's flags without their dashes) -> how each becomes part of a `Stage`.
_SETTING_KEYS = {"output": "output_name", "class": "classes", "threshold": "threshold", "iou": "iou",
                 "overlap": "overlap", "regression": "regression", "activation": "activation"}
_PICTURE_KEYS = {"pixel-scale": "pixel_scale", "mean": "mean", "std": "std", "channels": "channels"}
_STAGE_KEYS = ("model", "square", "transpose", "layout", "size")
KEYS = (*_STAGE_KEYS, *_SETTING_KEYS, *_PICTURE_KEYS)


def read_cascade(path: PathLike) -> Tuple[Stage, ...]:
    """The stages of a cascade file: a JSON list of objects, one a stage, in order, keyed like detect's flags
    ("model" - relative to the file's folder -, "class", "threshold", "regression", "iou", "overlap", "activation",
    "output", "pixel-scale", "mean", "std", "channels", and "square", "transpose", "layout", "size")."""
    label = f"cascade file '{printable(os.fspath(path))}'"
    check_input_file(Path(path), label)
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise InputError(f"{label} cannot be read ({error.strerror or error})") from None
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"{label} is larger than {MAX_FILE_BYTES >> 20} MiB; a cascade is a short list of stages")
    try:
        entries = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{label} is not JSON ({error})") from None
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise InputError(f"{label} must hold a list of stages, each an object such as "
                         '{"model": "onet.onnx", "class": 1, "threshold": 0.7}')
    folder = Path(path).parent
    return tuple(_stage(entry, folder, f"{label}, stage {number}") for number, entry in enumerate(entries, 1))


def _stage(entry: Mapping[str, Any], folder: Path, where: str) -> Stage:
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise InputError(f"{where}: unknown key '{printable(unknown[0])}'; the keys are {', '.join(KEYS)}")
    if not isinstance(entry.get("model"), str) or not entry["model"]:
        raise InputError(f"{where}: give the classifier's file as \"model\"")
    settings = {name: entry[key] for key, name in _SETTING_KEYS.items() if key in entry}
    if isinstance(settings.get("classes"), int):
        settings["classes"] = (settings["classes"],)
    picture = {name: entry[key] for key, name in _PICTURE_KEYS.items() if key in entry}
    try:
        return Stage(folder / entry["model"], DetectionSettings(**settings),
                     Preprocessing(**picture) if picture else None,
                     **{key: entry[key] for key in _STAGE_KEYS[1:] if key in entry})
    except (InputError, TypeError) as error:
        raise InputError(f"{where}: {error}") from None


def checked_stages(cascade: Any) -> Tuple[Stage, ...]:
    """The API's `cascade`: a cascade file's path, or a sequence of `Stage`s."""
    if cascade is None:
        return ()
    if isinstance(cascade, (str, os.PathLike)):
        return read_cascade(cascade)
    if isinstance(cascade, Stage):
        return (cascade,)
    if isinstance(cascade, (bytes, Mapping)) or not hasattr(cascade, "__iter__"):
        raise InputError("cascade is a cascade file's path or a list of Stage")
    stages = tuple(cascade)
    if not stages or not all(isinstance(stage, Stage) for stage in stages):
        raise InputError("cascade is a cascade file's path or a list of Stage (at least one)")
    return stages


@dataclass
class _Opened:
    """A stage's classifier as it runs: its session and how crops become its input."""

    session: Any
    input: str
    #: (height, width) of its input.
    size: Tuple[int, int]
    layout: str
    channels: int
    mode: str
    batch: int
    #: The scores' output, then the regression's if one is read.
    outputs: List[str]


class Cascade:
    """Stages run one after another on the boxes a detector kept on a picture; a stage that does not say how it
    reads pixels reads them as the detector does (`preprocessing`, `transpose`)."""

    def __init__(self, stages: Sequence[Stage], preprocessing: Preprocessing, transpose: bool) -> None:
        self.stages = tuple(replace(stage, preprocessing=stage.preprocessing or preprocessing,
                                    transpose=transpose if stage.transpose is None else stage.transpose)
                            for stage in stages)
        self._opened: List[_Opened] = []

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_opened": []}  # sessions do not pickle; a worker opens its own

    def open(self, threads: Optional[int]) -> None:
        """Open every stage's classifier (once), checking its input and outputs."""
        if not self._opened:
            self._opened = [_open(stage, number, threads) for number, stage in enumerate(self.stages, 1)]

    def run(self, picture: Any, found: List[Detection]) -> List[Detection]:
        """The detections `found` on `picture` (a Pillow image or pixels H x W x C) that every stage keeps, each
        with the last stage's score, class and box, best first."""
        self.open(None)
        for number, (stage, opened) in enumerate(zip(self.stages, self._opened), 1):
            if not found:
                break
            found = _rescored(stage, opened, picture, found, f"cascade stage {number}")
        return found


def _open(stage: Stage, number: int, threads: Optional[int]) -> _Opened:
    label = f"cascade stage {number}'s model '{printable(os.fspath(stage.model))}'"
    check_input_file(Path(stage.model), label)
    session = ort.file_session(Path(stage.model), ort.PICTURES, label, "try fewer boxes (a higher threshold before "
                               "this stage)", threads)
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise InputError(f"{label} must have one 4-D picture input; it has "
                         f"{', '.join(f'{i.name} {list(i.shape)}' for i in inputs)}")
    shape = inputs[0].shape
    layout = _LAYOUTS[stage.layout] if stage.layout else _layout_of(shape, label)
    dims = list(shape[2:]) + [shape[1]] if layout == CHANNELS_FIRST else list(shape[1:])
    size = stage.size or tuple(dims[:2])
    if any(isinstance(d, int) and d != s for d, s in zip(dims[:2], size)):
        raise InputError(f"{label} reads {list(shape)}: its crops are {'x'.join(map(str, dims[:2]))}, not the "
                         f"\"size\" {'x'.join(map(str, size))} given")
    if not all(isinstance(d, int) and d > 0 for d in size):
        raise InputError(f"{label} reads {list(shape)}, of no fixed size: give the crops' size (\"size\": "
                         "[height, width])")
    # A channel count the input does not fix is the one the stage's pixels have (gray: 1, else 3).
    channels = dims[2] if isinstance(dims[2], int) else 1 if stage.pixels.channels == "gray" else 3
    names = [o.name for o in session.get_outputs()]
    settings = stage.settings
    for name in (settings.output_name, settings.regression):
        if name is not None and name not in names:
            raise InputError(f"{label} has no output '{printable(name)}'; it has {', '.join(map(printable, names))}")
    scores = settings.output_name or _only_score(names, settings.regression, label)
    return _Opened(session, inputs[0].name, (int(size[0]), int(size[1])), layout, channels,
                   model_mode(channels, stage.pixels), 1 if shape[0] == 1 else BATCH,
                   [scores] + ([settings.regression] if settings.regression else []))


def _layout_of(shape: Sequence[Any], label: str) -> str:
    """The layout of a classifier's [N, ., ., .] input: channels first when dim 1 is 1 or 3 and dim 3 is not."""
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first != last:
        return CHANNELS_FIRST if first else CHANNELS_LAST
    raise InputError(f"{label} reads {list(shape)}: say which dim holds the channels (\"layout\": \"nchw\" or "
                     "\"nhwc\")")


def _only_score(names: Sequence[str], regression: Optional[str], label: str) -> str:
    left = [name for name in names if name != regression]
    if len(left) != 1:
        raise InputError(f"{label} has outputs {', '.join(map(printable, names))}: say which holds the scores "
                         "(\"output\")")
    return left[0]


def _rescored(stage: Stage, opened: _Opened, picture: Any, found: List[Detection], where: str) -> List[Detection]:
    boxes = np.asarray([d.box for d in found], np.float64)
    if stage.square:
        boxes = _squared(boxes)
    cuts = np.round(boxes).astype(np.int64)
    usable = np.flatnonzero((cuts[:, 2] > cuts[:, 0]) & (cuts[:, 3] > cuts[:, 1]))
    if not len(usable):
        return []
    pixels = np.asarray(pictures.in_mode(picture, opened.mode))
    feeds = np.concatenate([_crop_input(stage, opened, pixels, cuts[i]) for i in usable])
    values = _run(opened, feeds, where)
    settings = stage.settings
    scores = values[0].reshape(len(usable), -1).T  # [K, n]
    chosen, numbers = class_scores(activated(scores, settings.activation), settings.classes)
    rows, kept = np.nonzero(chosen > np.float32(settings.threshold))
    moved = cuts[usable[kept]].astype(np.float32)
    if settings.regression:
        offsets = values[1].reshape(len(usable), -1)
        if offsets.shape[1] != 4:
            raise InputError(f"{where}'s regression output '{settings.regression}' has {offsets.shape[1]} values a "
                             "crop; it needs 4 (x1, y1, x2, y2)")
        offsets = offsets[kept]  # in the picture's frame, the crop's too (a transposed net's as its package reads them)
        spans = np.stack([moved[:, 2] - moved[:, 0], moved[:, 3] - moved[:, 1]] * 2, axis=1)
        moved = moved + offsets.astype(np.float32) * spans
    width, height = pictures.size_of(picture)
    moved = clipped(moved, (height, width))
    rescored = [replace(found[usable[index]], box=tuple(box), score=score, klass=klass, label=None)
                for index, box, score, klass in zip(kept.tolist(), moved.tolist(), chosen[rows, kept].tolist(),
                                                    numbers[rows].tolist())]
    return best_first(rescored, settings.iou, settings.overlap)


def _squared(boxes: np.ndarray) -> np.ndarray:
    """Each box made square about its centre, its side the box's longer one."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2], axis=1)


def _crop_input(stage: Stage, opened: _Opened, pixels: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """The crop `cut` (x1, y1, x2, y2, whole pixels; zeros where it runs past the picture) as the classifier's
    input, a batch of one."""
    x1, y1, x2, y2 = (int(v) for v in cut)
    crop = np.zeros((y2 - y1, x2 - x1) + pixels.shape[2:], np.uint8)
    height, width = pixels.shape[:2]
    top, left, bottom, right = max(y1, 0), max(x1, 0), min(y2, height), min(x2, width)
    if bottom > top and right > left:
        crop[top - y1:bottom - y1, left - x1:right - x1] = pixels[top:bottom, left:right]
    rows, columns = opened.size
    if stage.transpose:  # the classifier reads the crop as W x H: cut it to its frame, then swap
        image = pictures.transposed(pictures.resized(crop, (columns, rows)))
    else:
        image = pictures.resized(crop, (rows, columns))
    return model_input(image, opened.channels, opened.layout, stage.pixels)


def _run(opened: _Opened, feeds: np.ndarray, where: str) -> List[np.ndarray]:
    try:
        if opened.batch == 1:
            runs = [opened.session.run(opened.outputs, {opened.input: feed[None]}) for feed in feeds]
            return [np.concatenate([run[k] for run in runs]) for k in range(len(opened.outputs))]
        results = [opened.session.run(opened.outputs, {opened.input: feeds[start:start + BATCH]})
                   for start in range(0, len(feeds), BATCH)]
        return [np.concatenate([r[k] for r in results]) for k in range(len(opened.outputs))]
    except Exception as error:
        raise ort.failure(error, f"{where}'s model on {len(feeds)} crops", original=True,
                          hint="try fewer boxes (a higher threshold before this stage)") from None


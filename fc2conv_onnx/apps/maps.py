"""A converted model opened to run on pictures: which output to read, where its cells sit (the geometry stored
in the model), and its map on a picture at any scale, from one onnxruntime session. `heatmap` and `detect`
both stand on this.

A model file is opened by onnxruntime alone (its metadata holds the geometry and which outputs are scores),
as a hand-written loop would open it: detect and heatmap import neither onnx nor graphsurgeon. A model given
in memory (a ModelProto, bytes, a file object) is read as the converter reads it.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError, printable
from ..model import marker, ort
from ..model.geometry import Geometry
from ..model.layout import CHANNELS_LAST
from ..model.scores import first_score, made_by_score_op
from ..model.stored_files import check_input_file
from ..model.wire import external_locations
from . import pictures
from .labels import labels_from_metadata
from .preprocessing import Preprocessing, model_input

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)


@dataclass
class MapModel:
    """A converted model, its stored geometries and one session on it."""

    #: Output name -> where its cells sit; outputs of unknown geometry are absent.
    geometries: Dict[str, Geometry]
    #: Output name -> why its geometry is unknown.
    unknown: Dict[str, str]
    #: Output name -> its layout (channels first or last).
    layouts: Dict[str, str]
    #: The outputs made by a Softmax or Sigmoid (probabilities, not logits).
    scores: FrozenSet[str]
    #: The onnxruntime session every picture and scale runs in (`run`, `get_inputs` as onnxruntime's).
    session: Any
    #: The model's metadata (its exporter's keys; class names may be among them).
    metadata: Dict[str, str] = field(default_factory=dict)
    #: Per thread, the last input made (`feed`), reused for the next one of its size: each thread writes over
    #: its own (onnxruntime's `run` may be called from several threads at once).
    _buffers: threading.local = field(default_factory=threading.local, repr=False)

    def placed(self, name: Optional[str], role: str = "output") -> str:
        """`name` (default: the output that looks like class scores), if its cells can be placed on a
        picture; else InputError saying why not."""
        name = name or first_score(list(self.geometries) or list(self.unknown), self.scores)
        if name not in self.geometries:
            known = self.unknown.get(name)
            why = (f"its geometry is unknown: {known}" if known else "it has no geometry" if name in self.unknown or
                   name in self.layouts else "the model has no such output")
            others = f"; outputs with one: {', '.join(self.geometries)}" if self.geometries else ""
            raise InputError(f"cannot place the cells of {role} '{name}' on the picture: {why}{others}")
        return name

    def channels(self, name: str) -> int:
        """How many channels the input of output `name` takes (0 if its shape does not say)."""
        geometry = self.geometries[name]
        shape = {i.name: i.shape for i in self.session.get_inputs()}[geometry.input]
        channels = shape[-1 if geometry.layout == CHANNELS_LAST else 1]
        return channels if isinstance(channels, int) else 0

    def stored_labels(self, name: str) -> Optional[Tuple[Tuple[str, ...], str]]:
        """The class names of output `name` from the model's metadata, and their key: only when they are as many
        as its classes (when its shape says how many); else None, and a note in the log."""
        found = labels_from_metadata(self.metadata)
        if found is None:
            return None
        shape = {o.name: o.shape for o in self.session.get_outputs()}.get(name) or []
        classes = shape[-1 if self.layouts.get(name) == CHANNELS_LAST else 1] if len(shape) > 1 else None
        if isinstance(classes, int) and classes != len(found[0]):
            logger.warning("the model's metadata '%s' holds %d names, and output '%s' has %d classes: not used as "
                           "their names", found[1], len(found[0]), name, classes)
            return None
        return found

    def maps(self, picture, names: Sequence[str], preprocessing: Preprocessing,
             where: str = "") -> Dict[str, np.ndarray]:
        """The outputs `names` (one input, one geometry) run on `picture` (a Pillow image), each as its
        [K, h, w] map of the one image, channels first whatever the model's layout. `where` ("at scale 0.5")
        goes into the errors."""
        return self.run(self.feed(picture, names[0], preprocessing, where), names, pictures.size_of(picture), where)

    def feed(self, picture, name: str, preprocessing: Preprocessing, where: str = "") -> np.ndarray:
        """`picture` as the input of output `name`: a batch of one, preprocessed; InputError for a picture the
        model takes no cell of, or whose size its trunk does not take."""
        geometry = self.geometries[name]
        check_picture_size(pictures.size_of(picture), geometry, where)
        buffer = getattr(self._buffers, "last", None)
        feed = model_input(picture, self.channels(name), geometry.layout, preprocessing, buffer)
        if geometry.layout != CHANNELS_LAST:
            self._buffers.last = feed[0]  # written over by this thread's next picture of this size
        return feed

    def run(self, feed: np.ndarray, names: Sequence[str], size: Tuple[int, int],
            where: str = "") -> Dict[str, np.ndarray]:
        """The outputs `names` on `feed` (made by `feed` from a picture of `size`, width x height), each as in
        `maps`."""
        try:
            values = self.session.run(list(names), {self.geometries[names[0]].input: feed})
        except Exception as error:
            raise ort.failure(error, f"the model on the {size[0]}x{size[1]} image{where}", original=True,
                              hint=_PICTURE_HINT) from None
        for name, value in zip(names, values):
            if name in self.scores:
                _check_probabilities(name, value)
        return {name: np.moveaxis(value[0], -1, 0) if self.layouts.get(name) == CHANNELS_LAST else value[0]
                for name, value in zip(names, values)}


#: What to try when a picture does not fit in memory.
_PICTURE_HINT = "try a smaller picture, or fewer and smaller scales"


def open_map_model(model: Any, what: str = "the picture", threads: Optional[int] = None) -> MapModel:
    """`model` (a path, or any source `convert` takes), converted by this tool, in a session made for many
    runs (on `threads` threads: default one per core); InputError for any other model (`what` needs its
    geometry)."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        label = f"'{printable(str(path))}'"
        check_input_file(path, label)
        for location in sorted(external_locations(path)):  # in this tool's words, not onnxruntime's
            if not (path.parent / location).is_file():
                raise InputError(f"model {label} keeps weights in '{printable(location)}', which is not a file next "
                                 "to it (missing, or a folder or device): copy the model with its data files")
        session = ort.file_session(path, ort.PICTURES, f"model {label}", _PICTURE_HINT, threads)
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        stored = metadata.get(marker.CONVERTED_KEY)
        graph = lambda: _graph_of_file(path)  # noqa: E731 (read only for a marker older than its score record)
    else:
        from ..model import io, runtime  # a model in memory: onnx is already there

        loaded = io.read_model(model)
        metadata = {prop.key: prop.value for prop in loaded.model.metadata_props}
        stored = marker.converted_marker(loaded.model)
        session = None if stored is None else runtime.open_session(
            loaded.model, loaded.weights, "the model", original=True, hint=_PICTURE_HINT, use=ort.PICTURES,
            threads=threads)
        graph = lambda: loaded.model  # noqa: E731
    if stored is None:
        raise InputError(f"the model was not converted by fc2conv-onnx; convert it first ({what} needs its "
                         "geometry)")
    geometries = marker.geometry_from_marker(stored)
    unknown = marker.unknown_geometry_from_marker(stored)
    scores = marker.score_outputs_from_marker(stored)
    if scores is None:
        scores = [name for name in [*geometries, *unknown] if made_by_score_op(graph(), name)]
    layouts = marker.output_layouts_from_marker(stored)
    _check_names(session, geometries, [*geometries, *unknown, *layouts, *scores])
    return MapModel(geometries, unknown, layouts, frozenset(scores), session, metadata)


def _check_names(session: Any, geometries: Dict[str, Geometry], outputs: Sequence[str]) -> None:
    """Every name the marker holds must be in the model: an input each geometry places cells on, and each
    output it describes (a forged or stale marker is refused here, never run)."""
    inputs = {i.name for i in session.get_inputs()}
    present = {o.name for o in session.get_outputs()}
    for name, geometry in geometries.items():
        if geometry.input not in inputs:
            raise InputError(f"the model's '{marker.CONVERTED_KEY}' metadata places output '{printable(name)}' on "
                             f"input '{printable(geometry.input)}', which the model does not have; convert the "
                             "original again")
    for name in outputs:
        if name not in present:
            raise InputError(f"the model's '{marker.CONVERTED_KEY}' metadata describes output '{printable(name)}', "
                             "which the model does not have; convert the original again")


#: How far float rounding takes a Softmax's or Sigmoid's value past [0, 1].
_ROUNDING = 1e-4


def _check_probabilities(name: str, values: np.ndarray) -> None:
    """An output the marker calls a probability (made by a Softmax or Sigmoid) must give values in [0, 1]: a
    marker naming another output (a box regression) would make its values scores."""
    low, high = float(np.min(values, initial=0.0)), float(np.max(values, initial=0.0))
    if not (low >= -_ROUNDING and high <= 1 + _ROUNDING):
        raise InputError(f"output '{printable(name)}' is marked as probabilities (made by a Softmax or Sigmoid) but "
                         f"gives values from {low:.4g} to {high:.4g}: the model's '{marker.CONVERTED_KEY}' metadata "
                         "does not match its graph; convert the original again")


def _graph_of_file(path: Path) -> "onnx.ModelProto":
    """The graph of the model file at `path`, without its weights (for a marker written before markers named the
    score outputs)."""
    from ..model.skeleton import read_skeleton

    return read_skeleton(path)[0]


def taken_size(size: Tuple[int, int], geometry: Geometry) -> Tuple[int, int]:
    """The (width, height) a picture of `size` (width, height) is run at: its own when the trunk takes it, else per
    axis the nearest size no larger that it takes (a "same"-padded trunk with branches takes the training size +
    k * step). The tool resizes to it rather than refuse a size it chose itself (a pyramid's scale, a --resize
    factor); boxes go back with the factor actually used per axis. A picture smaller than the window is left as
    it is, for `check_picture_size` to refuse."""
    width, height = size
    if not geometry.size_step or len(geometry.window) != 2 or geometry.accepts((height, width)) \
            or height < geometry.window[0] or width < geometry.window[1]:
        return size
    taken_height, taken_width = geometry.nearest_taken((height, width))
    return taken_width, taken_height


def at_taken_size(picture: Any, scale: float, geometry: Geometry) -> Any:
    """`picture` resized by `scale` to the size the trunk takes (`taken_size`); itself when that is its size."""
    own = pictures.size_of(picture)
    target = taken_size(pictures.scaled_size(own, scale), geometry)
    if target == own:
        return picture
    if scale == 1.0:
        logger.info("picture %dx%d (width x height) is not a size the model's trunk takes (%s): run at %dx%d, its "
                    "boxes mapped back", own[0], own[1], geometry.sizes_taken(), target[0], target[1])
    return pictures.resized(picture, (target[1], target[0]))


def check_picture_size(size: Tuple[int, int], geometry: Geometry, where: str = "") -> None:
    """Refuse a picture of `size` (width, height) that the model gives no cell for, or that its trunk does
    not take."""
    width, height = size
    if len(geometry.window) != 2 or height < geometry.window[0] or width < geometry.window[1]:
        raise InputError(f"image {width}x{height} (width x height){where} is smaller than the model's "
                         f"{'x'.join(map(str, geometry.window))} window (height x width), or the model is not 2-D")
    if geometry.size_step and not geometry.accepts((height, width)):
        taken = geometry.nearest_taken((height, width))
        raise InputError(f"image {width}x{height} (width x height){where} is not a size the model's trunk takes: it "
                         f"takes {geometry.sizes_taken()} (height x width); crop or resize it to {taken[1]}x{taken[0]}")

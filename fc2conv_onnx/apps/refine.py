"""The refining stage: the map proposes, the original classifier decides.

Cell (i, j) of a converted model's map is the head on the feature map of the whole picture; where the trunk pads
or reads past the window that differs from the classifier run on the window's image crop alone (on trained models
up to 11% of decisions flip). So the cells whose score is above a proposal threshold become candidate windows,
each window's crop is cut from the model's input as it was made for that scale (the picture already resized and
preprocessed: nothing is decoded or scaled twice), the crops go through the original classifier in batches (one
session), and its score - and its box regression, if one is read - replace the map's for those cells. The
threshold and the suppression then run as without refining: every box reported carries the classifier's own
score on its crop.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError, printable
from ..model import ort
from ..model.detections import DetectionSettings, activated, class_scores
from ..model.geometry import Geometry
from ..model.layout import CHANNELS_LAST
from ..model.stored_files import check_input_file

#: Crops run through the original classifier at once (its batch dim permitting).
BATCH = 128


class Refiner:
    """The original classifier (a model file), opened once, rescoring the proposed cells of a converted model's map.

    `proposal_threshold`: a cell is a candidate when its map score (after the detection settings' activation and
    class choice) is above it; None takes half the threshold for probabilities, and asks for a number when the
    scores are logits."""

    def __init__(self, model: Any, proposal_threshold: Optional[float] = None) -> None:
        if not isinstance(model, (str, os.PathLike)):
            raise InputError("refine takes the original classifier's file path (.onnx)")
        self.model = Path(model)
        self.proposal_threshold = proposal_threshold
        self._session: Any = None
        self._batch = BATCH
        self._input = ""

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_session": None}  # a session does not pickle; a worker opens its own

    def open(self, geometry: Geometry, outputs: Sequence[str], threads: Optional[int]) -> None:
        """Open the classifier and check it is the one the map was made from: it reads the map's input, at the
        window's size (or any size), and has the outputs read."""
        if self._session is not None:
            return
        label = f"'{printable(str(self.model))}'"
        check_input_file(self.model, label)
        session = ort.file_session(self.model, ort.PICTURES, f"the original model {label}",
                                   "try fewer proposals (a higher --proposal-threshold)", threads)
        inputs = {i.name: i.shape for i in session.get_inputs()}
        if geometry.input not in inputs:
            raise InputError(f"the original model {label} has no input '{geometry.input}' (the converted model's); "
                             "give the classifier it was converted from")
        shape = inputs[geometry.input]
        spatial = shape[1:-1] if geometry.layout == CHANNELS_LAST else shape[2:]
        window = tuple(int(w) for w in geometry.window)
        if any(isinstance(d, int) and d != w for d, w in zip(spatial, window)) or len(spatial) != len(window):
            raise InputError(f"the original model {label} reads {list(shape)}, not the {'x'.join(map(str, window))} "
                             "window of the converted model; give the classifier it was converted from")
        missing = sorted(set(outputs) - {o.name for o in session.get_outputs()})
        if missing:
            raise InputError(f"the original model {label} has no output '{missing[0]}'; give the classifier it was "
                             "converted from")
        self._batch = 1 if shape and shape[0] == 1 else BATCH
        self._input = geometry.input
        self._session = session

    def threshold_for(self, settings: DetectionSettings, probabilities: bool) -> float:
        """The proposal threshold: the one given, else half the detection threshold for probabilities."""
        if self.proposal_threshold is not None:
            return self.proposal_threshold
        if not probabilities:
            raise InputError("the scores are logits (not made by a Softmax or Sigmoid): give the proposal threshold "
                             "in their units (--proposal-threshold)")
        return settings.threshold / 2

    def refine(self, feed: np.ndarray, maps: Dict[str, np.ndarray], outputs: Sequence[str], geometry: Geometry,
               settings: DetectionSettings, proposal: float) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
        """`maps` ([K, h, w] each, channels first) with the classifier's values at the proposed cells, and the
        mask [h * w] of those cells (the only ones that may become detections)."""
        scores = maps[outputs[0]]
        grid = scores.shape[1:]
        chosen, _ = class_scores(activated(scores, settings.activation), settings.classes)
        proposed = np.flatnonzero((chosen > np.float32(proposal)).any(axis=0))
        refined = {name: values.copy() for name, values in maps.items()}
        for start in range(0, len(proposed), self._batch):
            cells = proposed[start:start + self._batch]
            values = self._run(self._crops(feed, cells, grid, geometry), outputs)
            rows, columns = np.divmod(cells, grid[1])
            for name, result in zip(outputs, values):
                refined[name][:, rows, columns] = result.reshape(len(cells), -1).T
        mask = np.zeros(grid[0] * grid[1], dtype=bool)
        mask[proposed] = True
        return refined, mask

    def _crops(self, feed: np.ndarray, cells: np.ndarray, grid: Sequence[int], geometry: Geometry) -> np.ndarray:
        """The windows of `cells` cut from the model's input `feed` ([1, C, H, W] or [1, H, W, C])."""
        last = geometry.layout == CHANNELS_LAST
        height, width = (feed.shape[1], feed.shape[2]) if last else (feed.shape[2], feed.shape[3])
        window = (int(geometry.window[0]), int(geometry.window[1]))
        crops: List[np.ndarray] = []
        for cell in cells.tolist():
            row, column = divmod(cell, grid[1])
            top = int(geometry.offset[0]) + row * int(geometry.stride[0])
            left = int(geometry.offset[1]) + column * int(geometry.stride[1])
            if top < 0 or left < 0 or top + window[0] > height or left + window[1] > width:
                raise InputError(f"cell ({row}, {column})'s window runs past the picture's edge; refining needs every "
                                 "window inside the picture")
            crops.append(feed[0, top:top + window[0], left:left + window[1], :] if last else
                         feed[0, :, top:top + window[0], left:left + window[1]])
        return np.ascontiguousarray(np.stack(crops))

    def _run(self, crops: np.ndarray, outputs: Sequence[str]) -> List[np.ndarray]:
        name = self._input
        try:
            if self._batch == 1:
                runs = [self._session.run(list(outputs), {name: crop[None]}) for crop in crops]
                return [np.concatenate([run[k] for run in runs]) for k in range(len(outputs))]
            return self._session.run(list(outputs), {name: crops})
        except Exception as error:
            raise ort.failure(error, f"the original model on {len(crops)} crops", original=True,
                              hint="try fewer proposals (a higher --proposal-threshold)") from None

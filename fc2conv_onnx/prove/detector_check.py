"""Proof that the detector `convert --emit-detections` appends gives what `detect` gives at one scale: the
same boxes, scores, classes and images, on random maps fed to the detector alone (many candidates, so that
the threshold and the suppression are exercised) and on the whole model run on a random input."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper

from ..errors import ValidationError
from ..model import runtime
from ..model.detections import SIGMOID, DetectionSettings, best_first, candidates
from ..model.layout import CHANNELS_LAST, with_spatial
from ..model.weights import Weights
from ..rewrite.detector_graph import SWAPPED, DetectorParts, standalone
from .validate import OutputCheck

#: Random maps fed to the detector alone, each a batch of BATCH images of about GRID x GRID cells (many
#: overlapping candidates: the suppression has work to do).
ROUNDS, BATCH, GRID = 3, 2, 16

Found = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # boxes, scores, classes, batch index


def expected(scores: np.ndarray, offsets: Optional[np.ndarray], parts: DetectorParts, settings: DetectionSettings,
             size: Sequence[int]) -> Found:
    """What `detect` finds at scale 1 in a batch of maps ([N, K, h, w], channels first) of inputs of `size` (with
    `parts.transpose`, on the pictures those inputs are the transposes of: its boxes in their frame)."""
    found = []
    if offsets is not None and parts.transpose:  # in the picture's frame: the input's y1, x1, y2, x2
        offsets = offsets[:, list(SWAPPED)]
    for n in range(scores.shape[0]):
        found += candidates(scores[n], None if offsets is None else offsets[n], parts.geometry, settings, str(n), 1.0,
                            (1.0, 1.0), size)
    kept = best_first(found, settings.iou, settings.overlap)
    boxes = np.asarray([d.box for d in kept], np.float32).reshape(-1, 4)
    return (boxes[:, list(SWAPPED)] if parts.transpose else boxes,
            np.asarray([d.score for d in kept], np.float32), np.asarray([d.klass for d in kept], np.int64),
            np.asarray([int(d.image) for d in kept], np.int64))


def compare(what: str, got: Found, want: Found, span: float) -> str:
    """'' when the detections agree (in any order among equal scores), else what differs."""
    if len(got[1]) != len(want[1]):
        return f"{what}: the detector keeps {len(got[1])} box(es), detect {len(want[1])}"

    def ordered(found: Found) -> Found:
        order = np.lexsort((found[0][:, 1], found[0][:, 0], found[2], found[3], -found[1]))
        return tuple(part[order] for part in found)  # type: ignore[return-value]
    (g_boxes, g_scores, g_classes, g_batch), (w_boxes, w_scores, w_classes, w_batch) = ordered(got), ordered(want)
    if not (np.array_equal(g_classes, w_classes) and np.array_equal(g_batch, w_batch)):
        return f"{what}: the detector's classes or images differ from detect's"
    score_error = float(np.abs(g_scores - w_scores).max(initial=0.0))
    box_error = float(np.abs(g_boxes - w_boxes).max(initial=0.0))
    if score_error > 1e-5 or box_error > 1e-5 * span:
        return f"{what}: scores differ by {score_error:.3g}, boxes by {box_error:.3g} pixels"
    return ""


def _maps(rng: np.random.Generator, shape: Sequence[int], settings: DetectionSettings,
          probabilities: bool) -> np.ndarray:
    """Random map values of which about half score above the threshold."""
    centre = settings.threshold
    if probabilities and 0.0 < settings.threshold < 1.0 and settings.activation != SIGMOID:
        return rng.uniform(0.0, 1.0, shape).astype(np.float32)
    if settings.activation == SIGMOID and 0.0 < settings.threshold < 1.0:
        centre = float(np.log(settings.threshold / (1.0 - settings.threshold)))
    return (centre + rng.normal(0.0, 1.0, shape)).astype(np.float32)


def _ran(session: runtime.Session, names: Sequence[str], feeds: Dict[str, np.ndarray], what: str) -> List:
    """`session`'s outputs `names`, or the one-line error of `runtime.failure` (the conversion's fault)."""
    try:
        return session.run(names, feeds)
    except Exception as error:
        raise runtime.failure(error, what, original=False) from None


def _found(values: Sequence[np.ndarray]) -> Found:
    """The detector's outputs (boxes, scores, classes, batch index) as a Found."""
    boxes, scores, classes, batch = values
    return boxes, scores, classes, batch


def _channels_first(values: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(values, -1, 1) if layout == CHANNELS_LAST else values


def _detected(maps: Dict[str, np.ndarray], parts: DetectorParts, settings: DetectionSettings,
              size: Sequence[int]) -> Found:
    """`expected` for the detector's maps as the model gives them (in their layouts), by name."""
    offsets = _channels_first(maps[parts.regression], parts.regression_layout) if parts.regression else None
    return expected(_channels_first(maps[parts.scores], parts.scores_layout), offsets, parts, settings, size)


def check_detector(model: onnx.ModelProto, parts: DetectorParts, settings: DetectionSettings,
                   size: Sequence[int], input_shape: Sequence[int], probabilities: bool, weights: Weights,
                   seed: int = 0) -> List[OutputCheck]:
    """Compare the detector with `detect` at one scale; raise ValidationError on a difference."""
    rng = np.random.default_rng(seed)
    geometry = parts.geometry
    maps_size = tuple(w + (GRID + axis) * s + s // 2
                      for axis, (w, s) in enumerate(zip(geometry.window, geometry.stride)))
    if geometry.size_step and not geometry.accepts(maps_size):
        maps_size = geometry.nearest_taken(maps_size)
    grid = geometry.grid(maps_size)
    layout_of = {parts.scores: parts.scores_layout, parts.regression: parts.regression_layout}
    types = {o.name: o.type for o in model.graph.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    batch_shape = with_spatial([BATCH, *input_shape[1:]], geometry.layout, maps_size)
    image_type = {i.name: i for i in model.graph.input}[geometry.input].type.tensor_type.elem_type
    image_dtype = helper.tensor_dtype_to_np_dtype(image_type)
    map_dtypes = {parts.scores: helper.tensor_dtype_to_np_dtype(parts.scores_type),
                  parts.regression: helper.tensor_dtype_to_np_dtype(parts.regression_type)}
    alone = runtime.open_session(standalone(parts, settings, opset, batch_shape, image_type, types[parts.scores],
                                               types.get(parts.regression or "")), None, "the detector")
    span = float(max(parts.geometry.window))
    detail = []
    for round_ in range(ROUNDS):
        feeds: Dict[str, np.ndarray] = {parts.geometry.input: np.zeros(batch_shape, image_dtype)}
        for name, channels in ((parts.scores, parts.classes), (parts.regression, 4)):
            if name:
                shape = [BATCH, channels, *grid]
                values = (_maps(rng, shape, settings, probabilities) if name == parts.scores else
                          rng.normal(0.0, 0.2, shape)).astype(map_dtypes[name])
                feeds[name] = np.moveaxis(values, 1, -1).copy() if layout_of[name] == CHANNELS_LAST else values
        got = _found(_ran(alone, parts.outputs, feeds, "the detector"))
        want = _detected(feeds, parts, settings, maps_size)
        difference = compare(f"random maps {round_ + 1}", got, want, span)
        if difference:
            raise ValidationError(f"the emitted detector does not give detect's detections ({difference})")
        detail.append(len(want[1]))
    # The whole model on a random picture: its own maps against its own detections.
    whole = runtime.open_session(model, weights, "the converted model with its detector")
    picture = rng.uniform(0.0, 1.0, with_spatial([1, *input_shape[1:]], parts.geometry.layout, size))
    names = [parts.scores] + ([parts.regression] if parts.regression else []) + list(parts.outputs)
    ran = dict(zip(names, _ran(whole, names, {parts.geometry.input: picture.astype(image_dtype)},
                               "the converted model with its detector")))
    want = _detected(ran, parts, settings, size)
    difference = compare("the model on a random input", _found([ran[n] for n in parts.outputs]), want, span)
    if difference:
        raise ValidationError(f"the emitted detector does not give detect's detections ({difference})")
    counts = ", ".join(map(str, detail))
    shown = "x".join(map(str, grid))
    return [OutputCheck(", ".join(parts.outputs), "detections", tuple(picture.shape), int(np.prod(grid)), 0.0,
                        0.0, 0.0, True, f"the same as detect at scale 1: {counts} detection(s) kept on {ROUNDS} random "
                                        f"{BATCH}x{shown} maps, {len(want[1])} on this random input")]

"""The proof for outputs that are maps already (`plan.map_outputs`: a fully convolutional model written as it is,
its geometry recorded): on a larger input, each output's grid is the one the geometry predicts, and each checked
cell equals the original model run on that cell's window of the input alone - crop and forward on the image
itself, which is what the recorded geometry claims. A trunk that pads makes its cells differ from those crops by
design (as any converted map; `gap` measures it): there only the grid is checked, and the report says so.
"""
from __future__ import annotations

from dataclasses import replace
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..model.geometry import Geometry, HeadGeometry
from ..model.layout import CHANNELS_LAST
from ..model.runtime import Session, random_feeds, run_once, training_shapes
from ..model.weights import Weights
from ..plan.map_outputs import MapOutput
from ..plan.plan import Plan
from .validate import (
    MAX_LOCATIONS,
    OutputCheck,
    check_geometry,
    compare,
    quantization_steps,
    sample_locations,
    window_check_shapes,
)

#: Crops run through the original at once (its batch dim permitting).
BATCH = 64


def check_map_cells(original: onnx.ModelProto, converted: Session, plan: Plan, geometries: Sequence[HeadGeometry],
                    size: Optional[Sequence[int]] = None, seed: int = 0,
                    weights: Optional[Weights] = None) -> List[OutputCheck]:
    """The checks of every `MapOutput` head of `plan` at the spatial input `size` (default: a few strides larger
    than the training size)."""
    shapes = window_check_shapes(original, plan, geometries, size)
    feeds = random_feeds(original, shapes, np.random.default_rng(seed + 1))
    image = plan.trunk_inputs[0]
    input_shape = shapes[image]
    actual = run_once(converted, feeds, f"the converted model at input size {list(input_shape)}")
    steps = quantization_steps(original, weights)
    checks: List[OutputCheck] = []
    for head, geometry in zip(plan.heads, geometries):
        if not isinstance(head, MapOutput) or not isinstance(geometry, Geometry):
            continue
        values = {name: _channels_first(actual[name], head.output_layouts[name]) for name in head.outputs}
        grid = tuple(values[head.outputs[0]].shape[2:])
        checks += check_geometry(geometry, shapes, head.outputs, grid)
        if not all(c.passed for c in checks) or geometry.padded:
            continue  # a padded trunk: its cells are not the image crops (the report's geometry line says so)
        spatial = geometry.input_spatial(input_shape)
        locations, note = sample_locations(grid, MAX_LOCATIONS, np.random.default_rng(seed + 2))
        cells = [tuple(int(i) for i in np.unravel_index(int(location), grid)) for location in locations]
        inside = [cell for cell in cells if all(b <= s for b, s in zip(geometry.window_of(cell).stop, spatial))]
        if len(inside) < len(cells):
            note = (note + "; " if note else "") + f"{len(cells) - len(inside)} cell(s) whose window runs past the " \
                "input's edge left out"
        expected = _on_crops(original, feeds, image, geometry, inside, head.outputs, weights)
        for name in head.outputs:
            candidate = np.stack([values[name][0][(slice(None),) + tuple(cell)] for cell in inside])
            reference = expected[name].reshape(candidate.shape)
            checks.append(compare(name, "windows", reference, candidate, tuple(input_shape), len(inside),
                                  note or "the original on each cell's image crop", steps.get(name, 0.0)))
    return checks


def without_maps(plan: Plan, geometries: Sequence[HeadGeometry]) -> Tuple[Plan, Tuple[HeadGeometry, ...]]:
    """`plan` and its geometries without the `MapOutput` heads (the window check cuts the others' heads)."""
    kept = [(head, where) for head, where in zip(plan.heads, geometries) if not isinstance(head, MapOutput)]
    return replace(plan, heads=tuple(h for h, _ in kept)), tuple(w for _, w in kept)


def _channels_first(value: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(value, -1, 1) if layout == CHANNELS_LAST else value


def _on_crops(original: onnx.ModelProto, feeds: Mapping[str, np.ndarray], image: str, geometry: Geometry,
              cells: Sequence[tuple], outputs: Sequence[str], weights: Optional[Weights]) -> Mapping[str, np.ndarray]:
    """The original (at its training size) on each cell's window of the input, [cells, ...] per output."""
    pixels = feeds[image][0]
    last = geometry.layout == CHANNELS_LAST
    crops = []
    for cell in cells:
        box = geometry.window_of(cell).slices()
        crops.append(pixels[box + (slice(None),)] if last else pixels[(slice(None),) + box])
    batch = training_shapes(original)[image][0]
    step = 1 if batch == 1 else BATCH
    session = Session(original, weights)
    runs = []
    for start in range(0, len(crops), step):
        chunk = np.stack(crops[start:start + step])
        runs.append(run_once(session, {**feeds, image: chunk}, "the original model on image crops", weights,
                             original=True))
    return {name: np.concatenate([run[name] for run in runs]) for name in outputs}

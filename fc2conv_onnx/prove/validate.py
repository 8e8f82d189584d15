"""Prove the conversion with onnxruntime: nothing is written unless these checks pass.

Checks, on seeded random inputs:
- training size: the original and the converted model give the same outputs ([N, K] vs [N, K, 1, ...]);
- windows: on a larger input, the original model is cut at each head's source tensor into a trunk and a
  head; the trunk runs once, the head runs on the training-size windows of the feature map ("crop and
  forward", batched), and each result must equal the converted model's output at that window's location
  (every location, or a seeded sample plus the corners when there are very many);
- geometry: the output grid that `geometry` predicts from the graph is the one the window check's run gives.

onnxruntime is imported here only, when a check runs, so importing the package stays light.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass, replace
from math import prod
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

from ..errors import InputError, ValidationError
from ..model import graphs
from ..model.geometry import Geometry, HeadGeometry, Unknown
from ..model.io import MAX_INPUT_BYTES
from ..model.layout import CHANNELS_FIRST, CHANNELS_LAST, FLAT, spatial_dims, with_spatial
from ..model.registry import is_op
from ..model.runtime import OFF, Session, failure, open_session, random_feeds, run_once, training_shapes
from ..model.skeleton import nbytes_per_element
from ..model.weights import Weights
from ..plan.geometry_walk import default_validation_size, trunk_geometry
from ..plan.options import Options
from ..plan.plan import HeadPlan, Plan

logger = logging.getLogger(__name__)

#: (rtol, atol) by output dtype. The error bound is atol + rtol * max|reference|: a Conv sums in another
#: order than a Gemm, so agreement is judged against the output's scale, not element by element.
TOLERANCES: Dict[np.dtype, Tuple[float, float]] = {
    np.dtype(np.float64): (1e-9, 1e-12),
    np.dtype(np.float32): (1e-4, 1e-5),
    np.dtype(np.float16): (1e-2, 1e-3),
}
#: For an output that a QDQ model dequantizes: this many steps of its last DequantizeLinear's scale are added
#: to the tolerance, so that a value landing on the other side of a rounding boundary is not a failure.
QUANTIZATION_STEPS = 2
#: A converted output may differ from the original by this many times the original's own rounding noise (how
#: far the original moves under other roundings on the same input, see `own_noise`), besides the tolerances
#: above. Deep random-weight networks amplify rounding far beyond a relative 1e-4 (timm's fbnetv3_b: 34 on
#: logits of 43,000); the original with symbolic input sizes moves exactly as far as the conversion
#: (docs/equivalence.md).
NOISE_MULTIPLE = 4
#: Above this many output locations, the window check compares a seeded sample (plus every corner).
MAX_LOCATIONS = 4096
#: Feature windows are sent to the head in batches of at most this many bytes.
BATCH_BYTES = 64 << 20


@dataclass(frozen=True)
class OutputCheck:
    output: str
    check: str  # "training size", "windows", "geometry" or "detections"
    input_shape: Tuple[int, ...]
    locations: int
    max_abs: float
    max_rel: float
    tolerance: float
    passed: bool
    detail: str = ""
    #: The original's own rounding noise on this output, when the tolerances above were not enough and it was
    #: measured (None: not measured); NOISE_MULTIPLE times it is part of `tolerance`.
    noise: Optional[float] = None
    #: For a head's logits checked as an output too (see `with_logits`): the output they come before.
    before: str = ""

    @property
    def name(self) -> str:
        return f"{self.before} (logits '{self.output}')" if self.before else self.output

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        if self.check in ("geometry", "detections"):
            return f"{self.name}: {self.check}, input {list(self.input_shape)}: {self.detail} {verdict}"
        where = f"{self.locations} location(s), input {list(self.input_shape)}"
        text = (f"{self.name}: {self.check}, {where}: max abs error {self.max_abs:.3g}, "
                f"relative {self.max_rel:.3g} (tolerance {self.tolerance:.3g}{self.noise_note}) {verdict}")
        return text + (f" - {self.detail}" if self.detail else "")

    @property
    def noise_note(self) -> str:
        return "" if self.noise is None else f", with {NOISE_MULTIPLE}x the original's own rounding noise " \
            f"{self.noise:.3g}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ConvertedRuns:
    """The converted model as it is written, and the same model with heads' logits as outputs too (see
    `with_logits`): each output is read from the model as written, each logit from the other, so that what is
    validated is what is written."""

    written: Session
    with_logits: Optional[Session] = None

    def run(self, feeds: Mapping[str, np.ndarray], what: str) -> Dict[str, np.ndarray]:
        values = run_once(self.with_logits, feeds, what) if self.with_logits is not None else {}
        values.update(run_once(self.written, feeds, what))
        return values


def _run_converted(converted: Union[onnx.ModelProto, Session, ConvertedRuns], feeds: Mapping[str, np.ndarray],
                   what: str, weights: Optional[Weights]) -> Dict[str, np.ndarray]:
    return converted.run(feeds, what) if isinstance(converted, ConvertedRuns) else \
        run_once(converted, feeds, what, weights)


def quantization_steps(model: onnx.ModelProto, weights: Optional[Weights] = None) -> Dict[str, float]:
    """Output name -> the step (largest scale) of the last DequantizeLinear on its way, for the outputs of a
    QDQ model that has one; ops after it (Softmax, ...) change values by no more than a step or so."""
    producers = {out: node for node in model.graph.node for out in node.output}
    constants = {i.name: i for i in model.graph.initializer}
    steps = {}
    for output in model.graph.output:
        name, seen = output.name, set()
        while name in producers and name not in seen:
            seen.add(name)
            node = producers[name]
            if is_op(node, "DequantizeLinear"):
                if node.input[1] in constants:
                    steps[output.name] = float(np.abs((weights or Weights()).array(constants[node.input[1]])).max())
                break
            name = node.input[0] if node.input else ""
    return steps


def compare(output: str, check: str, reference: np.ndarray, candidate: np.ndarray,
            input_shape: Tuple[int, ...], locations: int, note: str = "", step: float = 0.0,
            noise: Optional[Callable[[], float]] = None) -> OutputCheck:
    """Compare one output; the candidate may carry trailing size-1 spatial axes ([N, K] vs [N, K, 1, 1]).
    `step` is the output's quantization step (QDQ models), of which QUANTIZATION_STEPS are tolerated.
    `noise` measures the original's own rounding noise on this output; it is called only when the other
    tolerances are not enough, and NOISE_MULTIPLE times it is tolerated too."""
    if candidate.size != reference.size:
        return OutputCheck(output, check, input_shape, locations, float("inf"), float("inf"), 0.0, False,
                           f"shape {list(candidate.shape)} where {list(reference.shape)} was expected")
    candidate = candidate.reshape(reference.shape)
    rtol, atol = TOLERANCES.get(reference.dtype, (0.0, 0.0))  # other dtypes must match exactly
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    same_nan = np.array_equal(np.isnan(ref), np.isnan(cand))
    finite = ~np.isnan(ref)
    diff = np.abs(ref[finite] - cand[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref[finite]).max()) if diff.size else 0.0
    tolerance = atol + rtol * scale + QUANTIZATION_STEPS * step
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    measured = None
    if same_nan and max_abs > tolerance and noise is not None and reference.dtype in TOLERANCES:
        measured = noise()
        tolerance += NOISE_MULTIPLE * measured
    passed = same_nan and max_abs <= tolerance
    return OutputCheck(output, check, input_shape, locations, max_abs, max_rel, tolerance, passed,
                       note if same_nan else "NaN in different places", measured)


def own_noise(expected: Mapping[str, np.ndarray], *reruns: Callable[[], Mapping[str, np.ndarray]]
              ) -> Callable[[str], Callable[[], float]]:
    """For `compare`'s `noise`: output name -> how far the original's outputs under other roundings (each of
    `reruns`, on the same input; run once, when first asked; one that fails is left out) are from `expected`,
    at most (NaN places left out)."""
    others: List[Mapping[str, np.ndarray]] = []

    def of(name: str) -> Callable[[], float]:
        def measure() -> float:
            if not others:
                for rerun in reruns:
                    try:
                        others.append(rerun())
                    except (InputError, ValidationError) as error:
                        logger.info("no rounding noise measured that way: %s", error)
            reference = expected[name].astype(np.float64)
            largest = 0.0
            for other in others:
                diff = np.abs(reference - other[name].astype(np.float64).reshape(reference.shape))
                diff = diff[~np.isnan(diff)]
                largest = max(largest, float(diff.max()) if diff.size else 0.0)
            return largest
        return measure
    return of


def check_training_size(original: onnx.ModelProto, converted: Union[onnx.ModelProto, Session, ConvertedRuns], *,
                        seed: int = 0,
                        weights: Optional[Weights] = None, converted_weights: Optional[Weights] = None,
                        per_location: Sequence[str] = (), origin: Optional[Mapping[str, str]] = None,
                        image_inputs: Sequence[str] = (), layouts: Optional[Mapping[str, str]] = None
                        ) -> List[OutputCheck]:
    """Original vs converted at the training size, every graph output but those in `per_location` (heads
    whose global pool was removed give a map there, which only the window check can compare). Outputs in
    `origin` (name -> layout) give several cells there (a finer stride): their first cell is compared.
    The original with the sizes of `image_inputs` (in `layouts`) symbolic is one of the other roundings its
    noise is measured by (see `own_noise`)."""
    shapes = training_shapes(original)
    feeds = random_feeds(original, shapes, np.random.default_rng(seed))
    expected = run_once(original, feeds, "the original model", weights, original=True)
    actual = _run_converted(converted, feeds, "the converted model", converted_weights or weights)
    # The original's other roundings: optimizations off, and its input sizes symbolic, as the converted model
    # has them (onnxruntime then picks other kernels for the same trunk: on random-weight timm fbnetv3_b all
    # of the conversion's difference, 6.75 on outputs of 3,100).
    def unoptimized() -> Mapping[str, np.ndarray]:
        session = open_session(original, weights, "the original model", True, optimization=OFF)
        return run_once(session, feeds, "the original model")

    def symbolic() -> Mapping[str, np.ndarray]:
        free = graphs.cut(original, [o.name for o in original.graph.output], (), image_inputs, layouts=layouts)
        return run_once(free, feeds, "the original model with symbolic sizes", weights)

    noise = own_noise(expected, *([unoptimized] + ([symbolic] if image_inputs else [])))
    shape = next(iter(shapes.values()), ())
    steps = quantization_steps(original, weights)
    for name, layout in (origin or {}).items():
        value = actual[name]
        if value.ndim > 2:
            corner = (0,) * (value.ndim - 2)
            actual[name] = value[(slice(None),) + corner] if layout == CHANNELS_LAST else \
                value[(slice(None), slice(None)) + corner]
    return [compare(name, "training size", expected[name], actual[name], shape, 1, step=steps.get(name, 0.0),
                    noise=noise(name)) for name in expected if name not in per_location]


Progress = Callable[[int, int], None]


def window_check_shapes(original: onnx.ModelProto, plan: Plan, geometries: Sequence[HeadGeometry],
                        size: Optional[Sequence[int]] = None) -> Dict[str, Tuple[int, ...]]:
    """Input shapes for the window check: `size` (spatial) or, by default, a few strides larger than
    the training size on every axis (see `geometry.default_validation_size`)."""
    shapes = dict(training_shapes(original))
    for name in plan.trunk_inputs:
        layout = plan.input_layout(name)
        training = spatial_dims(shapes[name], layout)
        if size is None:
            known = [g for g in map(trunk_geometry, geometries) if isinstance(g, Geometry) and g.input == name]
            widest = max(known, key=lambda g: prod(g.stride), default=None)
            spatial = default_validation_size(widest, training)
        else:
            spatial = tuple(size) if len(size) > 1 else tuple(size) * len(training)
            if len(spatial) != len(training):
                raise InputError(f"size {'x'.join(map(str, size))} has {len(spatial)} axes; input '{name}' has "
                                 f"{len(training)} spatial axes ({'x'.join(map(str, training))} at training size)")
            if any(s < t for s, t in zip(spatial, training)):
                raise InputError(f"size {'x'.join(map(str, spatial))} is smaller than input '{name}''s training "
                                 f"size {'x'.join(map(str, training))}")
            for geometry in map(trunk_geometry, geometries):
                if isinstance(geometry, Geometry) and geometry.input == name and not geometry.accepts(spatial):
                    raise InputError(f"size {'x'.join(map(str, spatial))} is not one the trunk takes (its joined "
                                     f"branches would disagree): it takes {geometry.sizes_taken()}, e.g. "
                                     f"{'x'.join(map(str, geometry.nearest_taken(spatial)))}")
        shapes[name] = with_spatial(shapes[name], layout, spatial)
        image = next(v for v in original.graph.input if v.name == name)
        size_bytes = prod(shapes[name]) * (nbytes_per_element(image.type.tensor_type.elem_type) or 1)
        if size_bytes > MAX_INPUT_BYTES:
            raise InputError(f"the window check's input {list(shapes[name])} would take {size_bytes / 2**30:.3g} GiB "
                             f"(at most {MAX_INPUT_BYTES >> 30} GiB); give a smaller --validate-size")
    return shapes


def sample_locations(grid: Tuple[int, ...], limit: int, rng: np.random.Generator) -> Tuple[np.ndarray, str]:
    """Flat indices of the grid cells to compare: all of them, or a seeded sample plus every corner."""
    total = prod(grid)
    if total <= limit:
        return np.arange(total), ""
    corners = {int(np.ravel_multi_index(c, grid)) for c in itertools.product(*((0, g - 1) for g in grid))}
    rest = np.setdiff1d(np.arange(total), sorted(corners))
    chosen = rng.choice(rest, size=max(limit - len(corners), 0), replace=False)
    picked = np.sort(np.concatenate([np.array(sorted(corners)), chosen]))
    return picked, (f"a seeded sample of {picked.size} of {total} locations, all {len(corners)} corners "
                    "included")


class _Head:
    """The original head, cut at its source, run on many feature windows: batched when it allows it."""

    def __init__(self, original: onnx.ModelProto, source: str, outputs: Sequence[str],
                 weights: Optional[Weights] = None, any_size: bool = False, optimization: Optional[str] = None
                 ) -> None:
        self.source, self.outputs = source, list(outputs)
        cut = graphs.cut(original, outputs, [source], [source], batch_only=not any_size)
        self.what = f"the original head after '{source}'"
        self.session = open_session(cut, weights, self.what, original=True, optimization=optimization)
        self.one_per_call = False  # set when the head turns out not to take batches
        self.verified = False  # one batch has been checked against its first window run alone

    def run(self, crops: np.ndarray, per_window: int) -> List[np.ndarray]:
        """Outputs for `crops` ([B * per_window, C, *window]), each as [B * per_window, features]."""
        session = self.session
        if not self.one_per_call and crops.shape[0] > per_window:
            try:
                values = session.run(self.outputs, {self.source: crops})
                if not self.verified:
                    alone = session.run(self.outputs, {self.source: crops[:per_window]})
                    # A head that mixes windows (it bakes in its batch) is far off, not a rounding apart.
                    self.verified = all(compare("", "", a, v[:per_window], (), 1).passed
                                        for v, a in zip(values, alone))
                if self.verified:
                    return [v.reshape(v.shape[0], -1) for v in values]
            except Exception:  # the head bakes in its batch size (e.g. Reshape [1, -1]): one window per call
                pass
            logger.info("the head of '%s' does not take windows in batches; running one per call", self.source)
            self.one_per_call = True
        try:
            parts = [session.run(self.outputs, {self.source: crops[i:i + per_window]})
                     for i in range(0, crops.shape[0], per_window)]
        except Exception as error:
            raise failure(error, f"{self.what} on a feature window", original=True) from None
        return [np.concatenate([p[k].reshape(p[k].shape[0], -1) for p in parts]) for k in range(len(self.outputs))]


def crop_and_forward(head: _Head, features: np.ndarray, window: Tuple[int, ...], grid: Tuple[int, ...],
                     locations: np.ndarray, progress: Optional[Progress] = None,
                     batch_bytes: int = BATCH_BYTES, step: Optional[Tuple[int, ...]] = None) -> List[np.ndarray]:
    """The head on the feature window at each location: one [N, features, len(locations)] array per output.
    With `step`, a window takes every step-th cell of a denser map (`--stride`)."""
    step = step or (1,) * len(window)
    n = features.shape[0]
    crop_bytes = features.dtype.itemsize * n * features.shape[1] * prod(window)
    batch = max(1, batch_bytes // crop_bytes)
    results: List[List[np.ndarray]] = [[] for _ in head.outputs]
    positions = np.stack(np.unravel_index(locations, grid), axis=1) if len(locations) else np.empty((0, len(grid)))
    for begin in range(0, len(positions), batch):
        chunk = positions[begin:begin + batch]
        crops = np.concatenate([features[(slice(None), slice(None)) + tuple(slice(p, p + (w - 1) * d + 1, d)
                                                                           for p, w, d in zip(pos, window, step))]
                                for pos in chunk])
        for k, value in enumerate(head.run(np.ascontiguousarray(crops), n)):
            results[k].append(value.reshape(len(chunk), n, -1).transpose(1, 2, 0))
        if progress is not None:
            progress(begin + len(chunk), len(positions))
    return [np.concatenate(parts, axis=2) for parts in results]


def check_windows(original: onnx.ModelProto, converted: onnx.ModelProto, plan: Plan,
                  geometries: Sequence[HeadGeometry] = (), *, size: Optional[Sequence[int]] = None, seed: int = 0,
                  max_locations: Optional[int] = None, progress: Optional[Progress] = None,
                  weights: Optional[Weights] = None, converted_weights: Optional[Weights] = None,
                  converted_session: Optional[Union[Session, ConvertedRuns]] = None) -> List[OutputCheck]:
    """Converted model vs crop-and-forward on the original, at the locations of a larger input.

    The original is cut at each head's source: its trunk runs once on the larger input, its head on the
    training-size feature windows (batched); each result must equal the converted model's output at
    that window's location. `original` must carry inferred shapes (the cuts need the tensors' types).
    `weights` hold the original's external tensors, `converted_weights` (default: the same) the converted's.
    """
    geometries = tuple(geometries) or (Unknown("not computed"),) * len(plan.heads)
    shapes = window_check_shapes(original, plan, geometries, size)
    rng = np.random.default_rng(seed + 1)
    feeds = random_feeds(original, shapes, rng)
    input_shape = shapes[plan.trunk_inputs[0]]
    actual = _run_converted(converted_session or converted, feeds,
                            f"the converted model at input size {list(input_shape)}", converted_weights or weights)
    checks = []
    steps = quantization_steps(original, weights)

    def group(head: HeadPlan) -> Tuple[str, Tuple[int, ...], bool]:  # heads checked together
        return head.source, head.window, head.slides

    for source, window, slides in dict.fromkeys(map(group, plan.heads)):
        heads = [i for i, h in enumerate(plan.heads) if group(h) == (source, window, slides)]
        outputs = [o for i in heads for o in plan.heads[i].outputs]
        trunk = graphs.cut(original, [source], (), plan.trunk_inputs, layouts=plan.input_layouts)
        what, trunk_weights = f"the original trunk up to '{source}'", weights
        features = run_once(trunk, feeds, what, weights, original=True)[source]
        if not slides:  # a kept global pool: one cell, the original head on the whole (larger) feature map
            window = tuple(features.shape[2:])
        dilation = plan.densify.factor if plan.densify else (1,) * len(window)
        if plan.densify:  # the head reads the converted model's denser trunk, every `dilation` cells
            original_features = features
            trunk = graphs.cut(converted, [source], (), plan.trunk_inputs, layouts=plan.input_layouts)
            what, trunk_weights = f"the converted trunk up to '{source}'", converted_weights or weights
            features = run_once(trunk, feeds, what, trunk_weights)[source]
            checks += _check_phase_zero(outputs, original_features, features, dilation, input_shape)
        grid = tuple(f - (w - 1) * d for f, w, d in zip(features.shape[2:], window, dilation))
        checks += check_geometry(geometries[heads[0]], shapes, outputs, grid)
        locations, note = sample_locations(grid, max_locations or MAX_LOCATIONS, np.random.default_rng(seed + 2))
        if not slides:
            note = "global pool kept: the original head on the whole feature map"
        # The head takes other sizes than its training one for a kept pool (the whole larger map) and a
        # removed one (one location).
        trained = plan.heads[heads[0]].spatial_shape
        any_size = window != trained
        head = _Head(original, source, outputs, weights, any_size=any_size)
        expected = dict(zip(outputs, crop_and_forward(head, features, window, grid, locations, progress,
                                                       step=dilation)))

        def rerun() -> Dict[str, np.ndarray]:  # the same references, computed with optimizations off
            unoptimized = open_session(trunk, trunk_weights, what, optimization=OFF)
            features_off = run_once(unoptimized, feeds, what)[source]
            head_off = _Head(original, source, outputs, weights, any_size=any_size, optimization=OFF)
            return dict(zip(outputs, crop_and_forward(head_off, features_off, window, grid, locations,
                                                      step=dilation)))

        noise = own_noise(expected, rerun)
        layouts = {o: plan.heads[i].output_layouts[o] for i in heads for o in plan.heads[i].outputs}
        for name, reference in expected.items():
            value = actual[name]
            if layouts[name] == CHANNELS_LAST and value.ndim > 2:
                value = np.moveaxis(value, -1, 1)  # compare as [N, K, *spatial]
            if value.shape[2:] != grid:
                checks.append(OutputCheck(name, "windows", input_shape, len(locations), float("inf"),
                                          float("inf"), 0.0, False, f"output grid {list(value.shape[2:])}, "
                                          f"expected {list(grid)} (one cell per feature window)"))
                continue
            candidate = value.reshape(value.shape[:2] + (-1,))[:, :, locations]
            checks.append(compare(name, "windows", reference.reshape(candidate.shape), candidate, input_shape,
                                  len(locations), note, step=steps.get(name, 0.0), noise=noise(name)))
    return checks


def _check_phase_zero(outputs: Sequence[str], original: np.ndarray, dense: np.ndarray, dilation: Tuple[int, ...],
                      input_shape: Tuple[int, ...]) -> List[OutputCheck]:
    """The denser trunk's every `dilation`-th cell, from the first, is the original trunk's feature map (the
    polyphase identity, padding included)."""
    sampled = dense[(slice(None), slice(None)) + tuple(slice(0, f * d, d) for f, d in
                                                       zip(original.shape[2:], dilation))]
    if sampled.shape != original.shape:
        return [OutputCheck(name, "denser trunk", input_shape, 0, float("inf"), float("inf"), 0.0, False,
                            f"the denser map {list(dense.shape)} does not hold the original {list(original.shape)} "
                            f"every {list(dilation)} cells") for name in outputs]
    return [compare(name, "denser trunk", original, sampled, input_shape, prod(original.shape[2:]),
                    "every cell of the original feature map, from the denser one") for name in outputs]


def check_geometry(geometry: HeadGeometry, shapes: Mapping[str, Tuple[int, ...]], outputs: Sequence[str],
                    grid: Tuple[int, ...]) -> List[OutputCheck]:
    """The grid the geometry predicts from the graph against the one a run gives. (At the training size
    the run gives one cell, which the training-size check enforces; the default window-check size is
    not the training size plus whole strides, so the size rules' rounding is exercised too.)"""
    if not isinstance(geometry, Geometry):
        return []
    input_shape = shapes[geometry.input]
    predicted = geometry.grid(geometry.input_spatial(input_shape))
    passed = predicted == grid
    detail = (f"{'x'.join(map(str, grid))} grid as predicted" if passed else
              f"the geometry predicts a {list(predicted)} grid, a run gives {list(grid)}; please report this model")
    return [OutputCheck(name, "geometry", input_shape, prod(grid), 0.0, 0.0, 0.0, passed, detail)
            for name in outputs]


def with_logits(plan: Plan, converted: onnx.ModelProto) -> Tuple[Plan, Dict[str, str]]:
    """`plan` with each head's last linear layer's output checked as an output too, when ops follow it (an
    activation, a Softmax) and `converted` still computes a tensor of that name: on random inputs a trained
    model's Sigmoid or Softmax often saturates, where a wrong kernel changes nothing the outputs show
    (measured: the ring classifier's scores all below 2e-7). Also the added name -> the output it comes before."""
    computed = {name for node in converted.graph.node for name in node.output}
    heads, before = [], {}
    for head in plan.heads:
        last = head.linears[-1] if isinstance(head, HeadPlan) and head.linears else None
        if last is None or last.output in head.outputs or last.output not in computed or \
                any(f != FLAT for f in head.output_forms.values()):
            heads.append(head)
            continue
        before[last.output] = head.outputs[0]
        heads.append(replace(head, outputs=head.outputs + (last.output,),
                             output_layouts={**head.output_layouts, last.output: CHANNELS_FIRST},
                             output_forms={**head.output_forms, last.output: FLAT}))
    return replace(plan, heads=tuple(heads)), before


def require_passed(checks: Sequence[OutputCheck]) -> None:
    """Raise ValidationError naming the first failed check."""
    for check in checks:
        if not check.passed:
            what = f"the logits '{check.output}' before output '{check.before}'" if check.before else \
                f"output '{check.output}'"
            if check.max_abs > check.tolerance:
                detail = (f"max abs error {check.max_abs:.3g} > tolerance {check.tolerance:.3g} (relative "
                          f"{check.max_rel:.3g}{check.noise_note})" + (f" - {check.detail}" if check.detail else ""))
            else:
                detail = check.detail
            raise ValidationError(f"{what} of the converted model differs from the original ({check.check}, input "
                                  f"{list(check.input_shape)}): {detail}; nothing was written")


def validate(original: onnx.ModelProto, converted: onnx.ModelProto, plan: Plan,
             geometries: Sequence[HeadGeometry] = (), options: Options = Options(), *,
             progress: Optional[Progress] = None, window_reference: Optional[onnx.ModelProto] = None,
             weights: Optional[Weights] = None, converted_weights: Optional[Weights] = None) -> List[OutputCheck]:
    """Run the checks `options` ask for; raise ValidationError on the first failure, else return the figures.

    `options.window_size` is the spatial input size of the window check (default: a few strides larger than
    the training size), `options.windows` False skips that check, `options.seed` seeds the inputs. The
    window check cuts `window_reference` (the normalized original, when normalizing changed the trunk's ops)
    or else `original`. `weights` hold the original's external tensors, `converted_weights` (default: the
    same) the converted's.
    """
    seed, size, windows = options.seed, options.window_size, options.windows
    checked, before = with_logits(plan, converted)
    original, probe = graphs.with_outputs(original, before), graphs.with_outputs(converted, before)
    window_reference = window_reference and graphs.with_outputs(window_reference, before)
    per_location = [o for h in checked.heads if h.window != h.spatial_shape for o in h.outputs]
    origin = {o: h.output_layouts[o] for h in checked.heads for o in h.outputs} if plan.densify else None
    # One session of the converted model (and one with its logits as outputs) serves every check: its input
    # sizes are free.
    converted_weights = converted_weights or weights
    runner = ConvertedRuns(open_session(converted, converted_weights, "the converted model"),
                           open_session(probe, converted_weights, "the converted model") if before else None)

    def labelled(checks: List[OutputCheck]) -> List[OutputCheck]:  # the logits' checks say so; no geometry
        return [replace(c, before=before[c.output]) if c.output in before else c for c in checks
                if not (c.output in before and c.check == "geometry")]

    checks = labelled(check_training_size(original, runner, seed=seed, weights=weights, per_location=per_location,
                                          origin=origin, image_inputs=plan.trunk_inputs, layouts=plan.input_layouts))
    require_passed(checks)
    sizes: List[Optional[Sequence[int]]] = []
    if plan.trunk_inputs and per_location:  # heads that give a map at the training size: checked there too
        image = plan.trunk_inputs[0]
        sizes.append(tuple(spatial_dims(training_shapes(original)[image], plan.input_layout(image))))
    if plan.trunk_inputs and windows and (size is None or tuple(size) not in sizes):
        sizes.append(size)
    from .map_check import check_map_cells, without_maps  # map_check reads this module's checks

    cut = without_maps(checked, geometries)
    for spatial in sizes:
        if cut[0].heads:
            checks += labelled(check_windows(window_reference or original, converted, cut[0], cut[1], size=spatial,
                                             seed=seed, progress=progress, weights=weights,
                                             converted_weights=converted_weights, converted_session=runner))
        checks += check_map_cells(original, runner.written, plan, geometries, spatial, seed, weights)
        require_passed(checks)
    for check in checks:
        logger.info("%s", check.describe())
    return checks

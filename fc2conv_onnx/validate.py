"""Prove the conversion with onnxruntime: nothing is written unless these checks pass.

Two checks, on seeded random inputs:
- training size: the original and the converted model give the same outputs ([N, K] vs [N, K, 1, ...]);
- windows: on a larger input, the original model is cut at each head's source tensor into a trunk and a
  head; the trunk runs once, the head runs on every training-size window of the feature map ("crop and
  forward"), and each result must equal the converted model's output at that window's location.

onnxruntime is imported here only, when a check runs, so importing the package stays light.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .errors import ValidationError, first_line
from .plan import Plan
from .shapes import clear_inferred_shapes, export_like, free_input_dims

logger = logging.getLogger(__name__)

#: (rtol, atol) by output dtype. The error bound is atol + rtol * max|reference|: a Conv sums in another
#: order than a Gemm, so agreement is judged against the output's scale, not element by element.
TOLERANCES: Dict[np.dtype, Tuple[float, float]] = {
    np.dtype(np.float64): (1e-9, 1e-12),
    np.dtype(np.float32): (1e-4, 1e-5),
    np.dtype(np.float16): (1e-2, 1e-3),
}
#: Each spatial input dim is multiplied by this for the window check.
DEFAULT_WINDOW_SCALE = 2


@dataclass(frozen=True)
class OutputCheck:
    output: str
    check: str  # "training size" or "windows"
    input_shape: Tuple[int, ...]
    locations: int
    max_abs: float
    max_rel: float
    tolerance: float
    passed: bool
    detail: str = ""

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        where = f"{self.locations} location(s), input {list(self.input_shape)}"
        text = (f"{self.output}: {self.check}, {where}: max abs error {self.max_abs:.3g}, "
                f"relative {self.max_rel:.3g} (tolerance {self.tolerance:.3g}) {verdict}")
        return text + (f" - {self.detail}" if self.detail else "")

    def to_dict(self) -> dict:
        return asdict(self)


def _ort():
    import onnxruntime

    return onnxruntime


def _session(model: onnx.ModelProto):
    ort = _ort()
    options = ort.SessionOptions()
    # Optimizations off: we check the graph as written, not what the runtime fuses it into.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], what: str) -> Dict[str, np.ndarray]:
    try:
        session = _session(model)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, dict(feeds))))
    except Exception as error:
        raise ValidationError(f"{what} does not run in onnxruntime: {first_line(error)}") from None


def training_shapes(model: onnx.ModelProto) -> Dict[str, Tuple[int, ...]]:
    """Input shapes at the training size: declared static dims; a symbolic batch is taken as 2."""
    initializers = {i.name for i in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = []
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                dims.append(dim.dim_value)
            elif axis == 0:
                dims.append(2)
            else:
                raise ValidationError(f"input '{value.name}' has a symbolic dim at axis {axis}; the training "
                                      "size must be fixed in the original model to validate against it")
        shapes[value.name] = tuple(dims)
    return shapes


def random_feeds(model: onnx.ModelProto, shapes: Mapping[str, Tuple[int, ...]],
                 rng: np.random.Generator) -> Dict[str, np.ndarray]:
    feeds = {}
    for value in model.graph.input:
        if value.name not in shapes:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = shapes[value.name]
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[value.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds


def compare(output: str, check: str, reference: np.ndarray, candidate: np.ndarray,
            input_shape: Tuple[int, ...], locations: int) -> OutputCheck:
    """Compare one output; the candidate may carry trailing size-1 spatial axes ([N, K] vs [N, K, 1, 1])."""
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
    tolerance = atol + rtol * scale
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = same_nan and max_abs <= tolerance
    return OutputCheck(output, check, input_shape, locations, max_abs, max_rel, tolerance, passed,
                       "" if same_nan else "NaN in different places")


def check_training_size(original: onnx.ModelProto, converted: onnx.ModelProto, *,
                        seed: int = 0) -> List[OutputCheck]:
    """Original vs converted at the training size, every graph output."""
    shapes = training_shapes(original)
    feeds = random_feeds(original, shapes, np.random.default_rng(seed))
    expected = _run(original, feeds, "the original model")
    actual = _run(converted, feeds, "the converted model")
    shape = next(iter(shapes.values()), ())
    return [compare(name, "training size", expected[name], actual[name], shape, 1) for name in expected]


def _cut(model: onnx.ModelProto, inputs: Sequence[str], outputs: Sequence[str],
         free_inputs: Sequence[str] = ()) -> onnx.ModelProto:
    """The part of `model` between the named tensors (a trunk when `free_inputs` makes sizes symbolic)."""
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    if inputs:
        graph.inputs = [tensors[name] for name in inputs]
    graph.outputs = [tensors[name] for name in outputs]
    if free_inputs:
        free_input_dims(graph, free_inputs)
        clear_inferred_shapes(graph)
    return export_like(graph.cleanup(), model)


def check_windows(original: onnx.ModelProto, converted: onnx.ModelProto, plan: Plan, *,
                  scale: int = DEFAULT_WINDOW_SCALE, seed: int = 0) -> List[OutputCheck]:
    """Converted model vs crop-and-forward on the original, at every location of a larger input.

    `original` must carry inferred shapes (the cut models need the source tensors' types).
    """
    shapes = dict(training_shapes(original))
    for name in plan.trunk_inputs:
        shape = shapes[name]
        shapes[name] = shape[:2] + tuple(d * scale for d in shape[2:])
    feeds = random_feeds(original, shapes, np.random.default_rng(seed + 1))
    actual = _run(converted, feeds, f"the converted model at input size {list(shapes[plan.trunk_inputs[0]])}")
    checks = []
    for source in dict.fromkeys(h.flattening.source for h in plan.heads):
        heads = [h for h in plan.heads if h.flattening.source == source]
        outputs = [o for h in heads for o in h.outputs]
        window = heads[0].flattening.spatial_shape
        trunk = _cut(original, (), [source], plan.trunk_inputs)
        features = _run(trunk, feeds, f"the original trunk up to '{source}'")[source]
        head_session = _session(_cut(original, [source], outputs))
        grid = tuple(f - w + 1 for f, w in zip(features.shape[2:], window))
        expected = {}
        for position in itertools.product(*(range(g) for g in grid)):
            crop = features[(slice(None), slice(None)) + tuple(slice(p, p + w) for p, w in zip(position, window))]
            for name, value in zip(outputs, head_session.run(outputs, {source: np.ascontiguousarray(crop)})):
                flat = value.reshape(value.shape[0], -1)
                expected.setdefault(name, np.empty(flat.shape + grid, flat.dtype))[(...,) + position] = flat
        input_shape, locations = shapes[plan.trunk_inputs[0]], int(np.prod(grid))
        for name in outputs:
            if actual[name].shape[2:] != grid:
                checks.append(OutputCheck(name, "windows", input_shape, locations, float("inf"), float("inf"),
                                          0.0, False, f"output grid {list(actual[name].shape[2:])}, "
                                          f"expected {list(grid)}"))
            else:
                checks.append(compare(name, "windows", expected[name], actual[name], input_shape, locations))
    return checks


def require_passed(checks: Sequence[OutputCheck]) -> None:
    """Raise ValidationError naming the first failed check."""
    for check in checks:
        if not check.passed:
            detail = check.detail or (f"max abs error {check.max_abs:.3g} > tolerance {check.tolerance:.3g} "
                                      f"(relative {check.max_rel:.3g})")
            raise ValidationError(f"output '{check.output}' of the converted model differs from the original "
                                  f"({check.check}, input {list(check.input_shape)}): {detail}; nothing was written")


def validate(original: onnx.ModelProto, converted: onnx.ModelProto, plan: Plan, *, seed: int = 0,
             windows: bool = True) -> List[OutputCheck]:
    """Run the checks; raise ValidationError on the first failure, else return the figures."""
    checks = check_training_size(original, converted, seed=seed)
    require_passed(checks)
    if windows and plan.trunk_inputs:
        checks += check_windows(original, converted, plan, seed=seed)
        require_passed(checks)
    for check in checks:
        logger.info("%s", check.describe())
    return checks

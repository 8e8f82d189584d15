"""Running a model held in memory in onnxruntime, for every stage that does (planning's shape probes,
validation, and maps of a model given as bytes or a ModelProto): sessions that run on the arrays `Weights`
holds, single runs and their feeds. The settings per use and the failures as one-line errors are `ort`'s."""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

from ..errors import InputError, ValidationError
from . import graphs, work
from .layout import parameter_inputs
from .ort import BASIC, CHECK, FULL, OFF, PICTURES, VALIDATION_HINT, failure, onnxruntime, session_options  # noqa: F401 (re-exported)
from .registry import fact
from .weights import Weights

logger = logging.getLogger(__name__)


#: Above this many serialized bytes, sessions use basic optimizations only (see `session`).
HEAVY_MODEL_BYTES = 64 << 20


class Session:
    """An onnxruntime session on `model`, whose large tensors are fed as inputs from `weights`: onnxruntime
    runs on the arrays `weights` holds (one copy, shared by every session), reads no file and gets no
    serialized copy of them. `run`, `get_inputs` and `get_outputs` are onnxruntime's, without those inputs.
    `use` (CHECK or PICTURES) sets memory and threads for how it will be run; `optimization` (FULL, BASIC or
    OFF) overrides the graph optimization chosen below."""

    def __init__(self, model: onnx.ModelProto, weights: Optional[Weights] = None, use: str = CHECK,
                 threads: Optional[int] = None, optimization: Optional[str] = None) -> None:
        work.count(work.SESSIONS)
        ort = onnxruntime()
        weights = weights or Weights()
        # The models are checked as users run them, optimized: fully for light models, basic for weight-heavy
        # ones, whose full optimization costs seconds at load time for the one or two runs a check makes.
        # (Transforms that rewrite weights, such as NCHWc convolutions, cannot apply: here the weights are
        # inputs.) tests/equivalence.py runs with optimizations off, so that way is covered too.
        # A QDQ model is run as written (basic level: no fusion into integer kernels), so it computes the exact
        # arithmetic it specifies: original and converted then agree to float rounding. Full optimization
        # fuses Gemm and Conv into different integer kernels that round differently (measured: up to 4
        # quantization steps apart on the QDQ fixtures).
        light = weights.embedded_size(model) < HEAVY_MODEL_BYTES and not is_quantized(model)
        options = session_options(use, optimization or (FULL if light else BASIC), threads=threads)
        if use == PICTURES:
            # The weights as initializers onnxruntime is handed from memory (not copied from a file): it can
            # pre-pack them for its kernels, as when it loads the file itself (measured: 0.99x a hand loop's
            # time per frame, against 1.3x with the weights fed as inputs; docs/speed.md).
            runnable = model
            self.weight_feeds: Dict[str, np.ndarray] = {}
            self._held = weights.external_arrays(model)
            options.add_external_initializers(list(self._held), [ort.OrtValue.ortvalue_from_numpy(a)
                                                                 for a in self._held.values()])
        else:
            runnable, self.weight_feeds = weights.as_inputs(model)
        self.inner = ort.InferenceSession(runnable.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._inputs = [i for i in self.inner.get_inputs() if i.name not in self.weight_feeds]

    def get_inputs(self) -> list:
        return self._inputs

    def get_outputs(self) -> list:
        return self.inner.get_outputs()

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> List[np.ndarray]:
        return self.inner.run(list(names), {**feeds, **self.weight_feeds})


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(fact(node, "quantization") for node in model.graph.node)


def open_session(model: onnx.ModelProto, weights: Optional[Weights], what: str, original: bool = False,
                 hint: str = VALIDATION_HINT, use: str = CHECK, threads: Optional[int] = None,
                 optimization: Optional[str] = None) -> Session:
    """A `Session` on `model` for `use` (with `threads` and `optimization`, see `Session`), or the one-line
    error of `failure`."""
    try:
        return Session(model, weights, use, threads, optimization)
    except Exception as error:
        raise failure(error, what, original, hint) from None


# --- feeds and single runs ------------------------------------------------------------------------------

def run_once(model: Union[onnx.ModelProto, Session], feeds: Mapping[str, np.ndarray], what: str,
             weights: Optional[Weights] = None, original: bool = False) -> Dict[str, np.ndarray]:
    """Run `model` (or a session made for it) once on `feeds`; a failure is the original's fault (`original`:
    InputError), the conversion's (ValidationError), or the machine's (ResourceError, when memory runs out)."""
    try:
        runner = model if isinstance(model, Session) else Session(model, weights)
        names = [o.name for o in runner.get_outputs()]
        wanted = {i.name for i in runner.get_inputs()}
        return dict(zip(names, runner.run(names, {k: v for k, v in feeds.items() if k in wanted})))
    except Exception as error:
        raise failure(error, what, original) from None


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


def observed_shapes(model: onnx.ModelProto, names: Sequence[str],
                    weights: Optional[Weights] = None) -> Dict[str, Tuple[int, ...]]:
    """The shapes the named tensors take when onnxruntime runs `model` once at its training size (batch 2 if
    symbolic): for sizes that shape inference cannot follow through an exporter's shape arithmetic (timm's
    TensorFlow-style "same" padding: Shape -> Gather -> Cast -> Div -> Ceil -> ... -> Pad). Empty when the
    model does not run there."""
    probe = graphs.with_outputs(model, names)
    try:
        shapes = training_shapes(model)
        values = run_once(probe, random_feeds(model, shapes, np.random.default_rng(0)), "the model", weights)
    except (ValidationError, InputError) as error:
        logger.debug("no shapes observed: %s", error)
        return {}
    return {name: tuple(values[name].shape) for name in names if name in values}


def random_feeds(model: onnx.ModelProto, shapes: Mapping[str, Tuple[int, ...]],
                 rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Seeded random inputs of `shapes` for `model`'s inputs."""
    feeds = {}
    held = parameter_inputs([(name, shape) for name, shape in shapes.items()])
    for value in model.graph.input:
        if value.name not in shapes:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = shapes[value.name]
        if np.issubdtype(dtype, np.floating):  # uniform in [-2, 2): cheap to draw for large frames
            values = rng.random(shape, dtype=np.float32 if dtype != np.float64 else np.float64)
            if value.name in held:  # a per-channel parameter (a variance, maybe): positive
                feeds[value.name] = (values + 0.5).astype(dtype, copy=False)
                continue
            feeds[value.name] = (values * 4 - 2).astype(dtype, copy=False)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[value.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds

"""Running a model in onnxruntime, for every stage that does (planning's shape probes, validation, maps and
detection): sessions that run on the arrays `Weights` holds, and onnxruntime's failures as this tool's
one-line errors. onnxruntime is imported here only, when a session is first made, so importing the package
stays light."""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence

import numpy as np
import onnx

from ..errors import Fc2ConvError, InputError, ResourceError, ValidationError, runtime_message
from .registry import fact
from .weights import Weights


def _ort():
    import onnxruntime

    # Its log lines (coloured, on stderr) would reach users of a successful run; its messages reach them
    # through our errors instead (errors.runtime_message).
    onnxruntime.set_default_logger_severity(4)
    return onnxruntime


#: Above this many serialized bytes, sessions use basic optimizations only (see `session`).
HEAVY_MODEL_BYTES = 64 << 20


class Session:
    """An onnxruntime session on `model`, whose large tensors are fed as inputs from `weights`: onnxruntime
    runs on the arrays `weights` holds (one copy, shared by every session), reads no file and gets no
    serialized copy of them. `run`, `get_inputs` and `get_outputs` are onnxruntime's, without those inputs."""

    def __init__(self, model: onnx.ModelProto, weights: Optional[Weights] = None) -> None:
        ort = _ort()
        weights = weights or Weights()
        options = ort.SessionOptions()
        # The models are checked as users run them, optimized: fully for light models, basic for weight-heavy
        # ones, whose full optimization costs seconds at load time for the one or two runs a check makes.
        # (Transforms that rewrite weights, such as NCHWc convolutions, cannot apply: here the weights are
        # inputs.) tests/equivalence.py runs with optimizations off, so that way is covered too.
        # A QDQ model is run as written (basic level: no fusion into integer kernels), so it computes the exact
        # arithmetic it specifies: original and converted then agree to float rounding. Full optimization
        # fuses Gemm and Conv into different integer kernels that round differently (measured: up to 4
        # quantization steps apart on the QDQ fixtures).
        light = weights.embedded_size(model) < HEAVY_MODEL_BYTES and not is_quantized(model)
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if light else
                                            ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
        options.log_severity_level = 4
        options.enable_cpu_mem_arena = False
        # Sessions run one after another: a session's threads spin-waiting after its run would take a core
        # from the next one (measured: 30-50 ms each time, see the project's benchmarking notes).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


#: What to try when validation runs out of memory.
VALIDATION_HINT = "try a smaller --validate-size"


def open_session(model: onnx.ModelProto, weights: Optional[Weights], what: str, original: bool = False,
                 hint: str = VALIDATION_HINT) -> Session:
    """A `Session` on `model`, or the one-line error of `failure`."""
    try:
        return Session(model, weights)
    except Exception as error:
        raise failure(error, what, original, hint) from None


#: onnxruntime's words for an allocation that failed (a thread it could not start included: ENOMEM's text).
_OUT_OF_MEMORY = ("bad_alloc", "failed to allocate", "out of memory", "bad allocation", "cannot allocate memory",
                  "failed to map segment")  # the last: its library could not be loaded


def failure(error: Exception, what: str, original: bool, hint: str = VALIDATION_HINT) -> Fc2ConvError:
    """The one-line error for `what` failing in onnxruntime: out of memory (ResourceError, with `hint`: what
    the command's user can try), the input's fault (`original`: InputError, nothing can be proven against it)
    or the conversion's (ValidationError)."""
    message = runtime_message(error)
    if isinstance(error, MemoryError) or any(words in message.lower() for words in _OUT_OF_MEMORY):
        return ResourceError(f"out of memory while running {what} ({message}); {hint}")
    return (InputError if original else ValidationError)(f"{what} does not run in onnxruntime: {message}")

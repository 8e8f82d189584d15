"""The choices a conversion takes, as one record: the Python API and the CLI pass an `Options` through the
pipeline instead of the same keyword arguments through every function. Every CLI flag is a field here with
the same name and meaning."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Union

from ..errors import InputError
from ..model.detections import DetectionSettings, overridden  # noqa: F401 (the API applies its keywords so)
from ..model.layout import AUTO, OUTPUT_LAYOUTS  # noqa: F401 (re-exported)
from ..model.sizes import Size, Stride, parse_size, parse_stride_values

#: What becomes of a global pooling that starts a head (see `Options.pooling`); plan.MODES holds each one.
KEEP_POOL, WINDOW_POOL, NO_POOL = "keep", "window", "none"
POOLINGS = (KEEP_POOL, WINDOW_POOL, NO_POOL)

@dataclass(frozen=True)
class Options:
    """How to convert (and check) a model.

    Attributes:
        output_layout: "auto" (default: each head's outputs in the layout of its image input, so a tf2onnx
            model with an NHWC input gives [N, h, w, K]), "channels_first" ([N, K, h, w]) or
            "channels_last" ([N, h, w, K]).
        pooling: what becomes of a global pooling (GlobalAveragePool, ReduceMean over the spatial axes...)
            that starts a head: "keep" (default: it stays; one prediction per image at any size), "window" (a
            pool of the training feature size with stride 1: the classifier at every window), or "none"
            (removed: the head at every feature location, class activation maps). A head that cannot have
            the mode asked for is refused (exit 4), never converted to less.
        stride: a finer output stride than the trunk's (which it must divide by a power of two), e.g. 16
            for a stride-32 trunk: the last strides are lowered and later kernels dilated ("à trous"), so
            cells are `stride` pixels apart; validated at every finer cell. None keeps the trunk's stride.
        input_size: the training (spatial) size of a model exported with dynamic spatial dims, e.g. 224 or
            "224x224"; the heads are read, and validated, at that size. Must match a fixed size if given.
        validate: prove the result with onnxruntime (on by default); off leaves it unproven.
        validate_size: spatial input size of the window check, which compares every output location with
            the original head on that feature window: None for a few strides larger than the training
            size, e.g. (512, 1024) or "512x1024", or "off" for the training-size check only.
        seed: seed of the random validation inputs.
        emit_detections: None (default) or False: the model outputs its maps. True, or a
            `DetectionSettings`: nodes are appended that turn the map into detections at the input's scale
            (outputs `boxes` [M, 4], `scores`, `classes`, `batch_index` [M]; the maps stay), validated
            against `detect` at one scale.
        transpose: with emit_detections, the model reads pictures as W x H (MTCNN's ported nets; it is fed
            them transposed): the detector takes its regression's offsets in the picture's frame and gives its
            boxes there, as `detect --transpose` does.
    """

    output_layout: str = AUTO
    pooling: str = KEEP_POOL
    stride: Optional[Stride] = None
    input_size: Optional[Size] = None
    validate: bool = True
    validate_size: Optional[Size] = None
    seed: int = 0
    emit_detections: Union[None, bool, DetectionSettings] = None
    transpose: bool = False

    @classmethod
    def of(cls, options: Optional["Options"] = None, overrides: Optional[Mapping[str, Any]] = None) -> "Options":
        """`options` (default: the defaults) with `overrides` (keyword arguments of the API) applied, checked."""
        return overridden(options or cls(), overrides, "option").checked()

    def checked(self) -> "Options":
        if self.output_layout not in OUTPUT_LAYOUTS:
            raise InputError(f"output layout '{self.output_layout}' is not one of {', '.join(OUTPUT_LAYOUTS)}")
        if self.pooling not in POOLINGS:
            raise InputError(f"pooling '{self.pooling}' is not one of {', '.join(POOLINGS)}")
        if self.input_size is not None:
            parse_size(self.input_size, "input size")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed {self.seed!r} is not a non-negative integer")
        self.window_size  # parses it, or raises InputError
        if self.stride is not None:  # positive whole numbers; how many the model needs is checked with it
            parse_stride_values(self.stride)
        if not isinstance(self.emit_detections, (type(None), bool, DetectionSettings)):
            raise InputError(f"emit_detections {self.emit_detections!r} is not True, False or DetectionSettings")
        if not isinstance(self.transpose, bool):
            raise InputError(f"transpose {self.transpose!r} is not True or False")
        if self.transpose and not self.emit_detections:
            raise InputError("transpose sets the detector of emit_detections (its boxes in the picture's frame); "
                             "give emit_detections too")
        return self

    @property
    def detector(self) -> Optional[DetectionSettings]:
        """The detector to append, if any."""
        if isinstance(self.emit_detections, DetectionSettings):
            return self.emit_detections
        return DetectionSettings() if self.emit_detections else None

    @property
    def training_size(self) -> Optional[Tuple[int, ...]]:
        return None if self.input_size is None else parse_size(self.input_size, "input size")

    @property
    def windows(self) -> bool:
        """Whether the window check runs."""
        return not (isinstance(self.validate_size, str) and self.validate_size.strip().lower() == "off")

    @property
    def window_size(self) -> Optional[Tuple[int, ...]]:
        """The window check's spatial size, or None for the default."""
        if self.validate_size is None or not self.windows:
            return None
        return parse_size(self.validate_size)

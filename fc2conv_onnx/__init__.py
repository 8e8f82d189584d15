"""fc2conv-onnx: make an exported CNN classifier fully convolutional, proven equivalent with onnxruntime."""
from __future__ import annotations

from .version import __version__  # noqa: E402, F401

from .api import (Conversion, Detection, Detections, DetectionSettings, Heatmap, convert, convert_file,  # noqa: E402
                  convert_with_report, detect, heatmap, inspect, read_geometry, validate_pair, window_of)
from .errors import Fc2ConvError, InputError, NothingToConvertError, ResourceError, ValidationError  # noqa: E402
from .plan.options import Options  # noqa: E402
from .model.geometry import Box, Geometry  # noqa: E402
from .apps.pictures import Preprocessing  # noqa: E402
from .report import Report  # noqa: E402

__all__ = [
    "__version__", "convert", "convert_with_report", "convert_file", "inspect", "validate_pair",
    "read_geometry", "window_of", "heatmap", "detect", "Detection", "Detections", "DetectionSettings",
    "Conversion", "Report", "Geometry", "Box", "Heatmap", "Preprocessing",
    "Fc2ConvError", "InputError", "NothingToConvertError", "ValidationError", "ResourceError", "Options",
]

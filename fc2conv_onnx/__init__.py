"""fc2conv-onnx: make an exported CNN classifier fully convolutional, proven equivalent with onnxruntime."""
from __future__ import annotations

from .version import __version__  # noqa: E402, F401

from .api import (Conversion, Heatmap, convert, convert_file, convert_with_report, heatmap,  # noqa: E402
                  inspect, read_geometry, validate_pair, window_of)
from .errors import Fc2ConvError, InputError, NothingToConvertError, ResourceError, ValidationError  # noqa: E402
from .options import Options  # noqa: E402
from .geometry import Box, Geometry  # noqa: E402
from .pictures import Preprocessing  # noqa: E402
from .report import Report  # noqa: E402

__all__ = [
    "__version__", "convert", "convert_with_report", "convert_file", "inspect", "validate_pair",
    "read_geometry", "window_of", "heatmap", "Conversion", "Report", "Geometry", "Box", "Heatmap", "Preprocessing",
    "Fc2ConvError", "InputError", "NothingToConvertError", "ValidationError", "ResourceError", "Options",
]

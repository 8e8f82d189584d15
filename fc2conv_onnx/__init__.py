"""fc2conv-onnx: make an exported CNN classifier fully convolutional, proven equivalent with onnxruntime."""
from __future__ import annotations

__version__ = "0.1.0"

from .api import Conversion, convert, convert_file, convert_with_report, inspect  # noqa: E402
from .errors import Fc2ConvError, InputError, NothingToConvertError, ValidationError  # noqa: E402
from .report import Report  # noqa: E402

__all__ = [
    "__version__", "convert", "convert_with_report", "convert_file", "inspect", "Conversion", "Report",
    "Fc2ConvError", "InputError", "NothingToConvertError", "ValidationError",
]

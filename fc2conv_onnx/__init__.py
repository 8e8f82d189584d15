"""fc2conv-onnx: make an exported CNN classifier fully convolutional, proven equivalent with onnxruntime.

The public names are imported when first used: `detect`, `heatmap` and the command line's `--help` start
without onnx (about a second to import), which only the converter needs."""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .version import __version__

#: Public name -> the module that defines it.
_HOMES = {
    **dict.fromkeys(["convert", "convert_with_report", "convert_file", "inspect", "validate_pair", "read_geometry",
                     "window_of", "Conversion"], ".api"),
    "detect": ".apps.detecting", "Detections": ".apps.detecting", "Detector": ".apps.detector",
    "detect_video": ".apps.video_detect", "Sampling": ".apps.video", "frame_rows": ".apps.video",
    "heatmap": ".apps.heatmaps", "Heatmap": ".apps.heatmaps", "gap": ".apps.gap", "Gap": ".apps.gap",
    "Detection": ".model.detections", "DetectionSettings": ".model.detections",
    **dict.fromkeys(["Fc2ConvError", "InputError", "NothingToConvertError", "ValidationError", "ResourceError"],
                    ".errors"),
    "Options": ".plan.options", "Box": ".model.geometry", "Geometry": ".model.geometry",
    "Preprocessing": ".apps.preprocessing", "Report": ".report", "Stage": ".apps.cascade",
    "read_cascade": ".apps.cascade",
}

__all__ = ["__version__", *_HOMES]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name], __name__), name)
    globals()[name] = value  # found once; later reads do not come here
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_HOMES))

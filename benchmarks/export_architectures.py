"""Export real architectures (random weights) with their real exporters, for benchmarks/architectures.py.

    python benchmarks/export_architectures.py keras OUT   # needs tensorflow-cpu and tf2onnx ('.[exporters]')
    python benchmarks/export_architectures.py timm OUT    # needs timm ('.[exporters-timm]'): both torch exporters
    python benchmarks/export_architectures.py keras-torch OUT   # needs keras 3 and torch: Keras's own export
    python benchmarks/export_architectures.py timm OUT fbnetv3_b   # only the models named

Each model is written as OUT/<exporter>__<name>.onnx with a small JSON sidecar naming its training size; the
files are large (up to 0.5 GB for VGG16) and are not committed. Models whose export fails are listed in
OUT/export_failures.json with the exporter's message.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: Keras applications: name -> training input size (small where the architecture allows, to keep runs short).
KERAS = {"VGG16": 96, "ResNet50": 96, "MobileNetV2": 96, "MobileNetV3Small": 96, "EfficientNetB0": 96,
         "EfficientNetV2B0": 96, "DenseNet121": 96, "InceptionV3": 96, "ConvNeXtTiny": 96, "Xception": 96,
         "NASNetMobile": 96}
#: timm models: name -> training input size.
TIMM = {"resnet18": 96, "efficientnet_b0": 96, "mobilenetv3_small_100": 96, "ghostnet_100": 96,
        "convnext_atto": 96, "regnetx_002": 96, "densenet121": 96, "inception_v3": 128, "dla34": 96,
        "tf_efficientnet_b0": 96, "lcnet_050": 96, "vit_tiny_patch16_224": 224, "fbnetv3_b": 160}
#: Keras applications exported by Keras 3 itself on the torch backend (logits: no classifier activation).
KERAS_TORCH = {"ResNet50": 96, "EfficientNetB0": 96, "EfficientNetV2B0": 96, "MobileNet": 96, "MobileNetV3Small": 96}


def _export_each(out: Path, models: dict, only, exporter: str, export) -> None:
    """`export(name, size, path)` for each model (of `only`, if given) not exported yet, as OUT/<exporter>__<name>
    .onnx with its sidecar; a failure is recorded in OUT/export_failures.json, not fatal: the table lists it."""
    failures = {}
    for name, size in models.items():
        path = out / f"{exporter}__{name}.onnx"
        if path.exists() or (only and name not in only):
            continue
        try:
            _sidecar(path, size, export(name, size, path))
            print(f"wrote {path}", flush=True)
        except Exception as error:
            failures[path.name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            traceback.print_exc()
    _failures(out, failures)


def keras(out: Path, only=()) -> None:
    import tensorflow as tf
    import tf2onnx

    def export(name: str, size: int, path: Path) -> str:
        tf.keras.utils.set_random_seed(0)
        model = getattr(tf.keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10)
        spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="image"),)
        function = tf.function(lambda image: model(image, training=False))
        tf2onnx.convert.from_function(function, input_signature=spec, opset=17, output_path=str(path))
        return f"tf2onnx {tf2onnx.__version__}, tensorflow {tf.__version__}, opset 17"

    _export_each(out, KERAS, only, "tf2onnx", export)


def timm_models(out: Path, only=()) -> None:
    import timm
    import torch

    for dynamo in (False, True):
        def export(name: str, size: int, path: Path, dynamo: bool = dynamo) -> str:
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, num_classes=10).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (torch.randn(1, 3, size, size),), str(path), input_names=["image"],
                                  output_names=["scores"], opset_version=18 if dynamo else 17, dynamo=dynamo,
                                  **({"external_data": False} if dynamo else {}))
            return f"torch.onnx.export(dynamo={dynamo}), torch {torch.__version__}, timm {timm.__version__}"

        _export_each(out, TIMM, only, "dynamo" if dynamo else "torchscript", export)


def keras_torch(out: Path, only=()) -> None:
    os.environ["KERAS_BACKEND"] = "torch"
    import keras
    import numpy as np
    import torch

    def export(name: str, size: int, path: Path) -> str:
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10,
                                                  classifier_activation=None)
        model(np.zeros((1, size, size, 3), np.float32))  # Keras exports only a model that has been called
        model.export(str(path), format="onnx", verbose=False)
        return f"keras.Model.export(format='onnx'), keras {keras.__version__}, torch backend " \
               f"(torch {torch.__version__})"

    _export_each(out, KERAS_TORCH, only, "keras-torch", export)


def _sidecar(path: Path, size: int, made_by: str) -> None:
    path.with_suffix(".json").write_text(json.dumps({"size": size, "made_by": made_by}))


def _failures(out: Path, failures: dict) -> None:
    record = out / "export_failures.json"
    known = json.loads(record.read_text()) if record.exists() else {}
    known.update(failures)
    record.write_text(json.dumps(known, indent=2))


def main() -> None:
    which, out, only = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    out.mkdir(parents=True, exist_ok=True)
    {"keras": keras, "timm": timm_models, "keras-torch": keras_torch}[which](out, only)


if __name__ == "__main__":
    main()

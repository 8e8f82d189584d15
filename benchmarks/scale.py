"""Conversion of big models: time and peak memory against a plain onnx.load + onnx.save of the same file,
and a model over 2 GiB with external data converted and validated.

    python benchmarks/scale.py [--rounds 5] [--folder /tmp/fc2conv-scale] [--huge]

VGG16-sized classifier (13 convs, FC 25088 -> 4096 -> 4096 -> 1000, ~528 MiB float32, seeded random
weights), written once with embedded weights and once with external data. Each variant runs in a fresh
process, rounds interleaved with the order rotated each round; wall time and peak RSS (GNU time's %e and
%M) are measured per run, and medians and ratios against the round trip are printed:
  round trip          python -c "onnx.save(onnx.load(IN), OUT)"   (the reference of the targets)
  convert             fc2conv-onnx convert IN -o OUT --no-validate
  convert+validate    fc2conv-onnx convert IN -o OUT   (training size and window check; --rounds 1 of it)
Targets (issue 5): convert <= 1.2x the round trip's time and <= 1.0x its peak RSS.

--huge also builds a model whose FC weight alone is 2.2 GiB (external data, written sparsely: zeros but
for its first and last rows), converts it with validation and reports what was proved.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import onnx
from onnx import helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fixtures"))

from interleaved import interleaved  # noqa: E402

from builders import ModelBuilder  # noqa: E402

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16() -> onnx.ModelProto:
    """VGG16's shape: 224x224 input, 13 3x3 convs with ReLU and 5 max pools to 512x7x7, then FC 4096 -
    ReLU - Dropout - FC 4096 - ReLU - Dropout - FC 1000 - Softmax."""
    b = ModelBuilder(opset=13, seed=16)
    x, channels = b.input("data", [1, 3, 224, 224]), 3
    for layer in VGG16:
        if layer == "M":
            x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
            continue
        w = b.weight(b.fresh("conv_w"), (layer, channels, 3, 3))
        bias = b.weight(b.fresh("conv_b"), (layer,), fan_in=1)
        x = b.node("Relu", [b.node("Conv", [x, w, bias], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
        channels = layer
    y = b.node("Flatten", [x], axis=1)
    y = b.node("Dropout", [b.node("Relu", [b.gemm(y, 512 * 7 * 7, 4096, bias_shape=(4096,))])])
    y = b.node("Dropout", [b.node("Relu", [b.gemm(y, 4096, 4096, bias_shape=(4096,))])])
    b.node("Softmax", [b.gemm(y, 4096, 1000, bias_shape=(1000,))], b.output("prob", [1, 1000]), axis=1)
    return b.build("vgg16")


def write_models(folder: Path) -> Tuple[Path, Path]:
    embedded, external = folder / "vgg16.onnx", folder / "external" / "vgg16.onnx"
    if not embedded.exists() or not external.exists():
        model = vgg16()
        onnx.save(model, str(embedded))
        external.parent.mkdir(exist_ok=True)
        onnx.save(model, str(external), save_as_external_data=True, location="vgg16.onnx.data")
    return embedded, external


def measure(command: List[str]) -> Tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one fresh process, from GNU time (a child forked from this big
    process would count this process's pages in its own peak)."""
    process = subprocess.run(["/usr/bin/time", "-f", "%e %M"] + command, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}): {process.stderr.strip()}")
    wall, kib = process.stderr.strip().splitlines()[-1].split()
    return float(wall), int(kib) / 1024


def compare(name: str, model: Path, out: Path, rounds: int) -> None:
    python = sys.executable
    variants: Dict[str, List[str]] = {
        "round trip": [python, "-c", "import onnx, sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])",
                       str(model), str(out)],
        "convert": [python, "-m", "fc2conv_onnx", "convert", str(model), "-o", str(out), "--no-validate"],
    }
    if model.parent.name == "external":  # onnx.save writes embedded weights unless told; keep it fair
        variants["round trip"][2] = ("import onnx, sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2], "
                                     "save_as_external_data=True, location='out.data')")
    results = interleaved({key: (lambda command=command: measure(command)) for key, command in variants.items()},
                          rounds)
    validated = measure([python, "-m", "fc2conv_onnx", "convert", str(model), "-o", str(out)])
    size = sum(f.stat().st_size for f in model.parent.glob("vgg16.onnx*")) / 2**20
    base_time = statistics.median(t for t, _ in results["round trip"])
    base_rss = statistics.median(r for _, r in results["round trip"])
    print(f"\n{name}: {model} ({size:.0f} MiB on disk), {rounds} interleaved rounds, medians")
    print(f"| {'variant':<18} | {'wall s':>7} | {'peak RSS MiB':>12} | {'time ratio':>10} | {'RSS ratio':>9} |")
    print(f"|{'-' * 20}|{'-' * 9}|{'-' * 14}|{'-' * 12}|{'-' * 11}|")
    rows = [(key, statistics.median(t for t, _ in runs), statistics.median(r for _, r in runs))
            for key, runs in results.items()] + [("convert+validate", *validated)]
    for key, wall, rss in rows:
        print(f"| {key:<18} | {wall:7.2f} | {rss:12.0f} | {wall / base_time:9.2f}x | {rss / base_rss:8.2f}x |")


def write_huge(folder: Path, rows: int = 22000, features: int = 512 * 7 * 7) -> Path:
    """A small trunk to 512x7x7 and an FC of `rows` outputs: its weight is rows x 25088 float32 (2.06 GiB
    for 22000 rows) in external data, zero but for the first and last 8 rows (a sparse file)."""
    path = folder / "huge" / "huge.onnx"
    if path.exists():
        return path
    path.parent.mkdir(exist_ok=True)
    b = ModelBuilder(opset=13, seed=5)
    x = b.input("data", [1, 3, 28, 28])
    w = b.weight("conv_w", (512, 3, 4, 4))
    x = b.node("Relu", [b.node("Conv", [x, w], kernel_shape=[4, 4], strides=[4, 4])])
    y = b.node("Flatten", [x], axis=1)
    b.const("fc_b", np.linspace(-1, 1, rows, dtype=np.float32))
    b.nodes.append(helper.make_node("Gemm", [y, "fc_w", "fc_b"], ["score"], transB=1, name="fc"))
    b.outputs.append(helper.make_tensor_value_info("score", onnx.TensorProto.FLOAT, [1, rows]))
    graph = helper.make_graph(b.nodes, "huge", b.inputs, b.outputs, b.initializers)
    weight = onnx.TensorProto(name="fc_w", dims=[rows, features], data_type=onnx.TensorProto.FLOAT,
                              data_location=onnx.TensorProto.EXTERNAL)
    length = rows * features * 4
    for key, value in (("location", "huge.onnx.data"), ("offset", "0"), ("length", str(length))):
        weight.external_data.add(key=key, value=value)
    graph.initializer.append(weight)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    rng = np.random.default_rng(6)
    edge = (rng.standard_normal((8, features)) / np.sqrt(features)).astype(np.float32).tobytes()
    with open(path.parent / "huge.onnx.data", "wb") as data:
        data.write(edge)
        data.seek(length - len(edge))
        data.write(edge)
    path.write_bytes(model.SerializeToString())
    return path


def run_huge(folder: Path) -> None:
    path = write_huge(folder)
    out = folder / "huge" / "converted.onnx"
    command = ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "fc2conv_onnx", "convert", str(path),
               "-o", str(out), "--validate-size", "56x56"]
    process = subprocess.run(command, capture_output=True, text=True)
    print(f"\nover 2 GiB: {path} + huge.onnx.data ({(path.parent / 'huge.onnx.data').stat().st_size / 2**30:.2f} GiB)")
    print(process.stdout.strip())
    if process.returncode != 0:
        raise SystemExit(f"conversion failed ({process.returncode}): {process.stderr.strip()}")
    elapsed, peak = (float(v) for v in process.stderr.strip().splitlines()[-1].split())
    converted = onnx.load(str(out), load_external_data=False)
    kernel = next(t for t in converted.graph.initializer if list(t.dims)[2:] == [7, 7])
    location = {e.key: e.value for e in kernel.external_data}.get("location")
    print(f"converted in {elapsed:.1f} s with validation, peak RSS {peak / 1024:.0f} MiB; "
          f"kernel {list(kernel.dims)} stored in '{location}' "
          f"({(out.parent / str(location)).stat().st_size / 2**30:.2f} GiB)")
    print("proved: the 2.06 GiB model was read with only its head's weights loaded, converted, both run in "
          "onnxruntime on one copy of the weights fed as inputs (no temporary files), the outputs equal at the "
          "training size and at every location of a 56x56 input (the non-zero first and last rows are among the "
          "compared outputs), and it was written with its weights as external data next to it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/fc2conv-scale"))
    parser.add_argument("--huge", action="store_true", help="also convert a model over 2 GiB")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"onnx {onnx.__version__}, numpy {np.__version__}, {time.strftime('%Y-%m-%d')}")
    embedded, external = write_models(args.folder)
    compare("VGG16, embedded weights", embedded, args.folder / "out.onnx", args.rounds)
    compare("VGG16, external data", external, args.folder / "external" / "out.onnx", args.rounds)
    if args.huge:
        run_huge(args.folder)


if __name__ == "__main__":
    main()

"""One row per framework: the committed exporter fixtures beyond PyTorch and tf2onnx-from-Keras (paddle2onnx,
jax2onnx, Keras 3's own export on TensorFlow and torch, TFLite through tf2onnx, PaddleOCR's trained classifier),
each converted in every --pooling mode and proven by tests/equivalence.py, or refused with its reason.

    python benchmarks/frameworks.py [--write docs/architectures.md]

No exporter is needed: the fixtures are in fixtures/exported/ (made by fixtures/export_paddle.py, export_jax.py,
export_keras.py and export_keras_torch.py). With --write, the table replaces the section between the markers
in docs/architectures.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "fixtures"))

from architectures import head_pattern, replace_section  # noqa: E402
from test_frameworks import EXPORTED, FRAMEWORKS, MODES, prove_conversion  # noqa: E402

import fc2conv_onnx  # noqa: E402
from fc2conv_onnx import Fc2ConvError  # noqa: E402


def row(stem: str, made_by: str) -> str:
    modes, size, _ = FRAMEWORKS[stem]
    pattern, cells = "", []
    for mode in MODES:
        started = time.perf_counter()
        try:
            conversion = fc2conv_onnx.convert_with_report(EXPORTED / f"{stem}.onnx", pooling=mode,
                                                          input_size=None if size is None else "x".join(map(str, size)))
        except Fc2ConvError as error:
            cells.append(f"refused (exit {error.exit_code}): {error}")
            continue
        seconds = time.perf_counter() - started
        pattern = pattern or head_pattern(conversion.report)
        try:
            prove_conversion(stem, mode, conversion)
            cells.append(f"converts, proven ({seconds:.1f} s)")
        except AssertionError as error:
            cells.append(f"INDEPENDENT CHECK FAILED: {str(error).splitlines()[0][:160]}")
        print(f"{stem} {mode}: {cells[-1]}", flush=True)
    size_note = f" (trained at {'x'.join(map(str, size))})" if size else ""
    cells = [f"`{stem}`{size_note}", made_by, pattern or "-"] + [c.replace("|", "/") for c in cells]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="replace the frameworks section of this markdown file")
    args = parser.parse_args()
    manifest = json.loads((EXPORTED / "MANIFEST.json").read_text())
    lines = ["| fixture | made by | head (as read) | keep | window | none |", "|---|---|---|---|---|---|"]
    lines += [row(stem, manifest[f"{stem}.onnx"]["made_by"]) for stem in FRAMEWORKS]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section(args.write, "frameworks", text)


if __name__ == "__main__":
    main()

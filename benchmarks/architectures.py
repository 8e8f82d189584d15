"""Which real architectures convert, in which --pooling mode, and why not: the table in docs/architectures.md.

    python benchmarks/export_architectures.py keras /tmp/arch    # in an environment with the exporters
    python benchmarks/export_architectures.py timm /tmp/arch
    python benchmarks/architectures.py /tmp/arch [--write docs/architectures.md]

Each exported model is converted in every mode (the package's own validation runs), and every conversion
is then proven again by tests/equivalence.py, which shares no code with the package: at the training size,
and at the larger size the package's window check used (crop-and-forward at every cell; for `keep`, the one
prediction against the original head on the whole larger map). A refusal is listed with its reason.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fc2conv_onnx  # noqa: E402
from fc2conv_onnx import Fc2ConvError  # noqa: E402

from equivalence import (  # noqa: E402
    assert_equivalent,
    assert_one_prediction,
    identity_reshapes_dropped,
    input_shape,
    random_input,
    run,
    with_channels_first_view,
)

MODES = ("keep", "window", "none")


def head_pattern(report) -> str:
    """The head as the grammar read it: 'GlobalAveragePool -> Conv -> HardSwish -> Flatten -> Gemm'."""
    head = report.plan.heads[0]
    start = [head.pool.op] if head.pool else [head.flattening.op, head.first.op]
    return " -> ".join(start + [step.op for step in head.steps if step.op not in ("Dropout",)])


def prove(path: Path, conversion, mode: str) -> None:
    """The independent check (tests/equivalence.py) at the training size and the window check's size. Random
    weights can make outputs huge (1e11 for inception_v3), so the absolute tolerance follows the output's
    scale at the training size, as the package's own check does (measured here independently)."""
    original = identity_reshapes_dropped(onnx.load(str(path)))
    reference = run(original, random_input(original, input_shape(original)))
    atol = 1e-5 * max(1.0, max(float(abs(v).max()) for v in reference.values()))
    head = conversion.report.plan.heads[0]
    source = head.source
    if source not in {name for node in original.graph.node for name in node.output}:
        # a join of channels-last maps, which the tool gave a channels-first view to start at: so does the reference
        original = with_channels_first_view(original, head.pool.node if head.pool else head.flattening.node)
        source = "reference_nchw"
    channels_last = conversion.report.plan.input_layout(conversion.report.plan.trunk_inputs[0]) == "channels_last"
    larger = next(c.input_shape for c in conversion.report.checks if c.check == "windows")
    larger = (1,) + tuple(larger[1:])
    rank = len(larger) - 2
    if mode == "keep" and head.pool is not None:
        assert_equivalent(original, conversion.model, source=source, channels_last=channels_last, atol=atol)
        assert_one_prediction(original, conversion.model, source=source, size=larger, channels_last=channels_last,
                              atol=atol)
    else:
        assert_equivalent(original, conversion.model, source=source, sizes=[larger], channels_last=channels_last,
                          window=(1,) * rank if mode == "none" and head.pool is not None else None, atol=atol)


def try_model(path: Path) -> Dict:
    row: Dict = {"model": path.stem.split("__")[1], "exporter": path.stem.split("__")[0], "pattern": "", "modes": {}}
    for mode in MODES:
        started = time.perf_counter()
        try:
            conversion = fc2conv_onnx.convert_with_report(path, pooling=mode)
        except Fc2ConvError as error:
            row["modes"][mode] = f"refused (exit {error.exit_code}): {error}"
            continue
        except Exception as error:  # a bug: listed, so that the table shows it
            row["modes"][mode] = f"BUG {type(error).__name__}: {error}"
            continue
        seconds = time.perf_counter() - started
        report = conversion.report
        row["pattern"] = row["pattern"] or head_pattern(report)
        where = report.geometry[0]
        notes = []
        if getattr(where, "local", True) is False:
            notes.append("not local")
        if mode != "keep" and not hasattr(where, "stride"):
            notes.append(f"geometry unknown: {where.reason[:80]}")
        if getattr(where, "size_step", None) and any(p > 1 for p in where.size_step):
            notes.append(f"sizes {where.sizes_taken()}")
        try:
            prove(path, conversion, mode)
            verdict = "converts, proven"
        except AssertionError as error:
            lines = [line for line in str(error).splitlines() if line.strip()]
            verdict = f"INDEPENDENT CHECK FAILED: {' '.join(lines[:3])[:200]}"
        except Exception as error:  # the reference itself does not run there: listed, not hidden
            verdict = f"independent check could not run: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        row["modes"][mode] = f"{verdict} ({seconds:.1f} s{', ' + ', '.join(notes) if notes else ''})"
        print(f"{path.stem} {mode}: {row['modes'][mode]}", flush=True)
    return row


def table(rows: List[Dict]) -> str:
    lines = ["| exporter | model | head (as read) | keep | window | none |", "|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row["exporter"], row["model"], row["pattern"] or "-"] + \
            [row["modes"][m].replace("|", "/") for m in MODES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--write", type=Path, help="replace the table in this markdown file (between its markers)")
    parser.add_argument("--section", default="architectures",
                        help="the markers' name in that file (default: architectures)")
    args = parser.parse_args()
    rows = [try_model(path) for path in sorted(args.folder.glob("*__*.onnx"))]
    failures = json.loads((args.folder / "export_failures.json").read_text()) \
        if (args.folder / "export_failures.json").exists() else {}
    text = table(rows)
    if failures:
        text += "\n\nExports that failed (not the converter's doing):\n" + \
            "\n".join(f"- {name}: {why}" for name, why in failures.items())
    print(text)
    if args.write:
        replace_section(args.write, args.section, text)


def replace_section(path: Path, name: str, text: str) -> None:
    """Replace what lies between `<!-- NAME: begin -->` and `<!-- NAME: end -->` in the markdown file `path`:
    the prose around a generated table stays as written."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    document = path.read_text()
    start, stop = document.index(begin) + len(begin), document.index(end)
    path.write_text(document[:start] + "\n" + text + "\n" + document[stop:])


if __name__ == "__main__":
    main()

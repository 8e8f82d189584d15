"""inspect: the dry run - the heads that would be converted and what each layer becomes.

The command's flags, help, exit codes and handler, in one place (see `commands/__init__.py`)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from . import flags, running
from .flags import INTERNAL, INTERRUPTED, USAGE

if TYPE_CHECKING:
    from ..report import Report

NAME = "inspect"
SUMMARY = "dry run: show what would be converted"
DESCRIPTION = ("Read IN and print the heads that would be converted, what each layer becomes, and every "
               "Gemm/MatMul that would be left alone with the reason, and the output geometry. Writes nothing.")
#: Reads a model with onnx and graphsurgeon (the others run a converted one in onnxruntime alone).
CONVERTER = True
#: Exit code -> what it means for this command (its --help lists them; the README's table says the same).
EXITS = {
    "0": "at least one head would be converted",
    "1": INTERNAL,
    "2": USAGE,
    "3": "bad input: missing, unreadable or invalid model, a trunk that bakes its size,\n"
         "     or dynamic spatial dims without --input-size",
    "4": "no head would be converted (the reasons are printed), a --pooling mode a\n"
         "     head cannot have, or already converted",
    "6": "the report's stream is full",
    "7": "standard output closed before the report was all written",
    "130, 143": INTERRUPTED,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="the classifier (.onnx), or - to read it from standard input")
    flags.layout_flag(parser, "the layout the converted outputs would have")
    flags.pooling_flag(parser)
    flags.input_size_flag(parser)
    flags.stride_flag(parser)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    flags.talk_flags(parser)


def run(args: argparse.Namespace) -> Report:
    from .. import api

    report = api.inspect(running.model_source(args.input), running.options(args))
    if not report.plan.heads:
        raise api.nothing_to_convert(report.plan, args.input)
    return report

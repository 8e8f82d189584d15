"""validate: the checks convert runs, on a pair made earlier or by hand. Writes nothing.

The command's flags, help, exit codes and handler, in one place (see `commands/__init__.py`)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import UsageError
from . import flags, running
from .flags import INTERNAL, INTERRUPTED, STREAM, USAGE

if TYPE_CHECKING:
    from ..report import Report

NAME = "validate"
SUMMARY = "check an existing ORIGINAL / CONVERTED pair"
DESCRIPTION = ("Run the checks `convert` runs on a pair made earlier or by hand: CONVERTED must give "
               "ORIGINAL's outputs at the training size, and at every location of a larger input "
               "(--size) the original head applied to that window of the feature map. The heads are "
               "found in ORIGINAL; CONVERTED must keep its input and output names. Writes nothing.")
#: Reads a model with onnx and graphsurgeon (the others run a converted one in onnxruntime alone).
CONVERTER = True
#: Exit code -> what it means for this command (its --help lists them; the README's table says the same).
EXITS = {
    "0": "the pair is equivalent",
    "1": INTERNAL,
    "2": USAGE,
    "3": "bad input: a missing, unreadable or invalid model, or an ORIGINAL\n"
         "     onnxruntime cannot run",
    "4": "no head found in ORIGINAL to check against",
    "5": "not equivalent (the first failed check is printed), or CONVERTED's metadata\n"
         "     does not match its graph",
    "6": "out of memory, or the report's stream is full",
    "7": "standard output closed before the report was all written",
    "130, 143": INTERRUPTED,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("original", metavar="ORIGINAL",
                        help="the classifier (.onnx), or - to read it from standard input")
    parser.add_argument("converted", metavar="CONVERTED", help="its fully convolutional form (.onnx); either may be "
                        "- (standard input)")
    parser.add_argument("--size", metavar="SIZE", help=flags.SIZE_HELP)
    flags.layout_flag(parser, "the layout CONVERTED gives its outputs in")
    flags.pooling_flag(parser)
    flags.input_size_flag(parser)
    flags.stride_flag(parser)
    flags.common_flags(parser)


def run(args: argparse.Namespace) -> Report:
    from .. import api

    if args.original == args.converted == STREAM:
        raise UsageError(f"only one of ORIGINAL and CONVERTED can be {STREAM} (standard input)")
    return api.validate_pair(running.model_source(args.original), running.model_source(args.converted),
                             running.options(args), progress=running.progress())

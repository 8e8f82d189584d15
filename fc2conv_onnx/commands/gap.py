"""gap: how far a converted model's map is from its classifier on each cell's image crop, on the user's picture.

The command's flags, help, exit codes and handler, in one place (see `commands/__init__.py`)."""
from __future__ import annotations

import argparse

from . import flags, running
from .flags import INTERNAL, INTERRUPTED, USAGE

NAME = "gap"
SUMMARY = "measure the gap between the map and the classifier on each crop"
DESCRIPTION = ("Run the converted MODEL on IMAGE, and the ORIGINAL classifier on every cell's image crop alone, and "
               "print how far apart they are: the median, 95th percentile and largest |map - crop| over every cell "
               "and class compared, and how many cells decide the other way at --threshold. Where the trunk pads "
               "or reads past the window, the map is the head on the whole frame's features; a gap that flips "
               "decisions says detect --refine ORIGINAL is worth its cost. Writes nothing. Needs Pillow.")
#: Reads a model with onnx and graphsurgeon (the others run a converted one in onnxruntime alone).
CONVERTER = False
#: Exit code -> what it means for this command (its --help lists them; the README's table says the same).
EXITS = {
    "0": "the gap was measured",
    "1": INTERNAL,
    "2": USAGE,
    "3": "bad input: MODEL not converted by fc2conv-onnx, an ORIGINAL it was not converted\n"
         "     from, or an unreadable IMAGE",
    "6": "out of memory",
    "7": "standard output closed before the report was all written",
    "130, 143": INTERRUPTED,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a model converted by fc2conv-onnx (.onnx)")
    parser.add_argument("original", metavar="ORIGINAL", help="the classifier MODEL was converted from (.onnx)")
    parser.add_argument("image", metavar="IMAGE", help="a picture like the ones detect will see")
    flags.transpose_flag(parser, "as detect does")
    flags.detection_flags(parser, "")
    flags.picture_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    flags.talk_flags(parser)


def run(args: argparse.Namespace):
    from ..apps.gap import gap

    running.no_stdin_for_pictures(args, [args.image, args.original])
    return gap(args.model, args.original, args.image, running.detection_settings(args),
               preprocessing=running.preprocessing(args), transpose=args.transpose)

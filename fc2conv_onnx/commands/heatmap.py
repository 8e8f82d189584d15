"""heatmap: a converted model's class map drawn over a picture.

The command's flags, help, exit codes and handler, in one place (see `commands/__init__.py`)."""
from __future__ import annotations

import argparse

from ..model import guard
from . import flags, running
from .flags import INTERNAL, KEPT_WHOLE, STREAM, USAGE

NAME = "heatmap"
SUMMARY = "draw a converted model's class map over an image"
DESCRIPTION = ("Run the converted MODEL on IMAGE (PNG, JPEG, ...; needs Pillow: pip install "
               "'fc2conv-onnx[heatmap]') and write OUT.png: the image with the class map over it, each cell "
               "at the centre of the input window it stands for (the stride, window and offset stored in "
               "MODEL), interpolated between cells, and a colour bar. The image is the model's input as it "
               "is: pixels / --pixel-scale, minus --mean, over --std, in --channels order.")
#: Reads a model with onnx and graphsurgeon (the others run a converted one in onnxruntime alone).
CONVERTER = False
#: Exit code -> what it means for this command (its --help lists them; the README's table says the same).
EXITS = {
    "0": "the picture was written",
    "1": INTERNAL,
    "2": USAGE,
    "3": "bad input: MODEL not converted by fc2conv-onnx or without geometry, an\n"
         "     unreadable IMAGE or one smaller than the window, or an unusable OUT",
    "6": "out of memory or disk space, nothing written",
    "7": "-o -: standard output closed before the PNG was all written",
    "130, 143": KEPT_WHOLE,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a model converted by fc2conv-onnx (.onnx)")
    parser.add_argument("image", metavar="IMAGE", help="the picture (at least the training size)")
    parser.add_argument("-o", "--output", metavar="OUT", required=True,
                        help=f"where to write the PNG; {STREAM} for standard output (the summary then goes to stderr)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--class", dest="classes", type=flags.class_numbers, metavar="K[,K...]",
                       help="draw class (channel) K, or several, one panel each")
    which.add_argument("--top", type=flags.positive_int, metavar="N",
                       help="draw the N classes whose highest cell is highest, "
                       "one panel each. Default: the class with the highest cell")
    parser.add_argument("--output-name", metavar="NAME", help="the model output to draw (default: the one made "
                        "by a Softmax or Sigmoid, else the first with a geometry)")
    flags.picture_flags(parser)
    parser.add_argument("--alpha", type=flags.number, default=0.6, help="opacity of the map (0 to 1, default 0.6)")
    parser.add_argument("--range", type=flags.floats, metavar="LOW,HIGH", dest="value_range",
                        help="values at the colour bar's ends (default: the drawn maps' min and max)")
    parser.add_argument("--resize", type=flags.resize, metavar="F|HxW",
                        help="resize IMAGE first, by a factor (0.5) or to HxW pixels (height x width), so that the "
                             "objects to find are about the model's window in size")
    parser.add_argument("--scales", type=flags.floats, metavar="S1,S2,...",
                        help="run the model on the image at each scale (e.g. 1,0.5,0.25: an image pyramid, for "
                             "objects of several sizes) and draw one map: per pixel, the highest value among them")
    flags.labels_flag(parser)
    flags.transpose_flag(parser, "the map is drawn in the picture's frame")
    parser.add_argument("--json", action="store_true", help="print what was drawn as JSON on stdout")
    flags.talk_flags(parser)


def run(args: argparse.Namespace):
    running.no_stdin_for_pictures(args, [args.image])
    if args.output == STREAM:
        running.check_stdout("the PNG")
    running.check_scales(args.scales)
    from ..apps.heatmaps import checked_value_range

    value_range = None if args.value_range is None else checked_value_range(args.value_range, "--range")
    from ..apps.heatmaps import heatmap
    from ..apps.labels import read_labels

    if args.labels is not None and args.output != STREAM:  # the labels file is read too (the API takes names)
        guard.check_outputs([("-o", args.output)], guard.Reads().add("the labels file", args.labels))

    drawn = heatmap(args.model, args.image, running.stdout() if args.output == STREAM else args.output,
                    output_name=args.output_name, classes=args.classes, top=args.top,
                    preprocessing=running.preprocessing(args), alpha=args.alpha, value_range=value_range,
                    resize=args.resize, scales=args.scales, transpose=args.transpose,
                    labels=None if args.labels is None else read_labels(args.labels))
    if args.output == STREAM:
        drawn.output = "standard output"
    return drawn

"""convert: every fully connected head of a classifier made convolutions, validated, and written with one commit point.

The command's flags, help, exit codes and handler, in one place (see `commands/__init__.py`)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..model import guard, writes
from . import flags, running
from .flags import INTERNAL, KEPT_WHOLE, STREAM, USAGE

if TYPE_CHECKING:
    from ..report import Report

NAME = "convert"
SUMMARY = "convert a model and write the result"
DESCRIPTION = ("Convert every fully connected head of IN into convolutions and write the model to OUT. "
               "The result is validated with onnxruntime unless --no-validate is given: outputs must "
               "equal the original's at the training size, and on a larger input (--validate-size) every "
               "output location must equal the original head applied to that window of the feature map "
               "(crop and forward). Nothing is written if validation fails. The output geometry (stride, "
               "window, offset) is printed and stored in OUT's metadata.")
#: Reads a model with onnx and graphsurgeon (the others run a converted one in onnxruntime alone).
CONVERTER = True
#: Exit code -> what it means for this command (its --help lists them; the README's table says the same).
EXITS = {
    "0": "converted, validated and written",
    "1": INTERNAL,
    "2": USAGE,
    "3": "bad input: missing, unreadable or invalid model, a trunk that bakes its size,\n"
         "     dynamic spatial dims without --input-size, an output --emit-detections\n"
         "     cannot use, or an unusable output path",
    "4": "nothing to convert (no convertible head, a --pooling mode a head cannot\n"
         "     have, or already converted)",
    "5": "validation failed: not equivalent (or the detector of --emit-detections\n"
         "     does not give detect's boxes), nothing written",
    "6": "out of memory or disk space, nothing written",
    "7": "-o -: standard output closed before the model was all written",
    "130, 143": KEPT_WHOLE,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="the classifier (.onnx), or - to read it from standard input")
    parser.add_argument("-o", "--output", metavar="OUT", required=True,
                        help="where to write the converted model; one rename commits it, so OUT always holds "
                             "the previous result or the new one, whole, and a failed run leaves it as it was. "
                             "- writes the model to standard output (weights inside it; the report goes to "
                             "stderr)")
    parser.add_argument("--in-place", action="store_true",
                        help="allow OUT to be IN and replace it (with its data file)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--external-data", dest="external_data", action="store_const", const=True,
                      help="write the weights to a data file next to OUT, named anew by every write: "
                           "OUT.<12 hex digits>.data (the report names it). Default: when IN has external data or "
                           "the model reaches protobuf's 2 GiB limit")
    data.add_argument("--embedded", dest="external_data", action="store_const", const=False,
                      help="write the weights inside OUT (models under 2 GiB)")
    parser.add_argument("--no-validate", dest="validate", action="store_false",
                        help="skip the onnxruntime checks (the result is then unproven)")
    parser.add_argument("--validate-size", metavar="SIZE|off", help=flags.SIZE_HELP + "; 'off' checks the training "
                        "size only")
    flags.layout_flag(parser, "the layout of the converted outputs")
    flags.pooling_flag(parser)
    flags.input_size_flag(parser)
    flags.stride_flag(parser)
    parser.add_argument("--emit-detections", action="store_true",
                        help="append nodes that turn the map into detections at the input's scale, so that OUT is a "
                             "detector in any ONNX runtime: outputs boxes [M, 4] (x1, y1, x2, y2 in input pixels), "
                             "scores [M], classes [M], batch_index [M], best first; the maps stay. Set by the "
                             "detection flags below (as for detect); validated against detect at one scale")
    flags.detection_flags(parser, "with --emit-detections: ")
    parser.add_argument("--transpose", action="store_true",
                        help="with --emit-detections: the model reads pictures as W x H (ported from Caffe or Matlab, "
                             "as MTCNN's nets; fed them transposed): the detector takes the regression's offsets in "
                             "the picture's frame and gives its boxes there, as detect --transpose does")
    flags.common_flags(parser)


def run(args: argparse.Namespace) -> Report:
    from .. import api

    given = [flag for field, flag in flags.DETECTION_FLAGS.items() if getattr(args, field) is not None]
    if args.transpose:
        given.append("--transpose")
    if given and not args.emit_detections:
        raise UsageError(f"{given[0]} sets the detector of --emit-detections; add --emit-detections or leave it out")
    if args.output != STREAM:
        if args.input == STREAM:  # `convert - -o m.onnx < m.onnx`: the file behind standard input is read too
            guard.check_outputs([("-o", args.output)], guard.Reads().add_stream("standard input's file", 0))
        return api.convert_file(running.model_source(args.input), args.output, running.options(args),
                                progress=running.progress(), in_place=args.in_place,
                                external_data=args.external_data)
    if args.external_data or args.in_place:
        raise UsageError(f"-o {STREAM} writes the model to standard output, whole: it cannot go with "
                         f"{'--external-data' if args.external_data else '--in-place'}")
    running.check_stdout("the model")
    conversion = api.convert_with_report(running.model_source(args.input), running.options(args),
                                         progress=running.progress())
    writes.write_stream(conversion.model.SerializeToString(), running.stdout())
    conversion.report.output = "standard output"
    return conversion.report

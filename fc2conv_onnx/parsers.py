"""The command line's grammar: every command, flag, help text and exit-code table, and the types that check
flag values (a value wrong in itself is a usage error, exit 2). `cli` runs what they parse."""
from __future__ import annotations

import argparse
import math

from . import __version__
from .model.detections import ACTIVATIONS, OVERLAPS
from .model.layout import OUTPUT_LAYOUTS
from .model.sizes import MAX_SIZE
from .plan.options import KEEP_POOL, POOLINGS

PROG = "fc2conv-onnx"
#: The name that means standard input (for a model) or standard output (convert's, heatmap's, detect's OUT).
STREAM = "-"

COMMANDS = ("convert", "validate", "inspect", "heatmap", "detect")
#: Exit codes: what each means for each command (None: the command never exits with it). The README's
#: table and the module's text above say the same.
_EXITS = (
    ("0", {"convert": "converted, validated and written", "validate": "the pair is equivalent",
           "inspect": "at least one head would be converted", "heatmap": "the picture was written",
           "detect": "the detections were written (there may be none)"}),
    ("1", dict.fromkeys(COMMANDS, "internal error (a bug; please report it)")),
    ("2", dict.fromkeys(COMMANDS, "usage error (a bad command line or flag value)")),
    ("3", {"convert": "bad input: missing, unreadable or invalid model, a trunk that bakes its size,\n"
                      "     dynamic spatial dims without --input-size, an output --emit-detections\n"
                      "     cannot use, or an unusable output path",
           "validate": "bad input: a missing, unreadable or invalid model, or an ORIGINAL\n"
                       "     onnxruntime cannot run",
           "inspect": "bad input: missing, unreadable or invalid model, a trunk that bakes its size,\n"
                      "     or dynamic spatial dims without --input-size",
           "heatmap": "bad input: MODEL not converted by fc2conv-onnx or without geometry, an\n"
                      "     unreadable IMAGE or one smaller than the window, or an unusable OUT",
           "detect": "bad input: MODEL not converted by fc2conv-onnx or without geometry, an\n"
                     "     unreadable IMAGE or one smaller than the window at a scale asked for, a\n"
                     "     --class or --regression the model does not have, or an unusable OUT"}),
    ("4", {"convert": "nothing to convert (no convertible head, a --pooling mode a head cannot\n"
                      "     have, or already converted)",
           "validate": "no head found in ORIGINAL to check against",
           "inspect": "no head would be converted (the reasons are printed), a --pooling mode a\n"
                      "     head cannot have, or already converted"}),
    ("5", {"convert": "validation failed: not equivalent (or the detector of --emit-detections\n"
                      "     does not give detect's boxes), nothing written",
           "validate": "not equivalent (the first failed check is printed), or CONVERTED's metadata\n"
                       "     does not match its graph"}),
    ("6", {"convert": "out of memory or disk space, nothing written",
           "validate": "out of memory, or the report's stream is full",
           "inspect": "the report's stream is full",
           "heatmap": "out of memory or disk space, nothing written",
           "detect": "out of memory or disk space, nothing written"}),
    ("7", {"convert": "-o -: standard output closed before the model was all written",
           "validate": "standard output closed before the report was all written",
           "inspect": "standard output closed before the report was all written",
           "heatmap": "-o -: standard output closed before the PNG was all written",
           "detect": "-o -: standard output closed before the detections were all written"}),
    ("130, 143", {"convert": "interrupted (Ctrl-C, SIGTERM); a previous OUT is kept whole",
                  "heatmap": "interrupted (Ctrl-C, SIGTERM); a previous OUT is kept whole",
                  "detect": "interrupted (Ctrl-C, SIGTERM); a previous OUT is kept whole",
                  "validate": "interrupted (Ctrl-C, SIGTERM)", "inspect": "interrupted (Ctrl-C, SIGTERM)"}),
)


def exit_codes(command: str) -> str:
    """The exit codes `command` can end with, for its --help."""
    lines = ["exit codes:"] + [f"  {code}  {meanings[command]}" for code, meanings in _EXITS if command in meanings]
    return "\n".join(lines)


EXIT_CODES = """exit codes (see each command's --help):
  0  success    1  internal error    2  usage error    3  bad input
  4  nothing to convert    5  not equivalent    6  out of memory or disk space
  7  a stream's reader went away    130, 143  interrupted"""

SIZE_HELP = ("spatial input size of the window check, e.g. 512x1024 (one number: every axis); at least the "
             "training size. Default: a few strides larger than the training size (2 more on the first axis, "
             "3 on the second, ...). Above 4096 output locations, a seeded sample plus every corner is compared")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-parser per command (`COMMANDS`); `args.command` names the one given."""
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_formatter,
        description="Make an ONNX CNN classifier fully convolutional: its fully connected head becomes "
                    "convolutions, so the model runs on inputs larger than its training size and returns "
                    "one output per window position. Every conversion is checked with onnxruntime.",
        epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _talk_flags(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    _add_convert(commands)
    _add_validate(commands)
    _add_inspect(commands)
    _add_heatmap(commands)
    _add_detect(commands)
    return parser


def _add_convert(commands: "argparse._SubParsersAction") -> None:
    convert = commands.add_parser(
        "convert", formatter_class=_formatter, help="convert a model and write the result",
        description="Convert every fully connected head of IN into convolutions and write the model to OUT. "
                    "The result is validated with onnxruntime unless --no-validate is given: outputs must "
                    "equal the original's at the training size, and on a larger input (--validate-size) every "
                    "output location must equal the original head applied to that window of the feature map "
                    "(crop and forward). Nothing is written if validation fails. The output geometry (stride, "
                    "window, offset) is printed and stored in OUT's metadata.",
        epilog=exit_codes("convert"))
    convert.add_argument("input", metavar="IN", help="the classifier (.onnx), or - to read it from standard input")
    convert.add_argument("-o", "--output", metavar="OUT", required=True,
                         help="where to write the converted model; one rename commits it, so OUT always holds "
                              "the previous result or the new one, whole, and a failed run leaves it as it was. "
                              "- writes the model to standard output (weights inside it; the report goes to "
                              "stderr)")
    convert.add_argument("--in-place", action="store_true",
                         help="allow OUT to be IN and replace it (with its data file)")
    data = convert.add_mutually_exclusive_group()
    data.add_argument("--external-data", dest="external_data", action="store_const", const=True,
                      help="write the weights to a data file next to OUT, named anew by every write: "
                           "OUT.<12 hex digits>.data (the report names it). Default: when IN has external data or "
                           "the model reaches protobuf's 2 GiB limit")
    data.add_argument("--embedded", dest="external_data", action="store_const", const=False,
                      help="write the weights inside OUT (models under 2 GiB)")
    convert.add_argument("--no-validate", dest="validate", action="store_false",
                         help="skip the onnxruntime checks (the result is then unproven)")
    convert.add_argument("--validate-size", metavar="SIZE|off", help=SIZE_HELP + "; 'off' checks the training "
                         "size only")
    _layout_flag(convert, "the layout of the converted outputs")
    _pooling_flag(convert)
    _input_size_flag(convert)
    _stride_flag(convert)
    convert.add_argument("--emit-detections", action="store_true",
                         help="append nodes that turn the map into detections at the input's scale, so that OUT is a "
                              "detector in any ONNX runtime: outputs boxes [M, 4] (x1, y1, x2, y2 in input pixels), "
                              "scores [M], classes [M], batch_index [M], best first; the maps stay. Set by the "
                              "detection flags below (as for detect); validated against detect at one scale")
    _detection_flags(convert, "with --emit-detections: ")
    _common_flags(convert)


def _add_validate(commands: "argparse._SubParsersAction") -> None:
    validate = commands.add_parser(
        "validate", formatter_class=_formatter, help="check an existing ORIGINAL / CONVERTED pair",
        description="Run the checks `convert` runs on a pair made earlier or by hand: CONVERTED must give "
                    "ORIGINAL's outputs at the training size, and at every location of a larger input "
                    "(--size) the original head applied to that window of the feature map. The heads are "
                    "found in ORIGINAL; CONVERTED must keep its input and output names. Writes nothing.",
        epilog=exit_codes("validate"))
    validate.add_argument("original", metavar="ORIGINAL",
                          help="the classifier (.onnx), or - to read it from standard input")
    validate.add_argument("converted", metavar="CONVERTED", help="its fully convolutional form (.onnx); either may be "
                          "- (standard input)")
    validate.add_argument("--size", metavar="SIZE", help=SIZE_HELP)
    _layout_flag(validate, "the layout CONVERTED gives its outputs in")
    _pooling_flag(validate)
    _input_size_flag(validate)
    _stride_flag(validate)
    _common_flags(validate)


def _add_inspect(commands: "argparse._SubParsersAction") -> None:
    inspect = commands.add_parser(
        "inspect", formatter_class=_formatter, help="dry run: show what would be converted",
        description="Read IN and print the heads that would be converted, what each layer becomes, and every "
                    "Gemm/MatMul that would be left alone with the reason, and the output geometry. Writes nothing.",
        epilog=exit_codes("inspect"))
    inspect.add_argument("input", metavar="IN", help="the classifier (.onnx), or - to read it from standard input")
    _layout_flag(inspect, "the layout the converted outputs would have")
    _pooling_flag(inspect)
    _input_size_flag(inspect)
    _stride_flag(inspect)
    inspect.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    _talk_flags(inspect)


def _add_heatmap(commands: "argparse._SubParsersAction") -> None:
    heatmap = commands.add_parser(
        "heatmap", formatter_class=_formatter, help="draw a converted model's class map over an image",
        description="Run the converted MODEL on IMAGE (PNG, JPEG, ...; needs Pillow: pip install "
                    "'fc2conv-onnx[heatmap]') and write OUT.png: the image with the class map over it, each cell "
                    "at the centre of the input window it stands for (the stride, window and offset stored in "
                    "MODEL), interpolated between cells, and a colour bar. The image is the model's input as it "
                    "is: pixels / --pixel-scale, minus --mean, over --std, in --channels order.",
        epilog=exit_codes("heatmap"))
    heatmap.add_argument("model", metavar="MODEL", help="a model converted by fc2conv-onnx (.onnx)")
    heatmap.add_argument("image", metavar="IMAGE", help="the picture (at least the training size)")
    heatmap.add_argument("-o", "--output", metavar="OUT", required=True,
                         help=f"where to write the PNG; {STREAM} for standard output (the summary then goes to stderr)")
    which = heatmap.add_mutually_exclusive_group()
    which.add_argument("--class", dest="classes", type=_class_numbers, metavar="K[,K...]",
                       help="draw class (channel) K, or several, one panel each")
    which.add_argument("--top", type=_positive_int, metavar="N",
                       help="draw the N classes whose highest cell is highest, "
                       "one panel each. Default: the class with the highest cell")
    heatmap.add_argument("--output-name", metavar="NAME", help="the model output to draw (default: the one made "
                         "by a Softmax or Sigmoid, else the first with a geometry)")
    _picture_flags(heatmap)
    heatmap.add_argument("--alpha", type=_number, default=0.6, help="opacity of the map (0 to 1, default 0.6)")
    heatmap.add_argument("--range", type=_floats, metavar="LOW,HIGH", dest="value_range",
                         help="values at the colour bar's ends (default: the drawn maps' min and max)")
    heatmap.add_argument("--resize", type=_resize, metavar="F|HxW",
                         help="resize IMAGE first, by a factor (0.5) or to HxW pixels (height x width), so that the "
                              "objects to find are about the model's window in size")
    heatmap.add_argument("--scales", type=_floats, metavar="S1,S2,...",
                         help="run the model on the image at each scale (e.g. 1,0.5,0.25: an image pyramid, for "
                              "objects of several sizes) and draw one map: per pixel, the highest value among them")
    heatmap.add_argument("--json", action="store_true", help="print what was drawn as JSON on stdout")
    _talk_flags(heatmap)


def _add_detect(commands: "argparse._SubParsersAction") -> None:
    detect = commands.add_parser(
        "detect", formatter_class=_formatter, help="find objects in pictures with a converted classifier",
        description="Run the converted MODEL on each IMAGE, as it is or at each scale of an image pyramid (one session "
                    "for all), "
                    "turn every cell scoring above --threshold into its input window's box in the picture's pixels "
                    "(the stride, window and offset stored in MODEL, and the scale), optionally moved by a "
                    "--regression output, clip it to the picture, and suppress overlapping boxes per class across "
                    "scales (--iou). Writes the detections, best first, to OUT: JSON (a list of {image, box: [x1, y1, "
                    "x2, y2], score, class, scale, cell}) or, for a .csv name, CSV. Needs Pillow: pip install "
                    "'fc2conv-onnx[heatmap]'. The image is the model's input as it is: pixels / --pixel-scale, minus "
                    "--mean, over --std, in --channels order.",
        epilog=exit_codes("detect"))
    detect.add_argument("model", metavar="MODEL", help="a model converted by fc2conv-onnx (.onnx)")
    detect.add_argument("images", metavar="IMAGE", nargs="+",
                        help="the pictures (PNG, JPEG, ...): files, folders (the pictures in them, not in their "
                             "subfolders) or quoted patterns ('frames/*.jpg'); one session runs them all")
    detect.add_argument("-o", "--output", metavar="OUT", required=True,
                        help="where to write the detections: .csv for CSV, else JSON; - for JSON on standard output "
                             "(the summary then goes to stderr)")
    detect.add_argument("--draw", metavar="PNG|DIR",
                        help="also draw the boxes, with class and score, over the picture: a PNG for one IMAGE, or a "
                             "folder (made if missing; for one IMAGE, an existing folder or a name ending in /) that "
                             "gets IMAGE's name with .png for each; never a file the command reads")
    pyramid = detect.add_argument_group("scales (default: the picture as it is, scale 1)")
    pyramid.add_argument("--scales", type=_floats, metavar="S1,S2,...",
                         help="the scales to run at, e.g. 1,0.5,0.25 (each picture resized by each factor)")
    pyramid.add_argument("--min-size", type=_number, metavar="PX",
                         help="the smallest objects to find, in pixels on the window's long side: the largest scale is "
                              "window / PX (default: the window, scale 1)")
    pyramid.add_argument("--max-size", type=_number, metavar="PX",
                         help="the largest objects to find (default: the whole picture): the scales go down to window "
                              "/ PX, while the picture still holds a window (and is a size the model takes)")
    pyramid.add_argument("--scale-step", type=_number, metavar="F",
                         help="each scale is F times smaller than the last (default 1.25) with --min-size/--max-size")
    _detection_flags(detect, "")
    _picture_flags(detect)
    _talk_flags(detect, json=False)
    detect.set_defaults(json=False)


def _picture_flags(parser: argparse.ArgumentParser) -> None:
    """How pixels become the model's input (heatmap, detect)."""
    parser.add_argument("--pixel-scale", dest="scale", type=_number, metavar="S",
                        help="pixels (0..255) are divided by this first (default 255, giving 0..1; 1 keeps 0..255)")
    parser.add_argument("--scale", dest="older_scale", type=_number, metavar="S",
                        help="the older spelling of --pixel-scale (not a pyramid scale: that is --scales)")
    parser.add_argument("--mean", type=_floats, default=(0.0,), metavar="M[,M,M]",
                        help="subtracted after scaling, per channel (e.g. 0.485,0.456,0.406; default 0)")
    parser.add_argument("--std", type=_floats, default=(1.0,), metavar="S[,S,S]",
                        help="divided by after the mean, per channel (e.g. 0.229,0.224,0.225; default 1)")
    parser.add_argument("--channels", choices=("rgb", "bgr", "gray"), default="rgb",
                        help="channel order the model expects (default rgb; gray for one channel)")


#: The flags that set a DetectionSettings (detect, convert --emit-detections), by field.
DETECTION_FLAGS = {"output_name": "--output-name", "classes": "--class", "threshold": "--threshold", "iou": "--iou",
                   "overlap": "--overlap", "regression": "--regression", "activation": "--activation"}


def _detection_flags(parser: argparse.ArgumentParser, when: str) -> None:
    """The flags of `DetectionSettings`; each defaults to None (not given) so that convert can refuse them
    without --emit-detections."""
    group = parser.add_argument_group("detections")
    group.add_argument("--output-name", metavar="NAME", help=f"{when}the output with the class scores (default: the "
                       "one made by a Softmax or Sigmoid, else the first with a geometry)")
    group.add_argument("--class", dest="classes", type=_ints, metavar="K[,K...]",
                       help=f"{when}the classes to detect (default: every class, each cell giving only its best one; "
                            "give the object classes of a model with a background class)")
    group.add_argument("--threshold", type=_number, metavar="T",
                       help=f"{when}a cell is a candidate when its score is above T (default 0.5)")
    group.add_argument("--iou", type=_number, metavar="I",
                       help=f"{when}a box overlapping a better box of its class by more than I is dropped, across "
                            "scales (default 0.5)")
    group.add_argument("--overlap", choices=OVERLAPS,
                       help=f"{when}what --iou measures the intersection against: union (default: IoU) or smaller "
                            "(the smaller box, so that a box inside a better one goes too, as cascaded face "
                            "detectors suppress across scales)")
    group.add_argument("--regression", metavar="OUTPUT",
                       help=f"{when}a box-regression output with 4 channels on the scores' grid: corner offsets x1, "
                            "y1, x2, y2 as fractions of the window's width and height, added to the window's corners "
                            "(cascaded face detectors' convention)")
    group.add_argument("--activation", choices=ACTIVATIONS,
                       help=f"{when}how the output's values become scores: auto (default) takes them as they are, "
                            "probabilities from a Softmax or Sigmoid, else logits (said in the summary; the threshold "
                            "is then in their units); sigmoid or softmax (over the classes) makes probabilities")


def _ints(text: str) -> tuple:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None


def _resize(text: str):
    """--resize: a positive factor, or HxW."""
    try:
        if "x" in text:
            height, width = (int(part) for part in text.split("x"))
            if 0 < height <= MAX_SIZE and 0 < width <= MAX_SIZE:
                return (height, width)
        elif 0 < _number(text) <= MAX_SIZE:
            return float(text)
    except (ValueError, argparse.ArgumentTypeError):
        pass
    raise argparse.ArgumentTypeError(f"'{text}' is not a positive factor or HxW (each at most {MAX_SIZE})")


def _number(text: str) -> float:
    """A finite number (nan and inf are refused: exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive whole number")
    return value


def _class_number(text: str) -> int:
    """A class (channel) number: 0 or more. One the model does not have is the model's matter (exit 3)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a class number (0, 1, ...)")
    return value


def _class_numbers(text: str) -> tuple:
    """--class of heatmap: distinct class numbers (0 or more), comma-separated."""
    numbers = tuple(_class_number(part) for part in text.split(","))
    if len(set(numbers)) != len(numbers):
        raise argparse.ArgumentTypeError(f"'{text}' names a class twice")
    return numbers


def _floats(text: str) -> tuple:
    try:
        return tuple(_number(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of finite numbers") from None


def _layout_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--output-layout", choices=OUTPUT_LAYOUTS, default="auto",
                        help=f"{what}: channels_first is [N, K, *spatial], channels_last [N, *spatial, K]; auto "
                             "(default) follows the image input, so a tf2onnx/Keras model with an NHWC input "
                             "gives NHWC maps")


def _stride_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stride", metavar="S|SxT",
                        help="a finer output stride: cells S pixels apart instead of the trunk's stride, which S must "
                             "divide by a power of two (16 or 8 for a stride-32 trunk). The last strides of the trunk "
                             "are lowered and every later kernel dilated (a trous), exactly; validation checks every "
                             "finer cell. Needs --pooling window or none for global-pooling heads")


def _input_size_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-size", metavar="SIZE",
                        help="the training size (spatial, e.g. 224x224 or 224) of a model exported with dynamic "
                             "spatial dims ([N, 3, ?, ?]); its heads are read and validated at that size. Not needed "
                             "when the input size is fixed in the model")


def _pooling_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pooling", choices=POOLINGS, default=KEEP_POOL,
                        help="what becomes of a global pooling (GlobalAveragePool, ReduceMean over the spatial axes) "
                             "before a head: keep (default) leaves it, giving one prediction per image at any size; "
                             "window makes it a pool of the training feature size with stride 1, giving the "
                             "classifier on every window; none removes it, giving the head at every feature "
                             "location (class activation maps). A head that cannot have the mode is refused "
                             "(exit 4), never converted to less")


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of the random validation inputs (default 0)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    _talk_flags(parser)


def _talk_flags(parser: argparse.ArgumentParser, top: bool = False, json: bool = True) -> None:
    """-v and -q, taken before the command or after it: a command's own flags default to nothing (SUPPRESS),
    so that they do not undo the same flag given before the command. `json`: whether the command has --json."""
    default = False if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="log each step to stderr")
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="print no report (errors still go to stderr" + ("; --json still prints)" if json else ")"))

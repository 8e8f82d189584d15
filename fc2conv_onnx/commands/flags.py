"""What the commands share: the program's name, the argparse types that check a flag's value (a value wrong in
itself is a usage error, exit 2), the flag groups several commands take, and the exit codes every command can
end with. Each command's own flags, help and exit codes are in its module (`commands/<name>.py`)."""
from __future__ import annotations

import argparse
import math
from typing import Dict

from ..model.detections import ACTIVATIONS, OVERLAPS
from ..model.layout import OUTPUT_LAYOUTS
from ..model.sizes import MAX_SIZE
from ..plan.options import KEEP_POOL, POOLINGS

PROG = "fc2conv-onnx"
#: The name that means standard input (for a model) or standard output (convert's, heatmap's, detect's OUT).
STREAM = "-"

#: The exit codes every command can end with, by what they mean for it (a command's module gives the rest).
INTERNAL, USAGE = "internal error (a bug; please report it)", "usage error (a bad command line or flag value)"
INTERRUPTED = "interrupted (Ctrl-C, SIGTERM)"
KEPT_WHOLE = INTERRUPTED + "; a previous OUT is kept whole"


def exit_codes(exits: Dict[str, str]) -> str:
    """A command's --help epilog: its exit codes (code -> meaning, in the order given)."""
    return "\n".join(["exit codes:"] + [f"  {code}  {meaning}" for code, meaning in exits.items()])


SIZE_HELP = ("spatial input size of the window check, e.g. 512x1024 (one number: every axis); at least the "
             "training size. Default: a few strides larger than the training size (2 more on the first axis, "
             "3 on the second, ...). Above 4096 output locations, a seeded sample plus every corner is compared")


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30)


def picture_flags(parser: argparse.ArgumentParser) -> None:
    """How pixels become the model's input (heatmap, detect)."""
    parser.add_argument("--pixel-scale", dest="scale", type=number, metavar="S",
                        help="pixels (0..255) are divided by this first (default 255, giving 0..1; 1 keeps 0..255)")
    parser.add_argument("--scale", dest="older_scale", type=number, metavar="S",
                        help="the older spelling of --pixel-scale (not a pyramid scale: that is --scales)")
    parser.add_argument("--mean", type=floats, default=(0.0,), metavar="M[,M,M]",
                        help="subtracted after scaling, per channel (e.g. 0.485,0.456,0.406; default 0)")
    parser.add_argument("--std", type=floats, default=(1.0,), metavar="S[,S,S]",
                        help="divided by after the mean, per channel (e.g. 0.229,0.224,0.225; default 1)")
    parser.add_argument("--channels", choices=("rgb", "bgr", "gray"), default="rgb",
                        help="channel order the model expects (default rgb; gray for one channel)")


#: The flags that set a DetectionSettings (detect, convert --emit-detections), by field.
DETECTION_FLAGS = {"output_name": "--output-name", "classes": "--class", "threshold": "--threshold", "iou": "--iou",
                   "overlap": "--overlap", "regression": "--regression", "activation": "--activation"}


def detection_flags(parser: argparse.ArgumentParser, when: str) -> None:
    """The flags of `DetectionSettings`; each defaults to None (not given) so that convert can refuse them
    without --emit-detections."""
    group = parser.add_argument_group("detections")
    group.add_argument("--output-name", metavar="NAME", help=f"{when}the output with the class scores (default: the "
                       "one made by a Softmax or Sigmoid, else the first with a geometry)")
    group.add_argument("--class", dest="classes", type=ints, metavar="K[,K...]",
                       help=f"{when}the classes to detect (default: every class, each cell giving only its best one; "
                            "give the object classes of a model with a background class)")
    group.add_argument("--threshold", type=number, metavar="T",
                       help=f"{when}a cell is a candidate when its score is above T (default 0.5)")
    group.add_argument("--iou", type=number, metavar="I",
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


def ints(text: str) -> tuple:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None


def resize(text: str):
    """--resize: a positive factor, or HxW."""
    try:
        if "x" in text:
            height, width = (int(part) for part in text.split("x"))
            if 0 < height <= MAX_SIZE and 0 < width <= MAX_SIZE:
                return (height, width)
        elif 0 < number(text) <= MAX_SIZE:
            return float(text)
    except (ValueError, argparse.ArgumentTypeError):
        pass
    raise argparse.ArgumentTypeError(f"'{text}' is not a positive factor or HxW (each at most {MAX_SIZE})")


def number(text: str) -> float:
    """A finite number (nan and inf are refused: exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive whole number")
    return value


def class_number(text: str) -> int:
    """A class (channel) number: 0 or more. One the model does not have is the model's matter (exit 3)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a class number (0, 1, ...)")
    return value


def class_numbers(text: str) -> tuple:
    """--class of heatmap: distinct class numbers (0 or more), comma-separated."""
    numbers = tuple(class_number(part) for part in text.split(","))
    if len(set(numbers)) != len(numbers):
        raise argparse.ArgumentTypeError(f"'{text}' names a class twice")
    return numbers


def floats(text: str) -> tuple:
    try:
        return tuple(number(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of finite numbers") from None


def labels_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", metavar="FILE",
                        help="the classes' names, one a line, class 0 first: shown in the records ('label'), the "
                             "drawings and the panels instead of class numbers")


def transpose_flag(parser: argparse.ArgumentParser, then: str) -> None:
    """--transpose for the commands that run a model on pictures; `then`: what becomes of the result."""
    parser.add_argument("--transpose", action="store_true",
                        help="the model reads pictures as W x H (ported from Caffe or Matlab, as MTCNN's nets): it "
                             f"runs on each picture transposed; {then}")


def layout_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--output-layout", choices=OUTPUT_LAYOUTS, default="auto",
                        help=f"{what}: channels_first is [N, K, *spatial], channels_last [N, *spatial, K]; auto "
                             "(default) follows the image input, so a tf2onnx/Keras model with an NHWC input "
                             "gives NHWC maps")


def stride_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stride", metavar="S|SxT",
                        help="a finer output stride: cells S pixels apart instead of the trunk's stride, which S must "
                             "divide by a power of two (16 or 8 for a stride-32 trunk). The last strides of the trunk "
                             "are lowered and every later kernel dilated (a trous), exactly; validation checks every "
                             "finer cell. Needs --pooling window or none for global-pooling heads")


def input_size_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-size", metavar="SIZE",
                        help="the training size (spatial, e.g. 224x224 or 224) of a model exported with dynamic "
                             "spatial dims ([N, 3, ?, ?]); its heads are read and validated at that size. Not needed "
                             "when the input size is fixed in the model")


def pooling_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pooling", choices=POOLINGS, default=KEEP_POOL,
                        help="what becomes of a global pooling (GlobalAveragePool, ReduceMean over the spatial axes) "
                             "before a head: keep (default) leaves it, giving one prediction per image at any size; "
                             "window makes it a pool of the training feature size with stride 1, giving the "
                             "classifier on every window; none removes it, giving the head at every feature "
                             "location (class activation maps). A head that cannot have the mode is refused "
                             "(exit 4), never converted to less")


def common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of the random validation inputs (default 0)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    talk_flags(parser)


def talk_flags(parser: argparse.ArgumentParser, top: bool = False, json: bool = True) -> None:
    """-v and -q, taken before the command or after it: a command's own flags default to nothing (SUPPRESS),
    so that they do not undo the same flag given before the command. `json`: whether the command has --json."""
    default = False if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="log each step to stderr")
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="print no report (errors still go to stderr" + ("; --json still prints)" if json else ")"))

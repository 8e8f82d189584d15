"""detect: boxes from a converted model on pictures, at one scale or a pyramid; records and drawings.

The command's flags, help, exit codes and handler, in one place (see `commands/__init__.py`)."""
from __future__ import annotations

import argparse
import os
from collections import Counter
from typing import List, Optional

from ..apps.cascade import read_cascade
from ..apps.labels import read_labels
from ..apps.pictures import picture_files
from ..apps.video import is_video
from ..errors import InputError, UsageError, printable
from ..model import guard, writes
from . import flags, running, video_run
from .flags import INTERNAL, KEPT_WHOLE, STREAM, USAGE

NAME = "detect"
SUMMARY = "find objects in pictures with a converted classifier"
DESCRIPTION = ("Run the converted MODEL on each IMAGE, as it is or at each scale of an image pyramid (one session "
               "for all), turn every cell scoring above --threshold into its input window's box in the picture's "
               "pixels "
               "(the stride, window and offset stored in MODEL, and the scale), optionally moved by a "
               "--regression output, clip it to the picture, and suppress overlapping boxes per class across "
               "scales (--iou). Writes the detections, best first, to OUT: JSON (a list of {image, box: [x1, y1, "
               "x2, y2], score, class, scale, cell}) or, for a .csv name, CSV. Needs Pillow: pip install "
               "'fc2conv-onnx[heatmap]'. The image is the model's input as it is: pixels / --pixel-scale, minus "
               "--mean, over --std, in --channels order.")
#: Reads a model with onnx and graphsurgeon (the others run a converted one in onnxruntime alone).
CONVERTER = False
#: Exit code -> what it means for this command (its --help lists them; the README's table says the same).
EXITS = {
    "0": "the detections were written (there may be none)",
    "1": INTERNAL,
    "2": USAGE,
    "3": "bad input: MODEL not converted by fc2conv-onnx or without geometry, an\n"
         "     unreadable IMAGE or one smaller than the window at a scale asked for, a\n"
         "     --class or --regression the model does not have, or an unusable OUT",
    "6": "out of memory or disk space, nothing written",
    "7": "-o -: standard output closed before the detections were all written",
    "8": "a video source broke off before its end: the records of every frame done\n"
         "     were written, each frame whole",
    "130, 143": KEPT_WHOLE + "; on a video, the records of every frame done are\n"
                "     written, each frame whole",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a model converted by fc2conv-onnx (.onnx)")
    parser.add_argument("images", metavar="IMAGE", nargs="+",
                        help="the pictures (PNG, JPEG, ...): files, folders (the pictures in them, not in their "
                             "subfolders) or quoted patterns ('frames/*.jpg'); one session runs them all")
    parser.add_argument("-o", "--output", metavar="OUT", required=True,
                        help="where to write the detections: .csv for CSV, else JSON; - for JSON on standard output "
                             "(the summary then goes to stderr)")
    parser.add_argument("--draw", metavar="PNG|DIR",
                        help="also draw the boxes, with class and score, over the picture: a PNG for one IMAGE, or a "
                             "folder (made if missing; for one IMAGE, an existing folder or a name ending in /) that "
                             "gets IMAGE's name with .png for each; never a file the command reads")
    pyramid = parser.add_argument_group("scales (default: the picture as it is, scale 1)")
    pyramid.add_argument("--scales", type=flags.floats, metavar="S1,S2,...",
                         help="the scales to run at, e.g. 1,0.5,0.25 (each picture resized by each factor)")
    pyramid.add_argument("--min-size", type=flags.number, metavar="PX",
                         help="the smallest objects to find, in pixels on the window's long side: the largest scale is "
                              "window / PX (default: the window, scale 1)")
    pyramid.add_argument("--max-size", type=flags.number, metavar="PX",
                         help="the largest objects to find (default: the whole picture): the scales go down to window "
                              "/ PX, while the picture still holds a window (and is a size the model takes)")
    pyramid.add_argument("--scale-step", type=flags.number, metavar="F",
                         help="each scale is F times smaller than the last (default 1.25) with --min-size/--max-size")
    pyramid.add_argument("--scale-iou", type=flags.number, metavar="T",
                         help="first suppress overlapping boxes within each scale at T, then across scales at --iou "
                              "(MTCNN's first stage: --scale-iou 0.5 --iou 0.7); default: across scales only")
    video = parser.add_argument_group("video (IMAGE a video file, a stream's URL or a camera; needs PyAV: pip "
                                      "install 'fc2conv-onnx[video]')")
    video.add_argument("--every", type=flags.positive_int, metavar="N",
                       help="run every Nth frame (default: every frame)")
    video.add_argument("--fps", type=flags.number, metavar="R",
                       help="run at most R frames a second of the video's time (instead of --every)")
    video.add_argument("--start", type=flags.number, metavar="S", help="from S seconds into the video (default 0)")
    video.add_argument("--duration", type=flags.number, metavar="S", help="for S seconds (default: to the end)")
    refining = parser.add_argument_group("refining (the classifier's own answer on each proposed window)")
    refining.add_argument("--refine", metavar="ORIGINAL",
                          help="the classifier MODEL was converted from (.onnx): every cell above --proposal-threshold "
                               "is rescored by it on its image crop at its scale, so each box reported carries the "
                               "classifier's own score (and --regression, if given); the map only proposes")
    refining.add_argument("--proposal-threshold", type=flags.number, metavar="P",
                          help="with --refine: a cell is proposed when its map score is above P (default: half of "
                               "--threshold for probabilities; logits need it given)")
    refining.add_argument("--cascade", metavar="FILE",
                          help="further stages that look again at each box kept, each a classifier on the box's image "
                               "crop resized to its input (MTCNN's O-Net after its R-Net): a JSON list of stages keyed "
                               "like these flags, e.g. [{\"model\": \"onet.onnx\", \"class\": 1, \"threshold\": "
                               "0.7, \"regression\": \"dense_5\", \"square\": true}] (docs/detect.md#cascades); a "
                               "box is reported when every stage keeps it, with the last stage's score and box")
    flags.labels_flag(parser)
    flags.transpose_flag(parser, "the boxes are in the picture's frame")
    speed = parser.add_argument_group("cores")
    speed.add_argument("--workers", type=flags.positive_int, metavar="N",
                       help="read and run N pictures (or video frames) at once, one session (default: one per core); "
                            "records stay in input order")
    speed.add_argument("--threads", type=flags.positive_int, metavar="N",
                       help="onnxruntime's threads per run (default: the cores shared between the workers)")
    flags.detection_flags(parser, "")
    flags.picture_flags(parser)
    flags.talk_flags(parser, json=False)
    parser.set_defaults(json=False)


def run(args: argparse.Namespace):
    running.no_stdin_for_pictures(args, args.images)
    videos = [image for image in args.images if is_video(image)]
    if videos and len(args.images) > 1:
        raise UsageError(f"'{printable(videos[0])}' is a video: give one video, or pictures, not both")
    sampled = [f"--{name}" for name in ("every", "fps", "start", "duration") if getattr(args, name) is not None]
    if sampled and not videos:
        raise UsageError(f"{sampled[0]} samples a video's frames: give a video file or stream as IMAGE")
    sizes = {"--min-size": args.min_size, "--max-size": args.max_size, "--scale-step": args.scale_step}
    if args.scales is not None and any(v is not None for v in sizes.values()):
        raise UsageError("--scales and --min-size/--max-size/--scale-step cannot go together")
    running.check_scales(args.scales)
    if args.scale_iou is not None and not 0.0 <= args.scale_iou <= 1.0:
        raise UsageError(f"--scale-iou {args.scale_iou:g} is not between 0 and 1")
    if args.output == STREAM:
        running.check_stdout("the detections", binary=False)
    if videos:
        return _run_video(args, videos[0])
    if args.draw == "":
        raise UsageError("--draw needs a PNG or a folder, not an empty name")
    images = picture_files(args.images)  # folders and patterns: the pictures in them
    several = images != args.images[:1]  # more than one picture, or a folder or pattern of any
    into_folder = bool(args.draw) and (several or os.path.isdir(args.draw) or args.draw.endswith(("/", os.sep)))
    if into_folder and os.path.exists(args.draw) and not os.path.isdir(args.draw):
        raise UsageError(f"--draw {printable(args.draw)}: with several pictures it is a folder, and this is a file")
    settings = running.detection_settings(args)
    drawings = _drawings(images, args.draw, into_folder)
    outputs = ([] if args.output == STREAM else [("-o", args.output)]) + \
        [(f"--draw's drawing of {printable(image)}", drawing) for image, drawing in drawings]
    stages = _stages(args)
    guard.check_outputs(outputs, _reads(args, images, stages), folder_to_make=args.draw if into_folder else None)
    from ..apps.detecting import detect

    found = detect(args.model, images, settings, progress=running.progress("runs"),
                   workers=args.workers, **_detector_options(args, stages))
    made = _make_folders(args.draw) if into_folder else []
    try:
        with writes.together() as group:  # the records and the drawings appear together, or none of them
            if args.output != STREAM:
                group.add(found.text(args.output).encode(), args.output)
                found.written = str(args.output)
            for image, drawing in drawings:
                group.add(found.drawing(image), drawing)
                found.drawn += (str(drawing),)
    except BaseException:
        for folder in reversed(made):  # innermost first: a run leaves no folder it made
            _remove_if_empty(folder)
        raise
    if args.output == STREAM:
        writes.write_stream(found.text().encode(), running.stdout())
        found.written = "standard output"
    return found


def _run_video(args: argparse.Namespace, source: str):
    """detect on a video: the records streamed frame by frame (`video_run`)."""
    from ..apps.detector import Detector
    from ..apps.video import check_drawing_name, is_live

    video_run.check_output(args.output)
    video_run.sampling(args)  # a bad value: a usage error, before anything opens
    if args.draw:
        check_drawing_name(args.draw)
    stages = _stages(args)
    outputs = ([] if args.output == STREAM else [("-o", args.output)]) + \
        ([("--draw's annotated video", args.draw)] if args.draw else [])
    guard.check_outputs(outputs, _reads(args, [] if is_live(source) else [source], stages))
    detector = Detector(args.model, running.detection_settings(args), **_detector_options(args, stages))
    return video_run.run(args, source, detector, detector.use_workers(args.workers))


def _stages(args: argparse.Namespace) -> tuple:
    """The refining flags checked, and the cascade's stages (none without --cascade)."""
    if args.proposal_threshold is not None and args.refine is None:
        raise UsageError("--proposal-threshold sets the refining stage: add --refine ORIGINAL or leave it out")
    return () if args.cascade is None else read_cascade(args.cascade)


def _reads(args: argparse.Namespace, pictures: List[str], stages: tuple) -> guard.Reads:
    """What the run reads, which no output may be: the model, the pictures (or the video file), the original of
    --refine, the cascade's file and models, the labels file."""
    return guard.pictures_read(args.model, pictures, [args.refine, *(s.model for s in stages)], args.labels,
                               args.cascade)


def _detector_options(args: argparse.Namespace, stages: tuple) -> dict:
    """The Detector's options from the flags (detect's and the Detector's own keywords)."""
    return dict(scales=args.scales, min_size=args.min_size, max_size=args.max_size, scale_step=args.scale_step,
                preprocessing=running.preprocessing(args), refine=args.refine,
                proposal_threshold=args.proposal_threshold, transpose=args.transpose,
                labels=None if args.labels is None else read_labels(args.labels), cascade=stages or None,
                scale_iou=args.scale_iou, threads=args.threads)


def _drawings(images: List[str], draw: Optional[str], into_folder: bool) -> List[tuple]:
    """(picture, PNG to draw it in) for --draw: the PNG for one picture, else (or when it names a folder) one
    per picture in the folder, named after the picture."""
    if not draw:
        return []
    if not into_folder:
        return [(images[0], draw)]
    names = [os.path.splitext(os.path.basename(image))[0] + ".png" for image in images]
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    if twice:
        raise UsageError(f"--draw {printable(draw)}: two pictures would be drawn as {printable(twice[0])}; give "
                         "them distinct names")
    return [(image, os.path.join(draw, name)) for image, name in zip(images, names)]


def _make_folders(draw: str) -> List[str]:
    """The --draw folder and any missing folders above it, made once every check has passed (a refused run
    leaves none); returns those this run made, outermost first, so that a run that fails after can remove
    them."""
    missing = []
    folder = os.path.normpath(draw)
    while folder and not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    made: List[str] = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue
        except OSError as error:
            for done in reversed(made):
                _remove_if_empty(done)
            raise InputError(f"--draw {printable(draw)}: cannot make the folder '{printable(folder)}' "
                             f"({error.strerror})") from None
        made.append(folder)
    return made


def _remove_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:  # not empty: another program put something there meanwhile
        pass

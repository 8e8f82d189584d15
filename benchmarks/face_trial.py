"""A real face classifier as a detector: MTCNN's refinement net (24x24 crops, face / not face and 4 box
offsets; the weights facenet-pytorch ships) converted by fc2conv-onnx and run by `detect` on a photograph.

    pip install '.[exporters]' Pillow        # torch, to rebuild the net and export it
    python benchmarks/face_trial.py [--folder /tmp/fc2conv-face]

Downloads (pip download, no install) the facenet-pytorch 2.6.0 wheel for its rnet.pt and the scikit-image
0.26.0 wheel for its astronaut.png (a NASA portrait, public domain), rebuilds the net as facenet-pytorch
defines it (it flattens (W, H, C): Transpose perm [0, 3, 2, 1]), exports it with torch's TorchScript
exporter, converts it, and runs

    fc2conv-onnx detect rnet_fcn.onnx astronaut.png --class 1 --regression reg --min-size 40 --max-size 300
        --threshold 0.95 --scale 1 --mean 127.5 --std 128

(facenet-pytorch's preprocessing: (pixel - 127.5) / 128). Prints the detections; draws faces.png.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

WHEELS = {"facenet-pytorch==2.6.0": "facenet_pytorch/data/rnet.pt",
          "scikit-image==0.26.0": "skimage/data/astronaut.png"}


def fetch(requirement: str, member: str, folder: Path) -> Path:
    """One file out of a wheel pip downloads (for this interpreter's platform)."""
    wheels = folder / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), requirement],
                   check=True)
    name = requirement.split("==")[0].replace("-", "_")
    wheel = next(p for p in wheels.glob("*.whl") if p.name.lower().startswith(name))
    out = folder / Path(member).name
    with zipfile.ZipFile(wheel) as archive:
        out.write_bytes(archive.read(member))
    return out


def export_rnet(weights: Path, out: Path) -> None:
    import torch
    from torch import nn

    class RNet(nn.Module):  # facenet_pytorch.models.mtcnn.RNet
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 28, kernel_size=3), nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(28, 48, kernel_size=3), nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(48, 64, kernel_size=2), nn.PReLU(64)
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1, self.softmax5_1 = nn.Linear(128, 2), nn.Softmax(dim=1)
            self.dense5_2 = nn.Linear(128, 4)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).contiguous()
            x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
            return self.softmax5_1(self.dense5_1(x)), self.dense5_2(x)

    net = RNet()
    net.load_state_dict(torch.load(str(weights)))
    net.eval()
    torch.onnx.export(net, torch.zeros(1, 3, 24, 24), str(out), input_names=["image"], output_names=["prob", "reg"],
                      dynamo=False, opset_version=13)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/fc2conv-face"))
    folder = parser.parse_args().folder
    folder.mkdir(parents=True, exist_ok=True)
    weights, photo = (fetch(requirement, member, folder) for requirement, member in WHEELS.items())
    export_rnet(weights, folder / "rnet.onnx")
    tool = [sys.executable, "-m", "fc2conv_onnx"]
    subprocess.run(tool + ["convert", str(folder / "rnet.onnx"), "-o", str(folder / "rnet_fcn.onnx")], check=True)
    subprocess.run(tool + ["detect", str(folder / "rnet_fcn.onnx"), str(photo), "-o", "-", "--class", "1",
                           "--regression", "reg", "--min-size", "40", "--max-size", "300", "--threshold", "0.95",
                           "--scale", "1", "--mean", "127.5", "--std", "128", "--draw", str(folder / "faces.png")],
                   check=True)


if __name__ == "__main__":
    main()

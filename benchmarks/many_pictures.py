"""`detect FOLDER -o OUT --draw DIR` on folders of n and 2n pictures, side by side in one run: the cost per
picture must not grow with the folder (the output checks compared every output with every input, and every
drawing listed the whole drawing folder: 600 pictures took 18 s of checks, 1200 took 71 s, 10,000 with
--draw 163 s in all).

    python benchmarks/many_pictures.py [--count 1200]      (about 20 s at 1200)

Prints, for n and 2n: the output checks alone (guard.check_outputs over n drawings against n pictures), and
the whole command with --draw and without it, as seconds and per picture; then the ratios 2n / n (2.0 is
linear; a quadratic part drives it towards 4).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import fc2conv_onnx  # noqa: E402
from fc2conv_onnx.apps.pictures import picture_files, read_image  # noqa: E402
from fc2conv_onnx.model import guard  # noqa: E402


def _folder(where: Path, count: int) -> Path:
    folder = where / f"pictures{count}"
    folder.mkdir()
    crop = read_image(ROOT / "fixtures" / "disks.png").convert("RGB").crop((144, 144, 208, 208))  # one disk
    for index in range(count):
        crop.save(folder / f"f{index:05d}.png")
    return folder


def _checks(model: Path, folder: Path, draw: Path) -> float:
    images = picture_files([str(folder)])
    started = time.perf_counter()
    outputs = [(f"drawing {i}", draw / (Path(image).stem + ".png")) for i, image in enumerate(images)]
    guard.check_outputs(outputs, guard.pictures_read(model, images), folder_to_make=draw)
    return time.perf_counter() - started


def _command(model: Path, folder: Path, out: Path, draw: Path = None) -> float:
    args = [sys.executable, "-m", "fc2conv_onnx", "detect", str(model), str(folder), "-o", str(out), "-q"]
    args += ["--draw", str(draw)] if draw else []
    started = time.perf_counter()
    subprocess.run(args, check=True, cwd=ROOT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1200, help="n: the smaller folder's pictures (default 1200)")
    count = parser.parse_args().count
    with tempfile.TemporaryDirectory() as name:
        where = Path(name)
        model = where / "spot_finder_fcn.onnx"
        fc2conv_onnx.convert_file(ROOT / "fixtures" / "spot_finder.onnx", model)
        figures = {}
        for n in (count, 2 * count):
            folder = _folder(where, n)
            figures[n] = (_checks(model, folder, where / f"unmade{n}"),
                          _command(model, folder, where / f"found{n}.json", where / f"drawn{n}"),
                          _command(model, folder, where / f"plain{n}.json"))
            print(f"{n:6d} pictures: checks {figures[n][0]:.3f} s, detect --draw {figures[n][1]:.1f} s "
                  f"({1000 * figures[n][1] / n:.2f} ms a picture), without --draw {figures[n][2]:.1f} s "
                  f"({1000 * figures[n][2] / n:.2f} ms a picture)")
        ratios = [figures[2 * count][k] / figures[count][k] for k in range(3)]
        print(f"2n / n: checks {ratios[0]:.2f}x, detect --draw {ratios[1]:.2f}x, without --draw {ratios[2]:.2f}x "
              "(2.00x is linear)")


if __name__ == "__main__":
    main()

"""detect, heatmap and --help start without onnx (a second to import, mostly ml_dtypes): they run a
converted model in onnxruntime and read its geometry from the model's metadata. The process is what is
tested here, so these run in one of their own."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import FIXTURES

_HEAVY = ("onnx", "onnx_graphsurgeon", "ml_dtypes")

_PROGRAM = """
import sys
from fc2conv_onnx.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as done:  # --help
    code = done.code
print(code, [m for m in {heavy!r} if m in sys.modules], file=sys.stderr)
"""


def _run(*args, heavy=_HEAVY):
    done = subprocess.run([sys.executable, "-c", _PROGRAM.format(heavy=heavy), *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args", [
    ("--help",), ("detect", "--help"), ("heatmap", "--help"),
    ("detect", "{model}", FIXTURES / "disks.png", "--min-size", "32", "--max-size", "128", "-o", "{out}/d.json"),
    ("heatmap", "{model}", FIXTURES / "disks.png", "-o", "{out}/h.png"),
])
def test_running_a_converted_model_and_asking_for_help_do_not_import_onnx(args, spot_finder, tmp_path):
    filled = [str(a).format(model=spot_finder, out=tmp_path) for a in args]
    assert _run(*filled) == "0 []"


def test_converting_imports_onnx_as_it_must(tmp_path):
    """The check above can fail: a command that reads a model with onnx is seen doing so."""
    assert _run("inspect", FIXTURES / "spot_finder.onnx") == f"0 {list(_HEAVY)}"


def test_detect_loads_pillows_drawing_only_to_draw(spot_finder, tmp_path):
    """ImageDraw loads FreeType (12 ms of a run): detect without --draw does without it."""
    plain = ("detect", spot_finder, FIXTURES / "disks.png", "-o", tmp_path / "d.json")
    assert _run(*plain, heavy=("PIL.ImageDraw",)) == "0 []"
    assert _run(*plain, "--draw", tmp_path / "d.png", heavy=("PIL.ImageDraw",)) == "0 ['PIL.ImageDraw']"


"""The source distribution carries what its tests need, its license and its type marker: every test is
collected in an unpacked sdist, and a command-line test passes there, against the sdist's own package."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("sdist")
    done = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    archive = next(out.glob("fc2conv_onnx-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(out)
    return next(p for p in out.iterdir() if p.is_dir())


def test_the_sdist_holds_what_its_tests_need(unpacked):
    for name in ("LICENSE", "README.md", "fc2conv_onnx/py.typed", "tests/conftest.py", "tests/equivalence.py",
                 "fixtures/builders.py", "fixtures/dress_detector.onnx", "fixtures/exported/MANIFEST.json",
                 "docs/heatmap.png", ".ci/run"):
        assert (unpacked / name).is_file(), name
    tracked = subprocess.run(["git", "ls-files", "tests", "fixtures"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode == 0:  # every tracked test and fixture file
        missing = [name for name in tracked.stdout.split() if not (unpacked / name).exists()]
        assert not missing


def test_pytest_runs_in_the_unpacked_sdist(unpacked):
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                               cwd=unpacked, capture_output=True, text=True, env=env, timeout=300)
    summary = collected.stdout.strip().splitlines()[-1]  # "N tests collected in ...", or "... N errors ..."
    assert collected.returncode == 0 and "collected" in summary and "error" not in summary, collected.stdout[-2000:]
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_cli.py::test_convert_writes_an_equivalent_model_and_says_what_it_did"],
                         cwd=unpacked, capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 0, ran.stdout[-2000:]
    assert str(unpacked) in subprocess.run(
        [sys.executable, "-c", "import fc2conv_onnx; print(fc2conv_onnx.__file__)"], cwd=unpacked,
        capture_output=True, text=True, env=env).stdout  # the sdist's own package was tested

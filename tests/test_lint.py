"""The project's hygiene as a test: ruff, configured in pyproject.toml ([tool.ruff]: pycodestyle, pyflakes and
import order, lines of 120), finds nothing in the package, the tests, the benchmarks or the fixtures' scripts.
`ruff check --fix` sorts imports; the test extra pins ruff, so a newer release's rules are a change to make."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    pytest.importorskip("ruff")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                           "fc2conv_onnx", "tests", "benchmarks", "fixtures"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(FIXTURES))  # builders.py: the framework-free model builders


@pytest.fixture
def fixture_path():
    def path(stem: str) -> Path:
        return FIXTURES / f"{stem}.onnx"

    return path


@pytest.fixture(scope="session")
def spot_finder(tmp_path_factory):
    """The spot finder fixture converted once for the run (read only: a test that changes it copies it first)."""
    import fc2conv_onnx

    out = tmp_path_factory.mktemp("spot_finder") / "spot_finder_fcn.onnx"
    fc2conv_onnx.convert_file(FIXTURES / "spot_finder.onnx", out)
    return out

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

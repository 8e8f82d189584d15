"""Every test file passes when run on its own (pytest's order, or an import another file happens to make, must
never decide a result). Heavy: each file in a process of its own, about 4 minutes; `pytest -m slow`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import ENV

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.name for p in TESTS.glob("test_*.py") if p.name != "test_alone.py"))
def test_each_file_passes_alone(name):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(TESTS / name)],
                          capture_output=True, text=True, env=ENV, timeout=900, cwd=TESTS.parent)
    assert done.returncode in (0, 5), done.stdout[-3000:]  # 5: every test of the file is marked slow

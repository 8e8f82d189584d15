"""The package type-checks: mypy, configured in pyproject.toml ([tool.mypy]), finds no issue. Its result
depends on mypy's and numpy's versions; the test extra pins mypy, and CI installs the newest numpy."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_issue():
    pytest.importorskip("mypy")
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", "/dev/null"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert done.returncode == 0 and not errors, "\n".join(errors[:20]) or done.stderr[-2000:]

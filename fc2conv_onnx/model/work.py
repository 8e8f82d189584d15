"""How often a run changes the graph's form or starts onnxruntime: graph imports and exports (graphsurgeon),
shape inferences (onnx) and sessions. Each is costly on a large model, and each was once done many times
over; `-v` prints the counts of a conversion and tests/test_package_layout.py holds them down."""
from __future__ import annotations

from collections import Counter
from typing import Dict

IMPORTS, EXPORTS, INFERENCES, SESSIONS = "graph imports", "graph exports", "shape inferences", "sessions"

_counts: Counter = Counter()


def count(what: str) -> None:
    _counts[what] += 1


def start() -> None:
    """Count from zero (a conversion starts)."""
    _counts.clear()


def counts() -> Dict[str, int]:
    return {what: _counts[what] for what in (IMPORTS, EXPORTS, INFERENCES, SESSIONS)}


def describe() -> str:
    return ", ".join(f"{number} {what}" for what, number in counts().items())

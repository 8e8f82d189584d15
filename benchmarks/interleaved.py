"""Timing several ways of doing one job fairly: interleaved rounds, the order rotated from round to round, so
that no way always runs first, after the same neighbour, or while the machine warms up."""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Mapping, TypeVar

T = TypeVar("T")


def interleaved(ways: Mapping[str, Callable[[], T]], rounds: int) -> Dict[str, List[T]]:
    """What each way returns, once per round, calling them in an order rotated each round."""
    results: Dict[str, List[T]] = {name: [] for name in ways}
    names = list(ways)
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            results[name].append(ways[name]())
    return results


def seconds(way: Callable[[], object], pause: float = 0.0) -> Callable[[], float]:
    """A way that, called, sleeps `pause` (the previous way's threads settle) and returns how long `way` took."""
    def timed() -> float:
        time.sleep(pause)
        start = time.perf_counter()
        way()
        return time.perf_counter() - start
    return timed

"""Pictures (or frames) in parallel inside one process: a few worker threads each decode, preprocess and run one
picture at a time on the one shared session, the results handed back in input order. Pillow's decoding, numpy
and onnxruntime's runs release the GIL, so on a small machine this keeps the cores busy where one picture after
another leaves them waiting on each other (decoding while the model spins). At most `ahead` items are in flight,
so memory stays bounded whatever the folder or stream.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Deque, Iterable, Iterator, Optional, Tuple, TypeVar

from ..model import arguments

T = TypeVar("T")
R = TypeVar("R")


def cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def plan_threads(workers: Optional[int], threads: Optional[int], items: Optional[int] = None) -> Tuple[int, int]:
    """(workers, onnxruntime threads per run): given ones as given; by default one worker per core (no more than
    there are items) and the cores shared between them."""
    available = cores()
    if workers is None:
        workers = max(1, min(available, items if items is not None else available))
    else:
        workers = arguments.whole(workers, "workers", 1, arguments.MAX_THREADS)
    if threads is None:
        threads = max(1, available // workers)
    return workers, threads


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int,
                ahead: Optional[int] = None) -> Iterator[R]:
    """function(item) for each item, computed by `workers` threads, yielded in input order; at most `ahead`
    (default 2 * workers) items taken from `items` before their results are yielded. With one worker it is a
    plain loop in the calling thread. A failure is raised where its item's result would come; the items not
    started then are dropped."""
    if workers <= 1:
        for item in items:
            yield function(item)
        return
    ahead = ahead or 2 * workers
    pending: Deque["Future[R]"] = deque()
    source = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fc2conv-onnx") as pool:
        try:
            for item in source:
                pending.append(pool.submit(function, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # an error or an interruption: what has not started never will
                future.cancel()

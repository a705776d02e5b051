"""Work a few items ahead of its consumer in threads, results in order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(
    fn: Callable[[T], R], items: Iterable[T], workers: int, depth: int, name: str = "fascicle"
) -> Iterator[R]:
    """``fn(item)`` for every item, in order, computed by ``workers`` threads at most ``depth``
    items ahead of the consumer (0 workers: in line, nothing ahead)."""
    if workers == 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
        ahead: deque = deque()
        for item in items:
            ahead.append(pool.submit(fn, item))
            if len(ahead) > depth:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()

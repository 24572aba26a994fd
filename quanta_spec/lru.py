"""A small least-recently-used cache for the process-wide caches (TF-free).

Workers run many jobs in one process: sources, decoded datasets, compiled models and
test metrics are worth keeping between jobs, but only a few of each, or memory grows
with every new weights file or task.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

__all__ = ["LRU"]


class LRU(Generic[K, V]):
    """At most `size` values by key; the least recently used goes first (0 keeps none).

    With `weigh` (a value's size in bytes), also at most `max_bytes` in all (None: no
    bound): a value heavier than the bound alone is returned by `get` but not kept.
    Not locked: callers that share one between threads hold their own lock.
    """

    def __init__(self, size: int, weigh: Callable[[V], int] | None = None,
                 max_bytes: int | None = None) -> None:
        if size < 0:
            raise ValueError(f"an LRU cache holds at least 0 items, got {size}")
        self.size = size
        self.weigh = weigh
        self.max_bytes = max_bytes
        self.bytes = 0  # what the values kept weigh (0 without `weigh`)
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The value kept for `key`, or `make()`'s, which is then kept."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self.put(key, value)
        return value

    def peek(self, key: K) -> V | None:
        """The value kept for `key` (now the most recently used), or None."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: K, value: V) -> None:
        if key in self._items:
            self.bytes -= self._weight(self._items.pop(key))
        self._items[key] = value
        self.bytes += self._weight(value)
        self._trim()

    def resize(self, size: int, max_bytes: int | None = None) -> None:
        """Keep at most `size` values (and `max_bytes`, None: no bound) from now on,
        dropping the oldest beyond them."""
        if size < 0:
            raise ValueError(f"an LRU cache holds at least 0 items, got {size}")
        self.size, self.max_bytes = size, max_bytes
        self._trim()

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def _weight(self, value: V) -> int:
        return self.weigh(value) if self.weigh is not None else 0

    def _trim(self) -> None:
        while self._items and (len(self._items) > self.size or (
                self.max_bytes is not None and self.bytes > self.max_bytes)):
            _, value = self._items.popitem(last=False)
            self.bytes -= self._weight(value)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._items))

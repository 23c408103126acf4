"""A cache keyed by the identity of its arguments, for values derived from a meter type's plan.

All jobs of a type carry the very same `requests` and `registers` tuples (the scheduler builds
them once per type, a worker decodes a known plan to the tuples it built before). Hashing 85
registers to look a derived value up in an `lru_cache` would cost more than the lookup saves;
comparing identities costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ByIdentity(Generic[T]):
    """`cache(*args)` is `compute(*args)`, computed once per distinct set of argument objects.

    The arguments are kept alive with their value, so an id is never reused for another object
    while its entry exists. The cache empties itself when it holds `size` entries.
    """

    def __init__(self, compute: Callable[..., T], size: int = 1024) -> None:
        self._compute = compute
        self._size = size
        self._entries: dict[tuple[int, ...], tuple[tuple[Any, ...], T]] = {}

    def __call__(self, *args: Any) -> T:
        key = tuple(map(id, args))
        entry = self._entries.get(key)
        if entry is not None:
            return entry[1]
        value = self._compute(*args)
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[key] = (args, value)
        return value

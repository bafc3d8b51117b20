"""A cache for functions of request text, bounded in bytes, not only entries.

Values such as user agents, hosts and routes repeat from request to request,
so the stores cache what they make of them. A client can send a new 8 kB
header every time, though: an entry-bounded cache then holds thousands of
large strings. Here a long string (over ``max_length`` characters, longer
than real values of its kind) counts toward a budget of characters, and the
cache starts afresh when the budget is spent; short ones fill it as usual.
So it holds at most ``maxsize`` short keys and ``budget`` characters of long
ones, and their values.

A hit costs what ``functools.lru_cache`` costs (C code, no Python frame):
the accounting runs on misses only, inside the cached function.
"""

from __future__ import annotations

import functools
import typing as t
from collections.abc import Callable

__all__ = ["LONG_TEXT", "LONG_TEXT_BUDGET", "text_cache"]

#: Longer strings count toward the budget. Real user agents are 100-300
#: characters, hosts and routes shorter.
LONG_TEXT = 512
#: Characters of long strings a cache may take in before it is cleared.
LONG_TEXT_BUDGET = 1_000_000

_R = t.TypeVar("_R")


def text_cache(
    maxsize: int, max_length: int = LONG_TEXT, budget: int = LONG_TEXT_BUDGET
) -> Callable[[Callable[[t.Any], _R]], Callable[[t.Any], _R]]:
    """Decorate a one-argument function of text (or ``None``) with an LRU
    cache of ``maxsize`` entries that is cleared whenever strings over
    ``max_length`` characters have brought ``budget`` characters into it."""

    def decorate(function: Callable[[t.Any], _R]) -> Callable[[t.Any], _R]:
        taken_in = 0

        def compute(value: t.Any) -> _R:
            # Runs on a miss only. The count is shared by the worker threads
            # without a lock: a lost update only moves the next clear a little.
            nonlocal taken_in
            if isinstance(value, str) and len(value) > max_length:
                taken_in += len(value)
                if taken_in > budget:
                    taken_in = 0
                    cached.cache_clear()
            return function(value)

        cached = functools.lru_cache(maxsize=maxsize)(compute)
        functools.update_wrapper(cached, function)
        return cached

    return decorate

"""A cache for functions of request text, bounded in bytes, not only entries.

Values such as user agents, hosts and routes repeat from request to request,
so the stores cache what they make of them. A client can send a new 8 kB
header every time, though: an entry-bounded cache then holds thousands of
large strings. Text longer than a real value of its kind is computed every
time instead of cached, so a cache holds at most ``maxsize`` keys of at most
``max_length`` characters each.
"""

from __future__ import annotations

import functools
import typing as t
from collections.abc import Callable

__all__ = ["MAX_CACHED_LENGTH", "text_cache"]

#: Longer strings are not cached. Real user agents are 100-300 characters,
#: hosts and routes shorter.
MAX_CACHED_LENGTH = 512

_R = t.TypeVar("_R")


def text_cache(
    maxsize: int, max_length: int = MAX_CACHED_LENGTH
) -> Callable[[Callable[[t.Any], _R]], Callable[[t.Any], _R]]:
    """Decorate a one-argument function of text (or ``None``) with an LRU
    cache of ``maxsize`` entries that leaves out strings over ``max_length``
    characters: at most ``maxsize * max_length`` characters of keys, and
    their values."""

    def decorate(function: Callable[[t.Any], _R]) -> Callable[[t.Any], _R]:
        cached = functools.lru_cache(maxsize=maxsize)(function)

        @functools.wraps(function)
        def lookup(value: t.Any) -> _R:
            if isinstance(value, str) and len(value) > max_length:
                return function(value)
            return cached(value)

        lookup.cache_info = cached.cache_info  # type: ignore[attr-defined]
        lookup.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return lookup

    return decorate

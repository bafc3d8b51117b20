"""The one rule for each kind of setting, in config and in arguments alike."""

from __future__ import annotations

__all__ = ["check_positive_int", "check_positive_seconds"]


def check_positive_int(value: object, name: str) -> int:
    """``value`` if it is a positive ``int`` (not a bool), else a ``ValueError``
    naming ``name``: the one rule for sizes, in config and in arguments."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def check_positive_seconds(value: object, name: str) -> float:
    """``value`` as a float if it is a positive number, else a ``ValueError``
    naming ``name``: the one rule for durations, in config and in arguments."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}.")
    return float(value)

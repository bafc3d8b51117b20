"""Running a method in the child after ``os.fork`` without keeping its object alive."""

from __future__ import annotations

import os
import typing as t
import weakref

__all__ = ["after_fork_in_child"]


def after_fork_in_child(method: t.Callable[[], None]) -> None:
    """Call the bound ``method`` in every child process forked from now on,
    for as long as its object lives.

    ``os.register_at_fork`` holds its callables for the life of the process
    and cannot unregister them; a weak reference lets the object go.
    """
    if not hasattr(os, "register_at_fork"):  # not on Windows
        return
    ref = weakref.WeakMethod(method)

    def call_if_alive() -> None:
        alive = ref()
        if alive is not None:
            alive()

    os.register_at_fork(after_in_child=call_if_alive)

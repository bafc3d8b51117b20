"""Stopping processors together: within one time budget, and at exit."""

from __future__ import annotations

import atexit
import threading
import time
import typing as t
import weakref

__all__ = ["EXIT_TIMEOUT", "Stoppable", "live_processors", "shutdown_in_parallel"]

#: Seconds the processors still running at interpreter exit get, in all.
EXIT_TIMEOUT = 10.0


class Stoppable(t.Protocol):
    def shutdown(self, timeout: float | None = ...) -> None: ...


#: The processors started and not shut down yet, which exit stops.
live_processors: weakref.WeakSet[Stoppable] = weakref.WeakSet()


def shutdown_in_parallel(
    shutdowns: t.Iterable[t.Callable[[float | None], None]], timeout: float | None
) -> None:
    """Call every ``shutdown(timeout)`` at once, each in a thread of its own,
    and wait for them within one budget of ``timeout`` seconds in all: an
    app's stores stop together, within a server's graceful timeout, rather
    than one after another."""
    threads = [
        threading.Thread(target=shutdown, args=(timeout,), name="flask-traffic shutdown")
        for shutdown in shutdowns
    ]
    for thread in threads:
        thread.start()
    # Each processor gives up at its deadline itself; the margin lets it
    # count and report what it drops (or spills).
    deadline = None if timeout is None else time.monotonic() + timeout + 1.0
    for thread in threads:
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


@atexit.register
def _shutdown_all() -> None:
    shutdown_in_parallel([p.shutdown for p in list(live_processors)], EXIT_TIMEOUT)

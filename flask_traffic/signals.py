"""The signal every finished request is announced on."""

from __future__ import annotations

import inspect
import typing as t
import weakref

from blinker import Namespace

__all__ = ["request_traffic"]

_signals = Namespace()

request_traffic = _signals.signal(
    "request-traffic",
    doc="""Sent once per finished request, after the response is made.

    The sender is the Flask application (the real object, not the
    ``current_app`` proxy); receivers get the :class:`~flask_traffic.TrafficRecord`
    as the ``record`` keyword: ``def handler(sender, record, **extra)``.

    Receivers run on the request thread, outside the request context: keep
    them fast and read what they need from the record. A receiver that raises
    is logged on the ``flask_traffic`` logger; the request is not affected
    and the other receivers still run.
    """,
)


# blinker works out a sender's receivers on every send (a set union and a
# weakref check per receiver, ~2 us cold); request_traffic is sent on every
# request and its receivers rarely change, so the list is kept per sender and
# rebuilt when blinker reports a connect or disconnect, or when a weakly held
# receiver has died (blinker drops those without a signal).
_generation = 0


def _changed(signal: object, /, **extra: object) -> None:
    global _generation
    _generation += 1


request_traffic.receiver_connected.connect(_changed, sender=request_traffic, weak=False)
request_traffic.receiver_disconnected.connect(_changed, sender=request_traffic, weak=False)

_Ref = t.Callable[[], t.Callable[..., t.Any] | None]


def _ref(receiver: t.Callable[..., t.Any]) -> _Ref:
    # Weak where possible: the cache must not keep alive a receiver that
    # blinker holds weakly. One that blinker holds strongly stays alive anyway.
    try:
        if inspect.ismethod(receiver):
            return weakref.WeakMethod(receiver)
        return weakref.ref(receiver)
    except TypeError:
        return lambda: receiver


class ReceiverCache:
    """The receivers of :data:`request_traffic` for one sender, kept between changes."""

    __slots__ = ("_generation", "_refs", "_sender")

    def __init__(self, sender: object) -> None:
        self._sender = weakref.ref(sender)
        self._generation = -1
        self._refs: tuple[_Ref, ...] = ()

    def receivers(self) -> list[t.Callable[..., t.Any]]:
        """The live receivers, as ``request_traffic.receivers_for(sender)`` gives them."""
        if self._generation != _generation:
            sender = self._sender()
            if sender is None:
                return []
            self._generation = _generation
            self._refs = tuple(_ref(r) for r in request_traffic.receivers_for(sender))
        receivers = [ref() for ref in self._refs]
        if None in receivers:
            self._generation = -1
            return [r for r in receivers if r is not None]
        return t.cast("list[t.Callable[..., t.Any]]", receivers)

"""The signal every finished request is announced on."""

from __future__ import annotations

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

"""Store and monitor the traffic of a Flask app.

::

    from flask_traffic import Traffic
    from flask_traffic.stores import JSONStore

    traffic = Traffic()
    traffic.init_app(app, stores=JSONStore())
"""

from __future__ import annotations

from .extension import Traffic
from .policy import LogPolicy
from .record import FIELD_NAMES, FIELDS, Field, TrafficRecord
from .signals import request_traffic

__all__ = [
    "FIELDS",
    "FIELD_NAMES",
    "Field",
    "LogPolicy",
    "Traffic",
    "TrafficRecord",
    "request_traffic",
]

"""Send the traffic flask-traffic records to an OpenTelemetry collector.

::

    from flask_traffic import Traffic
    from flask_traffic.stores import JSONStore
    from flask_traffic_otel import OTelExporter

    traffic = Traffic()
    traffic.init_app(app, stores=[JSONStore(), OTelExporter()])

Each request becomes an HTTP server span, and a point of the
``http.server.request.duration`` histogram, exported over OTLP/HTTP.
"""

from __future__ import annotations

from ._exporter import OTelExporter
from ._version import __version__

__all__ = ["OTelExporter", "__version__"]

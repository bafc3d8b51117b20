"""The dashboard's blueprint: the page, and the read-only JSON API it uses."""

from __future__ import annotations

import time
import typing as t
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from flask import Blueprint, Response, jsonify, render_template, request, stream_with_context

from ._export import FORMATS, export_chunks
from ._figures import breakdown, filtered_summary, records, scan_view
from ._params import BadParameter, View, int_parameter, parse_view
from ._security import add_headers, gate
from ._state import current_state

__all__ = ["BLUEPRINT_NAME", "make_blueprint"]

#: The name of the dashboard's blueprint (its endpoints are ``traffic_dashboard.*``).
BLUEPRINT_NAME = "traffic_dashboard"
_HERE = Path(__file__).parent
_RECORDS_DEFAULT = 50
_RECORDS_MOST = 1000
_OFFSET_MOST = 100_000


def _timed(action: Callable[[], t.Any]) -> Response:
    """``action()``'s result as JSON, with how long the store took in a
    ``Server-Timing`` header (the page shows it)."""
    started = time.perf_counter()
    result = action()
    elapsed = (time.perf_counter() - started) * 1000
    response = jsonify(result)
    name = current_state().store.name.replace('"', "'")
    response.headers["Server-Timing"] = f'store;dur={elapsed:.1f};desc="{name}"'
    return response


def _view(*allowed: str) -> View:
    return parse_view(request.args, current_state().store.fields, allowed)


def page() -> str:
    """The dashboard page: a shell, filled in by its script from the API."""
    store = current_state().store
    return render_template(
        f"{BLUEPRINT_NAME}/index.html", store_name=store.name, fields=" ".join(store.fields)
    )


def api_summary() -> Response:
    """``store.summary(since, until)``, of the filtered rows when filters are given."""
    view = _view()
    return _timed(lambda: filtered_summary(current_state().store, view))


def api_records() -> Response:
    """``store.read(limit, since=, until=, where=)``, newest first, ``offset`` skipped."""
    limit = int_parameter(request.args, "limit", _RECORDS_DEFAULT, _RECORDS_MOST)
    offset = int_parameter(request.args, "offset", 0, _OFFSET_MOST)
    view = _view("limit", "offset")
    return _timed(lambda: records(current_state().store, view, limit, offset))


def api_breakdown() -> Response:
    """Per bucket status classes and percentiles, overall percentiles, errors."""
    view = _view()
    return _timed(lambda: breakdown(current_state().store, view))


def api_export() -> Response:
    """The view's records, oldest first, as CSV or JSON Lines, streamed."""
    format_name = request.args.get("format", "csv")
    if format_name not in FORMATS:
        raise BadParameter("format", f"format must be csv or jsonl, not {format_name!r}.")
    view = _view("format")
    store = current_state().store
    rows = scan_view(store, view, oldest_first=True)
    mimetype, extension = FORMATS[format_name]

    def generate() -> Iterator[bytes]:
        for piece in export_chunks(format_name, store.fields, rows):
            # surrogatepass: a lone surrogate kept by a store is exported as
            # the CLI exports it, rather than failing the download.
            yield piece.encode("utf-8", "surrogatepass")

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    response = Response(stream_with_context(generate()), mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="traffic-{stamp}.{extension}"'
    return response


def _bad_parameter(error: BadParameter) -> tuple[Response, int]:
    return jsonify(error.as_json()), 400


def make_blueprint() -> Blueprint:
    """A new dashboard blueprint (one per app: each has its own prefix)."""
    blueprint = Blueprint(
        BLUEPRINT_NAME,
        __name__,
        static_folder=str(_HERE / "static"),
        template_folder=str(_HERE / "templates"),
    )
    blueprint.before_request(gate)
    blueprint.after_request(add_headers)
    blueprint.register_error_handler(BadParameter, _bad_parameter)
    blueprint.add_url_rule("/", "page", page)
    blueprint.add_url_rule("/api/summary", "summary", api_summary)
    blueprint.add_url_rule("/api/records", "records", api_records)
    blueprint.add_url_rule("/api/breakdown", "breakdown", api_breakdown)
    blueprint.add_url_rule("/api/export", "export", api_export)
    return blueprint

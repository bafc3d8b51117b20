"""The gate and the headers of every dashboard response: page, API, static files."""

from __future__ import annotations

from flask import Response, request

from ..middleware import SKIP_ENVIRON_KEY
from ._auth import PasswordCheck
from ._state import current_state

__all__ = ["CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "add_headers", "gate"]

#: Scripts, styles, images and API calls from the app only; no inline code,
#: no eval, no frames, no <base>, forms only back to the app.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

#: Sent with every dashboard response.
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def gate() -> Response | None:
    """``before_request``: refuse the request unless ``authorize`` allows it;
    an allowed one is then left unrecorded unless ``record_self``."""
    state = current_state()
    if not state.authorize():
        if state.uses_password:
            return PasswordCheck.challenge()
        return Response("Not allowed to see the traffic dashboard.\n", 403, mimetype="text/plain")
    if not state.record_self:
        request.environ[SKIP_ENVIRON_KEY] = True
    return None


def add_headers(response: Response) -> Response:
    """``after_request``: the security headers, and ``no-store`` on everything
    but the static files (the API's answers and the page are never cached)."""
    response.headers.update(SECURITY_HEADERS)
    if not (request.endpoint or "").endswith(".static"):
        response.headers["Cache-Control"] = "no-store"
    return response

"""Apps with known traffic for the dashboard's tests (API and browser)."""

from __future__ import annotations

import base64
import typing as t

from flask import Flask, abort
from werkzeug.security import generate_password_hash

from flask_traffic import Traffic
from flask_traffic.dashboard import Dashboard
from flask_traffic.stores import Store

#: Debian's Chromium, and the flags it needs here: run as root, no GPU, and
#: none of its own network traffic (this machine's network is closed).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

PASSWORD = "correct horse battery"
# Few iterations: the tests check the login, not the hash's strength.
PASSWORD_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
HOSTILE_AGENT = "<img src=x onerror=\"document.title='pwned-agent'\">"
HOSTILE_REFERRER = "javascript:document.title='pwned-referrer'"
HOSTILE_PATH = "/echo/</script><script>document.title='pwned-path'</script>"
HOSTILE_EXCEPTION = "Hostile('\u2028<b onmouseover=\"document.title=1\">line\u2029</b>')"


def basic(password: str = PASSWORD, user: str = "anyone") -> dict[str, str]:
    """The ``Authorization`` header of an HTTP Basic login."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class HostileError(Exception):
    """An exception whose repr holds markup and line separators."""

    def __repr__(self) -> str:
        return HOSTILE_EXCEPTION


def make_app(store: Store, **dashboard: t.Any) -> Flask:
    """An app recording into ``store``, with the dashboard behind ``PASSWORD``
    unless ``dashboard`` says otherwise."""
    app = Flask("dashboard_test")
    app.config["TRAFFIC_SCHEDULE_DELAY"] = 0.05
    app.config["TRAFFIC_DASHBOARD_PASSWORD_HASH"] = PASSWORD_HASH
    app.testing = True
    # Unhandled errors answer 500, as in production, rather than reach the test.
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.route("/")
    def index() -> str:
        return "hello"

    @app.route("/item/<int:n>")
    def item(n: int) -> dict[str, int]:
        return {"n": n}

    @app.route("/missing")
    def missing() -> str:
        abort(404)

    @app.route("/created", methods=["POST"])
    def created() -> tuple[str, int]:
        return "made", 201

    @app.route("/cached")
    def cached() -> tuple[str, int]:
        return "", 304

    @app.route("/boom")
    def boom() -> str:
        raise RuntimeError("database down")

    @app.route("/hostile")
    def hostile() -> str:
        raise HostileError()

    @app.route("/echo/<path:rest>")
    def echo(rest: str) -> str:
        return "echo"

    Traffic(app, stores=[store])
    Dashboard(app, **dashboard)
    return app


#: (method, path, environ) sent by :func:`send_known_traffic`, oldest first.
KNOWN_TRAFFIC: list[tuple[str, str, dict[str, str]]] = [
    *[("GET", "/", {"HTTP_USER_AGENT": FIREFOX})] * 4,
    *[("GET", f"/item/{n}", {"HTTP_USER_AGENT": CHROME}) for n in range(6)],
    ("GET", "/item/1", {"HTTP_USER_AGENT": CHROME, "HTTP_REFERER": "https://example.com/a"}),
    ("GET", "/missing", {"HTTP_USER_AGENT": "curl/8.5.0"}),
    ("GET", "/missing", {"HTTP_USER_AGENT": "curl/8.5.0"}),
    ("GET", "/no/such/page", {"HTTP_USER_AGENT": FIREFOX}),
    ("POST", "/created", {"HTTP_USER_AGENT": FIREFOX}),
    ("GET", "/cached", {"HTTP_USER_AGENT": FIREFOX}),
    ("GET", "/boom", {"HTTP_USER_AGENT": CHROME}),
    ("GET", "/boom", {"HTTP_USER_AGENT": FIREFOX}),
]

#: The hostile strings, each in the field a browser test looks for it.
HOSTILE_TRAFFIC: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/", {"HTTP_USER_AGENT": HOSTILE_AGENT}),
    ("GET", "/", {"HTTP_REFERER": HOSTILE_REFERRER, "HTTP_USER_AGENT": FIREFOX}),
    ("GET", HOSTILE_PATH, {"HTTP_USER_AGENT": FIREFOX}),
    ("GET", "/hostile", {"HTTP_USER_AGENT": FIREFOX}),
]


def send(app: Flask, requests: list[tuple[str, str, dict[str, str]]]) -> None:
    """Send ``requests`` through the test client (unhandled errors answer 500)."""
    client = app.test_client()
    for method, path, environ in requests:
        client.open(path, method=method, environ_overrides=environ)

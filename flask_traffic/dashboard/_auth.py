"""Who may see the dashboard: the app's own ``authorize`` callable, or HTTP
Basic against a Werkzeug password hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import typing as t
from collections.abc import Callable

from flask import Response, request
from werkzeug.security import check_password_hash

__all__ = ["PASSWORD_CONFIG_KEY", "Authorize", "PasswordCheck", "check_password_hash_text"]

#: The config key that holds the dashboard's password hash.
PASSWORD_CONFIG_KEY = "TRAFFIC_DASHBOARD_PASSWORD_HASH"

#: What ``authorize=`` takes: a callable with no arguments, called in the
#: request context; falsy refuses the request.
Authorize = Callable[[], t.Any]

_HASH_METHODS = ("scrypt", "pbkdf2")
_REALM = 'Basic realm="flask-traffic dashboard", charset="UTF-8"'
# A password check costs tens of milliseconds (that is the point of scrypt);
# the page makes several requests every few seconds, so a header that passed
# is remembered, as a keyed digest only, for a while.
_REMEMBER_SECONDS = 300.0
_REMEMBER_MOST = 64


def check_password_hash_text(value: object) -> str:
    """``value`` when it is a Werkzeug password hash.

    :raises ValueError: naming the config key and how to make a hash.
    """
    parts = value.split("$") if isinstance(value, str) else []
    if len(parts) != 3 or not parts[0].startswith(_HASH_METHODS) or not all(parts):
        raise ValueError(
            f"{PASSWORD_CONFIG_KEY} must be a Werkzeug password hash (not the password "
            f"itself); make one with `flask traffic dashboard-password`."
        )
    return t.cast(str, value)


class PasswordCheck:
    """HTTP Basic against one password hash; any user name is accepted.

    :param password_hash: from :func:`werkzeug.security.generate_password_hash`.
    """

    def __init__(self, password_hash: str) -> None:
        self.password_hash = check_password_hash_text(password_hash)
        self._key = secrets.token_bytes(32)
        self._passed: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        """Whether the current request carries the password."""
        header = request.headers.get("Authorization", "")
        if not header:
            return False
        digest = hmac.new(self._key, header.encode("utf-8", "surrogatepass"), hashlib.sha256)
        key = digest.digest()
        now = time.monotonic()
        with self._lock:
            expires = self._passed.get(key)
        if expires is not None and expires > now:
            return True
        auth = request.authorization
        if auth is None or auth.type != "basic" or auth.password is None:
            return False
        if not check_password_hash(self.password_hash, auth.password):
            return False
        with self._lock:
            if len(self._passed) >= _REMEMBER_MOST:
                self._passed.clear()
            self._passed[key] = now + _REMEMBER_SECONDS
        return True

    @staticmethod
    def challenge() -> Response:
        """The 401 answer that makes a browser ask for the password."""
        response = Response("Log in to see the traffic dashboard.\n", 401, mimetype="text/plain")
        response.headers["WWW-Authenticate"] = _REALM
        return response

"""How RedisStore makes its client (time-outs, no retries inside redis-py),
and names where it writes."""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    import redis

__all__ = ["from_host", "from_url", "is_int", "location_of"]

#: Seconds a client this store creates waits to connect and for a reply, so a
#: dead or unreachable server fails the export (to be retried by the
#: processor) instead of holding the worker forever.
_TIMEOUT = 5.0


def is_int(value: object) -> bool:
    """Whether ``value`` is an ``int`` and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _options(redis_module: t.Any) -> dict[str, t.Any]:
    # No retries inside redis-py: it would send a transaction whose
    # reply was lost a second time, behind the fence's back (see
    # RedisStore.export()). The processor retries, with back-off; a connection the
    # server closed is replaced by the pool before it is used.
    retry = redis_module.retry.Retry(redis_module.backoff.NoBackoff(), 0)
    return {
        "socket_timeout": _TIMEOUT,
        "socket_connect_timeout": _TIMEOUT,
        "retry": retry,
    }


def from_url(redis_module: t.Any, url: object) -> redis.Redis:
    """A client for ``url=``; its message never shows the URL (a password)."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}.")
    try:
        client: redis.Redis = redis_module.Redis.from_url(url, **_options(redis_module))
    except ValueError:
        # Not the URL itself in the message: it may hold a password.
        raise ValueError(
            "url must be a redis://, rediss:// or unix:// URL such as redis://127.0.0.1:6379/0."
        ) from None
    return client


def from_host(redis_module: t.Any, host: object, password: object, port: object) -> redis.Redis:
    """A client for ``redis_host=`` (with ``redis_password`` and ``redis_port``)."""
    if not isinstance(host, str) or not host:
        raise TypeError(f"redis_host must be a non-empty str, got {host!r}.")
    if password is not None and not isinstance(password, str):
        raise TypeError(f"redis_password must be a str or None, got {type(password).__name__}.")
    if not is_int(port) or not 0 < t.cast(int, port) < 65536:
        raise ValueError(f"redis_port must be an integer from 1 to 65535, got {port!r}.")
    client: redis.Redis = redis_module.Redis(
        host=host, port=port, password=password, **_options(redis_module)
    )
    return client


def location_of(client: redis.Redis, event_name: str) -> str:
    """Where a store writes, without a password: the default visitor secret."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        where = f"unix://{kwargs['path']}"
    else:
        where = f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    return f"{where}/{kwargs.get('db', 0)}#{event_name}"

"""One ``MULTI``/``EXEC`` of many commands for RedisStore's writes, packed by
hiredis and sent at once.

redis-py's pipeline packs each command through a Python pass over its
arguments before hiredis packs them: for a batch of ``XADD`` of some 40
arguments each, that was a third of a write's CPU time (11.5 us a record,
against 4.5 us for hiredis alone). :func:`transaction` gives that direct path
where it can (hiredis installed, a plain ``redis.Redis`` client), and
redis-py's own transaction pipeline otherwise, with the same errors: a
connection error or time-out (whose outcome is unknown: the caller's fence
tells), or the first ``ResponseError``. :func:`watched` does the same on
the connection of a pipeline that is watching keys (a fold's position), and
raises ``WatchError`` when one of them changed.
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    import redis
    from redis.typing import EncodableT

__all__ = ["Transaction", "transaction", "watched"]

Command = tuple["EncodableT", ...]


class Transaction(t.Protocol):
    """Commands queued, then run as one ``MULTI``/``EXEC``."""

    def command(self, *args: EncodableT) -> None:
        """Queue one command."""

    def execute(self) -> None:
        """Run the queued commands; raise the first error."""


class _Queued:
    """Commands queued until the subclass's ``execute()``."""

    def __init__(self) -> None:
        self._commands: list[Command] = []

    def command(self, *args: EncodableT) -> None:
        self._commands.append(args)


class _PipelineTransaction(_Queued):
    """redis-py's transaction pipeline (a client it cannot bypass safely)."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        self._client = client

    def execute(self) -> None:
        with self._client.pipeline(transaction=True) as pipe:
            for args in self._commands:
                pipe.execute_command(*args)  # type: ignore[no-untyped-call]
            pipe.execute()


class _PackedTransaction(_Queued):
    """The commands packed by hiredis, sent in one write on a connection of
    the client's pool, their replies read back; the connection is dropped
    on any failure (the server discards a transaction left open with it)."""

    def __init__(self, client: redis.Redis, pack: t.Callable[[Command], bytes]) -> None:
        super().__init__()
        self._client = client
        self._pack = pack

    def execute(self) -> None:
        pool = self._client.connection_pool
        connection = _connection(pool)
        try:
            _check(_run(connection, self._pack, self._commands))
        finally:
            pool.release(connection)


class _WatchedPipeline:
    """The commands queued on a watching pipeline (redis-py's own path)."""

    def __init__(self, pipe: redis.client.Pipeline) -> None:
        self._pipe = pipe
        pipe.multi()

    def command(self, *args: EncodableT) -> None:
        self._pipe.execute_command(*args)  # type: ignore[no-untyped-call]

    def execute(self) -> None:
        self._pipe.execute()


class _WatchedPacked(_Queued):
    """The commands packed by hiredis and run on the connection a pipeline
    watches keys on: ``EXEC`` fails, as redis-py's would, if one changed."""

    def __init__(self, connection: t.Any, pack: t.Callable[[Command], bytes]) -> None:
        super().__init__()
        self._connection = connection
        self._pack = pack

    def execute(self) -> None:
        import redis

        replies = _run(self._connection, self._pack, self._commands)
        if replies is None:
            raise redis.WatchError("a watched key changed")
        _check(replies)


def _run(connection: t.Any, pack: t.Callable[[Command], bytes], commands: list[Command]) -> t.Any:
    """``EXEC``'s reply to ``commands`` sent in one write on ``connection``,
    which is dropped on any failure (the server discards a transaction left
    open with it)."""
    try:
        # One buffer: redis-py writes each item of a list with a call of its
        # own, a system call a command (10,000 of them in a fold's chunk).
        packed = b"".join([pack(("MULTI",)), *map(pack, commands), pack(("EXEC",))])
        connection.send_packed_command([packed])
        connection.read_response()  # OK
        for _ in commands:
            connection.read_response()  # QUEUED, or the command's error
        return connection.read_response()
    except BaseException:
        connection.disconnect()
        raise


def _check(replies: t.Any) -> None:
    import redis

    for reply in replies or ():
        if isinstance(reply, redis.ResponseError):
            raise reply


def _connection(pool: redis.ConnectionPool) -> t.Any:
    try:
        return pool.get_connection()
    except TypeError:
        # redis-py before 5.3 wants a command name.
        return pool.get_connection("MULTI")


def _packer(client: redis.Redis) -> t.Callable[[Command], bytes] | None:
    """hiredis's packer, where commands to ``client`` may bypass redis-py."""
    import redis

    try:
        import hiredis
    except ImportError:
        return None
    if type(client) is not redis.Redis:
        # A subclass may route or wrap commands: leave it to redis-py.
        return None
    return t.cast("t.Callable[[Command], bytes]", hiredis.pack_command)


def transaction(client: redis.Redis) -> Transaction:
    """A transaction on ``client``: packed by hiredis where it can be."""
    pack = _packer(client)
    return _PipelineTransaction(client) if pack is None else _PackedTransaction(client, pack)


def watched(client: redis.Redis, pipe: redis.client.Pipeline) -> Transaction:
    """A transaction on the connection of ``pipe``, a pipeline of ``client``
    that is watching keys (after ``pipe.watch()`` and its reads):
    ``execute()`` raises ``redis.WatchError`` if one of them changed."""
    pack = _packer(client)
    connection = getattr(pipe, "connection", None)
    if pack is None or connection is None or not getattr(pipe, "watching", False):
        return _WatchedPipeline(pipe)
    return _WatchedPacked(connection, pack)

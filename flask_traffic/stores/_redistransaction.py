"""One ``MULTI``/``EXEC`` of many commands for RedisStore's writes, packed by
hiredis and sent at once.

redis-py's pipeline packs each command through a Python pass over its
arguments before hiredis packs them: for a batch of ``XADD`` of some 40
arguments each, that was a third of a write's CPU time (11.5 us a record,
against 4.5 us for hiredis alone). :func:`transaction` gives that direct path
where it can (hiredis installed, a plain ``redis.Redis`` client), and
redis-py's own transaction pipeline otherwise, with the same errors: a
connection error or time-out (whose outcome is unknown: the caller's fence
tells), or the first ``ResponseError``.
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    import redis
    from redis.typing import EncodableT

__all__ = ["Transaction", "transaction"]

Command = tuple["EncodableT", ...]


class Transaction(t.Protocol):
    """Commands queued, then run as one ``MULTI``/``EXEC``."""

    def command(self, *args: EncodableT) -> None:
        """Queue one command."""

    def execute(self) -> None:
        """Run the queued commands; raise the first error."""


class _Queued:
    """Commands queued on ``client`` until :meth:`execute`."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._commands: list[Command] = []

    def command(self, *args: EncodableT) -> None:
        self._commands.append(args)


class _PipelineTransaction(_Queued):
    """redis-py's transaction pipeline (a client it cannot bypass safely)."""

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
        super().__init__(client)
        self._pack = pack

    def execute(self) -> None:
        import redis

        pool = self._client.connection_pool
        connection = _connection(pool)
        pack = self._pack
        try:
            connection.send_packed_command(
                [pack(("MULTI",)), *map(pack, self._commands), pack(("EXEC",))]
            )
            connection.read_response()  # OK
            for _ in self._commands:
                connection.read_response()  # QUEUED, or the command's error
            replies = connection.read_response()
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)
        for reply in replies or ():
            if isinstance(reply, redis.ResponseError):
                raise reply


def _connection(pool: redis.ConnectionPool) -> t.Any:
    try:
        return pool.get_connection()
    except TypeError:
        # redis-py before 5.3 wants a command name.
        return pool.get_connection("MULTI")


def transaction(client: redis.Redis) -> Transaction:
    """A transaction on ``client``: packed by hiredis where it can be."""
    import redis

    try:
        import hiredis
    except ImportError:
        return _PipelineTransaction(client)
    if type(client) is not redis.Redis:
        # A subclass may route or wrap commands: leave it to redis-py.
        return _PipelineTransaction(client)
    return _PackedTransaction(client, t.cast("t.Callable[[Command], bytes]", hiredis.pack_command))

"""``flask traffic tail --follow``: show the records that show up in a store,
each once, even when one arrives after newer ones."""

from __future__ import annotations

import hashlib
import json
import time
import typing as t
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta

from ..query import iso_text
from ..stores.base import Store
from ._options import FLUSH_TIMEOUT

__all__ = ["LOOKBACK", "Follower", "sleep"]

#: How far back each poll looks again: a request is dated when it starts and
#: written when it ends (or when another process's batch lands), so it can
#: arrive after newer ones.
LOOKBACK = timedelta(seconds=30)

#: How :meth:`Follower.follow` waits between polls, looked up at each wait: a
#: test replaces it (``monkeypatch.setattr(follow, "sleep", ...)``) to run the
#: polls without waiting.
sleep: Callable[[float], None] = time.sleep


def _row_key(row: Mapping[str, t.Any]) -> bytes:
    text = json.dumps(row, ensure_ascii=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode("ascii"), digest_size=16).digest()


class Follower:
    """Finds the records that show up in a store, each once.

    Rows are told apart by their whole content, and remembered for
    :data:`LOOKBACK` before the newest date seen, so the memory stays bounded.

    :param store: a store whose policy keeps ``request_date``.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        # Rows already seen within the look-back window: key -> request_date.
        self._seen: dict[bytes, str] = {}
        self._newest: str | None = None

    def _since(self) -> str | None:
        if self._newest is None:
            return None
        return iso_text(datetime.fromisoformat(self._newest) - LOOKBACK)

    def _rows(self) -> Iterator[dict[str, t.Any]]:
        store = self.store
        store.flush(FLUSH_TIMEOUT)
        return store.scan(store.query(None, since=self._since()), oldest_first=True)

    def start(self) -> None:
        """Take what is there now as seen."""
        newest = self.store.read(1)
        self._newest = newest[0].get("request_date") if newest else None
        for row in self._rows():
            self.mark(row)

    def mark(self, row: Mapping[str, t.Any]) -> bool:
        """Take ``row`` as seen; ``False`` if it already was."""
        key = _row_key(row)
        if key in self._seen:
            return False
        # A row without a date ("" sorts first) is forgotten at the next poll.
        date = row.get("request_date") or ""
        self._seen[key] = date
        if date and (self._newest is None or date > self._newest):
            self._newest = date
        return True

    def poll(self) -> list[dict[str, t.Any]]:
        """The rows not seen before, in the order the store gives them."""
        fresh = [row for row in self._rows() if self.mark(row)]
        cutoff = self._since()
        if cutoff is not None:
            self._seen = {key: date for key, date in self._seen.items() if date >= cutoff}
        return fresh

    def follow(
        self,
        interval: float,
        show: Callable[[dict[str, t.Any]], None],
        max_polls: int | None = None,
    ) -> None:
        """Poll every ``interval`` seconds and ``show`` each new row, until
        Ctrl-C (which ends it quietly) or ``max_polls`` polls.

        :param interval: seconds to wait before each poll.
        :param show: called with each new row, oldest first.
        :param max_polls: stop after this many polls; ``None`` for no end.
        """
        polls = 0
        try:
            while max_polls is None or polls < max_polls:
                sleep(interval)
                polls += 1
                for row in self.poll():
                    show(row)
        except KeyboardInterrupt:
            pass

"""What ``flask traffic rollup`` shows while it folds: :class:`FoldCounter`."""

from __future__ import annotations

import sys
import time
from datetime import datetime

import click

from ._options import parse_moment_option

__all__ = ["FoldCounter", "parse_option"]

# Seconds between two updates of the counter line.
_EVERY = 0.5


def parse_option(text: str, name: str) -> datetime | None:
    """``--since``'s text as an aware UTC datetime, or a usage error."""
    return parse_moment_option(text, f"'{name}'")


class FoldCounter:
    """Counts the records a fold or rebuild has done, on one line that it
    rewrites (on a terminal) at most twice a second.

    :param name: the store's name, at the start of the line.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.done = 0
        self.started = time.monotonic()
        self._shown = 0.0
        self._live = sys.stdout.isatty()

    def __call__(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self._live and now - self._shown >= _EVERY:
            self._shown = now
            rate = self.done / max(now - self.started, 1e-9)
            click.echo(f"\r{self.name}: {self.done:,} records ({rate:,.0f}/s)", nl=False)

    def end(self) -> None:
        """Clear the counter line before the result is printed."""
        if self._live and self._shown:
            click.echo("\r\x1b[K", nl=False)

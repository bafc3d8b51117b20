"""Browser and platform from a User-Agent header, with ua-parser's rules.

Parsing costs tens to hundreds of microseconds per new string, so it only
ever runs in a store's worker thread, and the answers are cached: real
traffic repeats a small set of user agents.
"""

from __future__ import annotations

import threading
import typing as t

import ua_parser
from ua_parser import Domain

from ._textcache import text_cache

__all__ = ["is_bot", "parse_user_agent"]

_DOMAINS = Domain.USER_AGENT | Domain.OS
# Longer strings are not user agents a parser has rules for; cutting them
# keeps hostile 10 kB headers from costing regex time.
_MAX_PARSED_LENGTH = 1024


_build_lock = threading.Lock()
_parse: t.Callable[[str, Domain], ua_parser.PartialResult] | None = None


def _parser() -> t.Callable[[str, Domain], ua_parser.PartialResult]:
    # ua-parser compiles its rules when its default parser is first asked
    # for (~100 ms): that happens here, in the first worker that parses a
    # user agent, not at import on the app's main thread. The lock keeps
    # two workers from building it twice.
    global _parse
    if _parse is None:
        with _build_lock:
            if _parse is None:
                _parse = ua_parser.parser
    return _parse


@text_cache(4096, max_length=_MAX_PARSED_LENGTH)
def parse_user_agent(user_agent: str | None) -> tuple[str | None, str | None]:
    """Return ``(browser, platform)``, e.g. ``("Chrome 131", "Mac OS X")``.

    Either is ``None`` when the parser does not recognise it.

    :param user_agent: the raw ``User-Agent`` header, or ``None``.
    """
    if not user_agent:
        return None, None
    # The parser takes valid Unicode only; a header a server decoded with
    # surrogateescape may hold lone surrogates.
    text = user_agent[:_MAX_PARSED_LENGTH].encode("utf-8", "replace").decode("utf-8")
    result = _parser()(text, _DOMAINS)
    browser = None
    if result.user_agent is not None and result.user_agent.family != "Other":
        ua = result.user_agent
        browser = f"{ua.family} {ua.major}" if ua.major else ua.family
    platform = None
    if result.os is not None and result.os.family != "Other":
        platform = result.os.family
    return browser, platform


@text_cache(4096, max_length=_MAX_PARSED_LENGTH)
def is_bot(user_agent: str | None) -> bool:
    """Whether ua-parser's rules know ``user_agent`` as a bot, spider or crawler
    (its device family ``"Spider"``).

    :param user_agent: the raw ``User-Agent`` header, or ``None``.
    """
    if not user_agent:
        return False
    text = user_agent[:_MAX_PARSED_LENGTH].encode("utf-8", "replace").decode("utf-8")
    device = _parser()(text, Domain.DEVICE).device
    return device is not None and device.family == "Spider"

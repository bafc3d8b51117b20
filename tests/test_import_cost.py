"""Importing flask_traffic stays cheap: slow set-up waits for first use."""

from __future__ import annotations

import subprocess
import sys

CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_import_does_not_build_the_user_agent_parser() -> None:
    # ua-parser compiles its rules (~100 ms) when its parser is first asked
    # for; that belongs in a store's worker, not in every app's start-up.
    code = (
        "import flask_traffic, flask_traffic.stores, ua_parser\n"
        "print('parser' in vars(ua_parser))\n"
    )
    assert run(code) == "False"


def test_the_parser_is_built_on_first_use() -> None:
    code = (
        "import flask_traffic, ua_parser\n"
        "from flask_traffic import TrafficRecord\n"
        f"record = TrafficRecord(start_time_ns=0, duration_ns=1, request_user_agent={CHROME!r})\n"
        "print(record.request_browser, record.request_platform, 'parser' in vars(ua_parser))\n"
    )
    assert run(code) == "Chrome 131 Linux True"


def test_import_loads_no_optional_package() -> None:
    code = (
        "import sys, flask_traffic, flask_traffic.stores\n"
        "print(sorted(m for m in ('sqlalchemy', 'redis', 'opentelemetry') if m in sys.modules))\n"
    )
    assert run(code) == "[]"

"""How big the dashboard's front end is, and how fast its page loads on a
SQLite store of 1,000,000 records.

    python tests/benchmarks/bench_dashboard.py [--records 1000000] [--ranges 24h 30d]
        [--screenshot docs/dashboard.png]

Fills a SQLite ``SQLStore`` the way ``bench_summary_sql.py`` does (its
``fill()``: realistic rows over 30 days straight into the store's table, in
executemany transactions of 50,000), serves the app with the dashboard on
127.0.0.1, then times each API call the page makes (through the test client)
and the page load in Debian's Chromium, from navigation until every figure
shows, for the 24 h and 30 d ranges. ``--screenshot`` saves the 24 h view.
A benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from flask import Flask
from werkzeug.security import generate_password_hash
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).parent))
from bench_summary_sql import fill

# The tests' folder holds the browser set-up the browser tests use.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dashboard_apps import CHROMIUM, CHROMIUM_ARGS

from flask_traffic import Traffic
from flask_traffic.dashboard import Dashboard
from flask_traffic.stores import SQLStore

STATIC = Path(__file__).parents[2] / "flask_traffic" / "dashboard" / "static"
PASSWORD = "benchmark password"


def front_end_size() -> None:
    files = sorted(p for p in STATIC.iterdir() if p.suffix in (".js", ".css"))
    total = sum(p.stat().st_size for p in files)
    listed = ", ".join(f"{p.name} {p.stat().st_size:,}" for p in files)
    print(f"JS + CSS: {total:,} bytes uncompressed ({listed})")


def api_calls(app: Flask, auth: dict[str, str], since: str) -> None:
    previous = {"24h": "since=48h&until=24h", "30d": "since=60d&until=30d"}[since]
    client = app.test_client()
    for query in (
        f"summary?since={since}",
        f"breakdown?since={since}",
        f"records?since={since}&limit=51",
        f"summary?{previous}",
        f"breakdown?{previous}",
        "summary?since=5m",
        f"summary?since={since}&request_route=/page0",
        f"breakdown?since={since}&not.response_status_code=200",
    ):
        times = []
        for _ in range(2):
            started = time.perf_counter()
            response = client.get("/traffic/dashboard/api/" + query, headers=auth)
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, response.data
        print(f"  api/{query}: best {min(times) * 1000:,.0f} ms")


def page_load(origin: str, since: str, screenshot: Path | None) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            http_credentials={"username": "bench", "password": PASSWORD},
            viewport={"width": 1280, "height": 900},
        )
        page = context.new_page()
        for attempt in range(2):
            started = time.perf_counter()
            page.goto(f"{origin}/traffic/dashboard/?since={since}")
            painted = time.perf_counter()
            shown = first = None
            while True:
                state = page.evaluate(
                    "() => [document.querySelector('[data-figure=p95]')?.dataset.value,"
                    " document.querySelector('[data-figure=total]')?.dataset.value,"
                    " document.body.dataset.loaded]"
                )
                if first is None and state[1]:
                    first = time.perf_counter()
                if shown is None and state[0] and state[1]:
                    shown = time.perf_counter()
                if state[2]:
                    break
                time.sleep(0.02)
            done = time.perf_counter()
            assert shown is not None
            assert first is not None
            print(
                f"  page, {since} (load {attempt + 1}): "
                f"shell {(painted - started) * 1000:,.0f} ms, "
                f"requests card {(first - started):,.2f} s, "
                f"every card and the chart {(shown - started):,.2f} s, "
                f"everything (compare, records, live) {(done - started):,.2f} s"
            )
        if screenshot is not None:
            page.wait_for_timeout(300)
            page.screenshot(path=str(screenshot))
            print(f"  screenshot saved to {screenshot}")
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--screenshot", type=Path, help="save the 24 h view as a PNG here")
    parser.add_argument("--ranges", nargs="+", choices=["24h", "30d"], default=["24h", "30d"])
    args = parser.parse_args(argv)
    front_end_size()
    with tempfile.TemporaryDirectory() as folder:
        app = Flask("bench_dashboard", instance_path=folder)
        app.config["TRAFFIC_DASHBOARD_PASSWORD_HASH"] = generate_password_hash(PASSWORD)
        # The dashboard over the rows (and the summary index): no rollups.
        store = SQLStore(location=Path(folder), rollups=False)
        Traffic(app, stores=store)
        Dashboard(app)
        assert store.database_engine is not None
        seconds = fill(
            store.database_engine,
            store.database_log_table,
            args.records,
            datetime.now(timezone.utc),
        )
        print(f"SQLite: {args.records:,} rows inserted in {seconds:.1f} s")
        import base64

        auth = {"Authorization": "Basic " + base64.b64encode(f"b:{PASSWORD}".encode()).decode()}
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            for since in args.ranges:
                print(f"range {since}:")
                api_calls(app, auth, since)
                page_load(
                    f"http://127.0.0.1:{server.server_port}",
                    since,
                    args.screenshot if since == "24h" else None,
                )
        finally:
            server.shutdown()
            thread.join(10)
            server.server_close()
            store.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

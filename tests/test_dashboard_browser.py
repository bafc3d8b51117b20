"""The dashboard in a real browser: Debian's Chromium, driven by Playwright.

The app is served on 127.0.0.1 on a spare port; every test checks that the
browser asked for nothing but that origin and logged no error (a CSP
violation is one). Without Chromium or Playwright the tests skip; under CI
(``CI=true``) they fail instead, as the service tests do.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import typing as t
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_apps import (
    CHROMIUM,
    CHROMIUM_ARGS,
    HOSTILE_AGENT,
    HOSTILE_EXCEPTION,
    HOSTILE_PATH,
    HOSTILE_REFERRER,
    HOSTILE_TRAFFIC,
    KNOWN_TRAFFIC,
    PASSWORD,
    basic,
    make_app,
    send,
)
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from flask_traffic.stores import MemoryStore

PAGE = "/traffic/dashboard/"
TIMEOUT_MS = 15_000

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page


def _browser_or_skip() -> None:
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = 'Playwright is not installed (pip install "flask-traffic[test]")'
    if reason is None and not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        reason = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI needs it (see .ci/run).")
        pytest.skip(f"{reason}.")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Served(t.NamedTuple):
    app: Flask
    store: MemoryStore
    origin: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    store = MemoryStore()
    app = make_app(store)
    send(app, KNOWN_TRAFFIC + HOSTILE_TRAFFIC)
    server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Served(app, store, f"http://127.0.0.1:{server.server_port}")
    server.shutdown()
    thread.join(10)
    server.server_close()
    store.shutdown()


class Visit(t.NamedTuple):
    page: Page
    requested: list[str]
    problems: list[str]


def _visit(browser: Browser, served: Served, **options: t.Any) -> tuple[BrowserContext, Visit]:
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    visit = Visit(page, [], [])
    page.on("request", lambda request: visit.requested.append(request.url))
    page.on("console", lambda m: m.type == "error" and visit.problems.append(m.text))
    page.on("pageerror", lambda error: visit.problems.append(str(error)))
    page.on("dialog", lambda dialog: visit.problems.append("dialog: " + dialog.message))
    return context, visit


@pytest.fixture
def visit(browser: Browser, served: Served) -> Iterator[Visit]:
    """A page logged in to the dashboard; afterwards, every URL the browser
    asked for was on the app's origin, and nothing failed or was blocked."""
    context, visit = _visit(
        browser, served, http_credentials={"username": "me", "password": PASSWORD}
    )
    yield visit
    context.close()
    assert visit.requested
    assert [url for url in visit.requested if not url.startswith(served.origin + "/")] == []
    assert visit.problems == []


def api(served: Served, query: str) -> t.Any:
    response = served.app.test_client().get(PAGE + "api/" + query, headers=basic())
    assert response.status_code == 200
    return response.get_json()


def open_dashboard(visit: Visit, served: Served, query: str = "") -> Page:
    page = visit.page
    page.goto(served.origin + PAGE + query)
    wait_until(page, "() => document.body.dataset.loaded")
    return page


def loads(page: Page) -> int:
    return int(page.evaluate("Number(document.body.dataset.loaded || 0)"))


def wait_until(page: Page, predicate: str, timeout: float = TIMEOUT_MS / 1000) -> None:
    """Poll ``predicate`` (a JS function) from here: Playwright's own
    wait_for_function evaluates text in the page, which the CSP forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {predicate}")
        time.sleep(0.05)


def wait_for_load_after(page: Page, before: int) -> None:
    wait_until(page, f"() => Number(document.body.dataset.loaded || 0) > {before}")


def figures(page: Page) -> dict[str, str]:
    return t.cast(
        dict[str, str],
        page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('[data-figure]')]"
            ".map(e => [e.dataset.figure, e.dataset.value]))"
        ),
    )


def expected_figures(served: Served, query: str) -> dict[str, str]:
    summary = api(served, "summary?" + query)
    overall = api(served, "breakdown?" + query)["overall"]
    total = summary["total"]
    classes = summary["status_classes"]
    return {
        "total": str(total),
        "visitors": str(summary["unique_visitors"]),
        "rate5xx": str(classes["5xx"] / total),
        "rate4xx": str(classes["4xx"] / total),
        "p50": str(overall["p50"]),
        "p95": str(overall["p95"]),
    }


def js_numbers(values: dict[str, str]) -> dict[str, float]:
    return {key: float(value) for key, value in values.items()}


# -- the tests --------------------------------------------------------------------


def test_the_figures_shown_are_the_apis(visit: Visit, served: Served) -> None:
    page = open_dashboard(visit, served)
    assert js_numbers(figures(page)) == js_numbers(expected_figures(served, "since=24h"))
    assert page.title() == "Traffic · MemoryStore"
    routes = page.locator("#routes tbody tr")
    assert routes.count() == len(api(served, "summary?since=24h")["routes"])
    assert "/item/<int:n>" in page.locator("#routes").inner_text()
    assert page.locator("#chart svg rect.c2xx").count() >= 1
    assert "MemoryStore answered in" in page.locator("#timing").inner_text()


def test_clicking_a_route_filters_the_page_and_back_restores_it(
    visit: Visit, served: Served
) -> None:
    page = open_dashboard(visit, served)
    everything = figures(page)
    before = loads(page)
    page.locator("#routes button.pick", has_text="/item/<int:n>").click()
    wait_for_load_after(page, before)
    assert "request_route=%2Fitem%2F%3Cint%3An%3E" in page.url
    chips = page.locator("#filters .chip")
    assert chips.count() == 1
    assert " ".join(chips.inner_text().split()) == "route is /item/<int:n> \u00d7"
    query = "since=24h&request_route=/item/<int:n>"
    assert js_numbers(figures(page)) == js_numbers(expected_figures(served, query))
    paths = page.locator("#records tbody tr.record td.path").all_inner_texts()
    assert paths
    assert all(path.startswith("/item/") for path in paths)

    before = loads(page)
    page.go_back()
    wait_for_load_after(page, before)
    assert "request_route" not in page.url
    assert page.locator("#filters .chip").count() == 0
    assert figures(page) == everything


def test_is_not_and_removing_a_chip(visit: Visit, served: Served) -> None:
    page = open_dashboard(visit, served)
    before = loads(page)
    page.locator("#top-browsers button.not").first.click()
    wait_for_load_after(page, before)
    assert "not.request_browser=" in page.url
    assert "is not" in page.locator("#filters .chip").inner_text()
    before = loads(page)
    page.locator("#filters .chip button").click()
    wait_for_load_after(page, before)
    assert "request_browser" not in page.url


def test_a_range_preset(visit: Visit, served: Served) -> None:
    page = open_dashboard(visit, served)
    before = loads(page)
    page.get_by_role("button", name="Last hour").click()
    wait_for_load_after(page, before)
    assert "since=1h" in page.url
    assert page.get_by_role("button", name="Last hour").get_attribute("aria-pressed") == "true"
    assert js_numbers(figures(page)) == js_numbers(expected_figures(served, "since=1h"))
    rows = page.locator("#chart-table tbody tr").count()
    # One bucket per minute, from the server's ``since`` to the page's now:
    # a minute that turns between the answer and the drawing adds one
    # (62 seen in CI).
    assert 60 <= rows <= 62


def test_dragging_across_the_chart_narrows_the_range(visit: Visit, served: Served) -> None:
    page = open_dashboard(visit, served, "?since=1h")
    box = page.locator("#chart svg").bounding_box()
    assert box is not None
    before = loads(page)
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    wait_for_load_after(page, before)
    assert "until=" in page.url
    assert "since=1h" not in page.url


def test_compare_with_the_previous_period(visit: Visit, served: Served) -> None:
    page = open_dashboard(visit, served)
    assert page.locator("#compare").is_checked()
    # The previous period had no request: its p50 and p95 are none, so
    # those two cards show no change.
    assert page.locator(".card .change").count() == 4
    assert "new vs previous period" in page.locator(".card").first.inner_text()
    assert page.locator("#chart path.previous-line").count() == 1
    before = loads(page)
    page.locator("#compare").uncheck()
    wait_for_load_after(page, before)
    assert "compare=0" in page.url
    assert page.locator(".card .change").count() == 0
    assert page.locator("#chart path.previous-line").count() == 0


def test_the_live_refresh_picks_up_a_new_request(visit: Visit, served: Served) -> None:
    page = open_dashboard(visit, served)
    total = int(figures(page)["total"])
    wait_until(page, "() => document.getElementById('live').dataset.value")
    assert "in the last 5 minutes" in page.locator("#live").inner_text()
    with urllib.request.urlopen(served.origin + "/item/99") as response:
        assert response.status == 200
    wait_until(
        page,
        f"() => document.querySelector('[data-figure=total]').dataset.value === '{total + 1}'",
        timeout=20,
    )
    # Newest first; a request of the page itself may have come after it.
    newest = page.locator("#records tbody tr.record td.path").all_inner_texts()[:3]
    assert "/item/99" in newest


def test_export_of_the_current_view(visit: Visit, served: Served, tmp_path: Path) -> None:
    page = open_dashboard(visit, served, "?since=24h&request_route=/item/<int:n>")
    with page.expect_download() as download:
        page.locator("#export-csv").click()
    saved = tmp_path / "export.csv"
    download.value.save_as(saved)
    lines = saved.read_text(encoding="utf-8").splitlines()
    expected = served.store.read(1000, where={"request_route": "/item/<int:n>"})
    assert len(lines) == len(expected) + 1
    assert lines[0].startswith("request_date,")
    assert all(",/item/" in line for line in lines[1:])


def test_times_in_utc_one_click_away(visit: Visit, served: Served) -> None:
    page = open_dashboard(visit, served)
    page.locator("#tz").click()
    page.wait_for_url("**tz=utc**")
    assert "UTC" in page.locator("#records tbody tr.record td").nth(1).inner_text()


def test_dark_mode_and_a_narrow_screen_render(
    browser: Browser, served: Served, tmp_path: Path
) -> None:
    context, visit = _visit(
        browser,
        served,
        http_credentials={"username": "me", "password": PASSWORD},
        color_scheme="dark",
        viewport={"width": 375, "height": 812},
    )
    try:
        page = open_dashboard(visit, served)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 18, 22)"
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.screenshot(path=str(tmp_path / "dark-375.png"), full_page=True)
        page.emulate_media(color_scheme="light")
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") != background
        page.set_viewport_size({"width": 1280, "height": 900})
        page.emulate_media(color_scheme="dark")
        page.screenshot(path=str(tmp_path / "dark.png"), full_page=True)
        page.set_viewport_size({"width": 375, "height": 812})
        page.emulate_media(color_scheme="light")
        page.screenshot(path=str(tmp_path / "light-375.png"), full_page=True)
    finally:
        context.close()
    for name in ("dark-375.png", "dark.png", "light-375.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert visit.problems == []
    assert all(url.startswith(served.origin + "/") for url in visit.requested)


def test_hostile_recorded_strings_show_as_text(visit: Visit, served: Served) -> None:
    page = open_dashboard(visit, served)
    for button in page.locator("#records button.expand").all():
        button.click()
    for summary in page.locator("#errors summary").all():
        summary.click()
    text = page.locator("main").inner_text()
    assert HOSTILE_AGENT in text
    assert HOSTILE_REFERRER in text
    assert HOSTILE_PATH in text
    exception = page.evaluate(
        "[...document.querySelectorAll('#errors summary')].map(e => e.textContent)"
    )
    assert HOSTILE_EXCEPTION in exception
    assert page.title() == "Traffic · MemoryStore"
    assert page.locator("main img, main script, main b, main iframe").count() == 0
    hrefs = page.evaluate("[...document.querySelectorAll('a[href]')].map(a => a.href)")
    assert [h for h in hrefs if not h.startswith((served.origin + "/", "https://"))] == []
    links = page.locator("#top-referrers a")
    assert links.count() == 1
    assert links.get_attribute("href") == "https://example.com/a"
    assert links.get_attribute("rel") == "noopener noreferrer"


def test_with_the_login_refused_nothing_is_served(browser: Browser, served: Served) -> None:
    from playwright.sync_api import Error

    urls = [PAGE, PAGE + "static/dashboard.js", PAGE + "api/summary", PAGE + "api/records"]
    for credentials in (None, {"username": "me", "password": "not the password"}):
        context, visit = _visit(browser, served, http_credentials=credentials)
        try:
            try:
                response = visit.page.goto(served.origin + PAGE)
            except Error as error:
                # Chromium may give up on the challenge instead of showing the 401.
                if "ERR_INVALID_AUTH_CREDENTIALS" not in str(error):
                    raise
            else:
                assert response is not None
                assert response.status == 401
                assert "dashboard.js" not in visit.page.content()
            for url in urls:
                answer = context.request.get(served.origin + url)
                assert answer.status == 401
                assert answer.text() == "Log in to see the traffic dashboard.\n"
        finally:
            context.close()
        assert visit.requested
        assert all(url == served.origin + PAGE for url in visit.requested)

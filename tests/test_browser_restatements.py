"""Restated points in a real browser (headless Chromium): the timeline bars of
restated minutes are hatched and outlined, their hover text says when and by
which run they were restated, a caption counts them, and the other bars are
unmarked. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

from datetime import timedelta

import psycopg2
import pytest

from tests.support.browser import Server, open_page, settings_for, shot, wait_js
from tests.support.dashboard_seed import seed_all
from tests.support.db import query as sql


@pytest.fixture
def served(database_url):
    now = seed_all(database_url)
    server = Server(settings_for(database_url))
    yield server, database_url, now
    server.stop()


def restate(url, domain, overview, now):
    """Record a restatement of the newest reported window older than 5 minutes."""
    [(window,)] = sql(url, f"SELECT max(window_start) FROM {overview} WHERE window_start < %s",
                      (now - timedelta(minutes=5),))
    run_id = f"{domain[:4]}1234-5678-restated"
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO report_restatements (domain, window_start, rows_before, rows_after, run_id) "
                    "VALUES (%s, %s, 3, 4, %s)", (domain, window, run_id))
    conn.close()
    return window, run_id


def marks(page):
    return page.evaluate("""() => {
        const el = document.getElementById('chart-timeline');
        const bars = el.data[0];
        return bars.x.map((t, i) => ({t: t, text: bars.hovertext ? bars.hovertext[i] : '',
                                      width: bars.marker.line ? bars.marker.line.width[i] : 0}))
                   .filter(m => m.text);
    }""")


@pytest.mark.parametrize("path,domain,overview", [
    ("/", "ecommerce", "report_ecommerce_overview_minute"),
    ("/restaurant", "restaurant", "report_restaurant_overview_minute"),
])
def test_restated_minutes_are_marked_on_the_timeline(browser, served, path, domain, overview):
    server, url, now = served
    window, run_id = restate(url, domain, overview, now)
    ctx, page, errors = open_page(browser, server.url + path)
    wait_js(page, "document.getElementById('chart-timeline').dataset.restated === '1'")
    [mark] = marks(page)
    assert mark["text"].startswith("restated at ") and f"(run {run_id[:8]})" in mark["text"]
    assert mark["width"] == 2
    marked = page.evaluate("t => new Date(t).getTime()", mark["t"])
    assert marked == int(window.timestamp() * 1000)
    caption = page.locator("#chart-timeline-restated")
    assert caption.is_visible() and "1 point restated" in caption.text_content()
    # the hatched bar is drawn (Plotly renders the pattern as an SVG pattern fill)
    assert page.locator("#chart-timeline pattern").count() >= 1
    # marks survive the 5 s polling re-render
    refreshes = page.evaluate("() => Number(document.body.dataset.refreshes)")
    wait_js(page, f"Number(document.body.dataset.refreshes) > {refreshes} && "
                  "document.getElementById('chart-timeline').dataset.restated === '1'")
    assert len(marks(page)) == 1
    shot(page, f"restated-{domain}-timeline")
    assert not errors, errors
    ctx.close()

"""Drill-down in a real browser (headless Chromium via Playwright): a mouse
click on a chart's bar or slice opens the panel with the report row, the
Dagster run link and the raw events/orders behind the figure, with their Kafka
partition and offset as stored by the consumer's writer. Screenshots go to
artifacts/screenshots/."""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlparse

import pytest

from tests.support.browser import Server, open_page, settings_for, shot, wait_js
from tests.support.db import query as sql
from tests.support.drilldown_seed import seed_drilldown

DAGSTER = "http://127.0.0.1:3999"


@pytest.fixture
def served(database_url):
    seeded = seed_drilldown(database_url)
    server = Server(settings_for(database_url, dagster_ui_url=DAGSTER))
    yield server, seeded
    server.stop()


def click_mark(page, chart_id: str, selector: str) -> None:
    """A real mouse click in the middle of the chart's tallest mark (bar) or
    widest slice: Plotly hit-tests it itself, as for a user."""
    box = page.evaluate("""([id, sel]) => {
        const marks = Array.from(document.getElementById(id).querySelectorAll(sel))
          .map(n => n.getBoundingClientRect()).filter(r => r.width > 2 && r.height > 2);
        marks.sort((a, b) => b.width * b.height - a.width * a.height);
        const r = marks[0];
        return r ? {x: r.x + r.width / 2, y: r.y + r.height / 2} : null;
    }""", [chart_id, selector])
    assert box, f"no mark drawn in {chart_id}"
    page.mouse.click(box["x"], box["y"])


def table(page, table_id: str) -> list[dict]:
    return page.evaluate("""id => {
        const t = document.getElementById(id);
        const heads = Array.from(t.querySelectorAll('thead th')).map(th => th.textContent);
        return Array.from(t.querySelectorAll('tbody tr')).map(tr => Object.fromEntries(
            Array.from(tr.cells).map((td, i) => [heads[i], td.textContent])));
    }""", table_id)


def record_requests(page) -> list[dict]:
    seen: list[dict] = []

    def on_request(req):
        url = urlparse(req.url)
        if url.path == "/api/drilldown":
            seen.append({k: v[0] for k, v in parse_qs(url.query).items()})
    page.on("request", on_request)
    return seen


def test_click_a_timeline_bar_lands_on_the_events_of_that_minute(browser, served):
    server, seeded = served
    ctx, page, errors = open_page(browser, server.url + "/")
    wait_js(page, "document.querySelector('[data-panel=timeline]').dataset.state === 'ready'")
    requests = record_requests(page)
    click_mark(page, "chart-timeline", ".trace.bars .point path")
    wait_js(page, "document.getElementById('drilldown') && document.getElementById('drilldown').open")
    wait_js(page, "document.getElementById('drilldown').dataset.state === 'ready'")
    assert requests, "the click made no drill-down request"
    asked = requests[-1]
    assert (asked["domain"], asked["report"], asked["minutes"]) == ("ecommerce", "overview", "1")
    ws = datetime.fromisoformat(asked["window_start"].replace("Z", "+00:00"))
    expected = sql(seeded.url, """SELECT event_id::text, kafka_partition, kafka_offset FROM events
                                  WHERE "timestamp" >= %s AND "timestamp" < %s ORDER BY "timestamp", id""",
                   (ws, ws + timedelta(minutes=1)))
    assert expected, "the tallest bar must be a minute with events"
    rows = table(page, "drilldown-raw")
    assert [(r["event_id"], int(r["partition"]), int(r["offset"])) for r in rows] == expected
    assert {r["topic"] for r in rows} == {"ecommerce.events"}
    # the report row and the run that computed it, linked to the Dagster UI
    [report_row] = table(page, "drilldown-report")
    assert int(report_row["events"]) == len(expected)
    link = page.locator("#drilldown-runs a").first
    assert link.get_attribute("href") == f"{DAGSTER}/runs/{seeded.run_id}"
    csv_href = page.locator("#drilldown-csv").get_attribute("href")
    assert csv_href.startswith("/api/drilldown/raw.csv?")
    shot(page, "drilldown-ecommerce-timeline")
    resp = page.request.get(server.url + csv_href)
    assert resp.status == 200 and resp.text().count("\n") == len(expected) + 1
    assert not errors, errors
    ctx.close()


def test_click_a_pie_slice_pages_through_the_orders_of_a_channel(browser, served):
    server, seeded = served
    ctx, page, errors = open_page(browser, server.url + "/restaurant")
    wait_js(page, "document.querySelector('[data-panel=channels]').dataset.state === 'ready'")
    requests = record_requests(page)
    page.evaluate("() => document.getElementById('chart-channels').scrollIntoView()")
    click_mark(page, "chart-channels", ".slice path")
    wait_js(page, "document.getElementById('drilldown') && document.getElementById('drilldown').open")
    wait_js(page, "document.getElementById('drilldown').dataset.state === 'ready'")
    asked = requests[-1]
    assert (asked["domain"], asked["report"]) == ("restaurant", "channel")
    ws = datetime.fromisoformat(asked["window_start"].replace("Z", "+00:00"))
    end = ws + timedelta(minutes=int(asked["minutes"]))
    expected = sql(seeded.url, """SELECT order_id::text, kafka_partition, kafka_offset FROM orders
                                  WHERE "timestamp" >= %s AND "timestamp" < %s AND channel = %s
                                  ORDER BY "timestamp", id""", (ws, end, asked["value"]))
    rows = table(page, "drilldown-raw")
    assert [(r["order_id"], int(r["partition"]), int(r["offset"])) for r in rows] == expected[:50]
    assert {r["channel"] for r in rows} == {asked["value"]}
    shot(page, "drilldown-restaurant-channel")
    # the dialog closes, and the dashboard keeps refreshing behind it
    page.click(".drilldown-close")
    wait_js(page, "!document.getElementById('drilldown').open")
    assert not errors, errors
    ctx.close()

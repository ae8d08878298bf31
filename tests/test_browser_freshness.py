"""Freshness in a real headless Chromium: the pipeline page's table per domain follows
the database through ok / late / stale; every chart of the e-commerce and restaurant
pages says how old its data is, coloured by the API's state; and at 1400 px the
pipeline page's tables fit their cards (no sideways scrolling). Screenshots go to
artifacts/screenshots/."""

from __future__ import annotations

import re

import psycopg2
import pytest

from salespulse.freshness import DOMAINS
from tests.support.browser import Server, open_page, settings_for, shot, wait_js
from tests.support.dashboard_seed import insert_rows, seed_all
from tests.support.freshness_seed import Scenario, clear, seed
from tests.test_browser_dashboard import CHARTS
from tests.test_freshness import scenario


@pytest.fixture
def server(database_url):
    s = Server(settings_for(database_url))
    yield s
    s.stop()


def freshness_rows(page) -> dict:
    """domain label -> [overall state, rows state, reports state, lag state] as the table shows them."""
    return page.evaluate("""() => Object.fromEntries(Array.from(document.querySelectorAll('#table-freshness tbody tr'))
        .map(tr => [tr.cells[0].textContent, Array.from(tr.querySelectorAll('.badge')).map(b => b.dataset.state)]))""")


def api(page, path: str) -> dict:
    """An API answer fetched by the page itself (same origin, same cookies)."""
    return page.evaluate("p => fetch(p, {cache: 'no-store'}).then(r => r.json())", path)


def test_pipeline_page_shows_each_domain_s_freshness_state(browser, server, database_url):
    seed(database_url, "ecommerce", scenario("ok"))
    seed(database_url, "restaurant", scenario("stale"))
    ctx, page, errors = open_page(browser, server.url + "/pipeline")
    try:
        wait_js(page, "document.querySelectorAll('#table-freshness tbody tr').length === 2")
        assert page.get_attribute('[data-panel="freshness"]', "data-state") == "ready"
        assert freshness_rows(page) == {"E-commerce": ["ok"] * 4, "Restaurant": ["stale"] * 4}
        text = page.text_content("#table-freshness")
        shown = api(page, "/api/pipeline/freshness")["domains"]
        for domain in DOMAINS:
            rows = shown[domain]["rows"]
            assert f"p95 {rows['p95_s']:.1f} s" in text or f"p95 {rows['p95_s']:.0f} s" in text, text
            assert f"{shown[domain]['lag']['messages']:,} messages" in text
        # the rule is on the page (tooltips): target and the stale bound of each measure
        titles = page.eval_on_selector_all("#table-freshness .measure", "ms => ms.map(m => m.title)")
        assert any(f"ok ≤ {shown['ecommerce']['rows']['target_s']:g} s" in t for t in titles), titles
        shot(page, "pipeline-freshness-ok-stale")

        # the data changes under the open page: e-commerce late, restaurant back to ok
        clear(database_url)
        seed(database_url, "ecommerce", scenario("late"))
        seed(database_url, "restaurant", scenario("ok"))
        wait_js(page, "document.querySelector('#table-freshness').dataset.state === 'late'")
        assert freshness_rows(page) == {"E-commerce": ["late"] * 4, "Restaurant": ["ok"] * 4}
        shot(page, "pipeline-freshness-late")

        # nothing to measure: unknown, said in words
        clear(database_url)
        wait_js(page, "document.querySelector('#table-freshness').dataset.state === 'unknown'")
        assert "no rows stored in the last minute" in page.text_content("#table-freshness")
        assert not errors, errors
    finally:
        ctx.close()


@pytest.mark.parametrize("path", ["/", "/restaurant"])
def test_every_chart_says_how_old_its_data_is(browser, server, database_url, path):
    seed_all(database_url)
    domain = "ecommerce" if path == "/" else "restaurant"
    ctx, page, errors = open_page(browser, server.url + path)
    try:
        charts = CHARTS[path]
        wait_js(page, f"document.querySelectorAll('.data-age').length === {len(charts)}")

        def lines():
            return page.evaluate("""() => Object.fromEntries(Array.from(document.querySelectorAll('.panel'))
                .filter(p => p.querySelector('.chart')).map(p => { const l = p.querySelector('.data-age');
                    return [p.querySelector('.chart').id, l && [l.dataset.state, l.dataset.source, l.textContent]]; }))""")

        def matches_api(got):
            f = api(page, f"/api/pipeline/freshness?domain={domain}")["domains"][domain]
            for chart in charts:
                state, source, text = got[chart]
                assert state == f[source]["state"], (chart, got[chart], f[source])
                assert re.fullmatch(r"data as of \d\d:\d\d:\d\d UTC, \d+ (s|min|h) ago.*", text), text
            return f

        got = lines()
        assert set(got) == set(charts)
        f = matches_api(got)
        # raw-table charts are as old as the newest event; report charts as old as the newest window
        assert [c for c in charts if got[c][1] == "rows"] == (["chart-realtime"] if domain == "ecommerce" else [])
        as_of = f["reports"]["as_of"]
        assert all(as_of[11:19] in got[c][2] for c in charts if got[c][1] == "reports")
        shot(page, f"{domain}-data-age")

        # the reports stop: computed half an hour ago, behind the events still arriving
        conn = psycopg2.connect(database_url)
        with conn, conn.cursor() as cur:
            cur.execute(f"UPDATE {DOMAINS[domain].overview} SET computed_at = computed_at - interval '30 minutes'")
        conn.close()
        wait_js(page, "Array.from(document.querySelectorAll('.data-age[data-source=\"reports\"]'))"
                      ".every(l => l.dataset.state === 'stale')")
        got = lines()
        matches_api(got)
        assert all(re.search(r", 3\d min ago$", got[c][2]) for c in charts if got[c][1] == "reports"), got
        shot(page, f"{domain}-data-age-stale")
        assert not errors, errors
    finally:
        ctx.close()


def test_pipeline_tables_fit_their_cards_at_1400px(browser, server, database_url):
    """Dead-letter reasons and runs used to sit in half-width cards: long reasons wrapped into tall
    columns and run partitions were cut behind a sideways scroll."""
    seed_all(database_url)
    conn = psycopg2.connect(database_url)
    with conn, conn.cursor() as cur:
        reason = ("value error, the product's price must be a positive amount with at most two decimals; "
                  "got -12.999 for product P-000123 in category 'Garden & Outdoor' (event 4a1b…) ") * 2
        insert_rows(cur, "dead_letters", [{"topic": "ecommerce.events", "partition": 1, "offset": 900 + i,
                                           "key": "k", "payload": b"{}", "payload_sha256": f"{i:064d}",
                                           "error": reason} for i in range(3)])
        insert_rows(cur, "pipeline_runs", [{"run_id": f"backfill-{i:02d}-0123456789abcdef", "status": "SUCCESS",
                                            "job_name": "refresh_reports_job__backfill_ecommerce_reports",
                                            "partition": "2026-12-05-10:00...2026-12-05-13:00", "message": None}
                                           for i in range(3)])
    conn.close()
    ctx, page, errors = open_page(browser, server.url + "/pipeline", width=1400, height=1000)
    try:
        wait_js(page, "document.querySelectorAll('#table-runs tbody tr').length > 0")
        fit = page.evaluate("""() => Array.from(document.querySelectorAll('.table-wrap')).map(w => ({
            table: w.querySelector('table').id, scroll: w.scrollWidth, client: w.clientWidth,
            panel: w.closest('.panel').getBoundingClientRect().width,
            main: document.querySelector('main').clientWidth }))""")
        tables = {f["table"]: f for f in fit}
        assert {"table-reasons", "table-runs", "table-recent", "table-topics", "table-freshness"} <= set(tables)
        for f in fit:
            assert f["scroll"] <= f["client"], f  # no sideways scrolling inside the card
        for name in ("table-reasons", "table-runs"):
            assert tables[name]["panel"] > tables[name]["main"] * 0.9, tables[name]  # the full width
        runs = page.eval_on_selector_all("#table-runs tbody tr", "rs => rs.map(r => r.textContent)")
        assert any("2026-12-05-10:00...2026-12-05-13:00" in r for r in runs)
        page.wait_for_timeout(300)
        shot(page, "pipeline-1400")
        assert not errors, errors
    finally:
        ctx.close()

"""Real-browser tests: headless Debian Chromium driven by Playwright (the run's one
browser, tests/support/browser.py) against the app served on a free port over a
seeded PostgreSQL. Screenshots are saved to artifacts/screenshots/ as test artifacts."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import timedelta

import psycopg2
import pytest

from salespulse.settings import LOCAL_ADMIN_PASSWORD, LOCAL_ADMIN_USER
from tests.conftest import free_port
from tests.support.browser import Server, open_page, settings_for, shot, wait_js
from tests.support.dashboard_seed import ecommerce_minute, insert_rows, minute, seed_all

CHARTS = {
    "/": ["chart-timeline", "chart-top-products", "chart-by-category", "chart-event-types", "chart-realtime"],
    "/restaurant": ["chart-timeline", "chart-top-items", "chart-by-category", "chart-peak-hours", "chart-channels"],
    "/pipeline": ["chart-throughput", "chart-lag"],
}
NAMES = {"/": "ecommerce", "/restaurant": "restaurant", "/pipeline": "pipeline"}


@pytest.fixture
def served(database_url):
    seed_all(database_url)
    server = Server(settings_for(database_url))
    yield server, database_url
    server.stop()


def chart_info(page, chart_id):
    return page.evaluate("""id => {
        const el = document.getElementById(id);
        return {
          traces: (el.data || []).length,
          points: (el.data || []).reduce((n, t) => n + ((t.y || t.values || t.x || []).length), 0),
          svg: el.querySelectorAll('.main-svg').length,
          drawn: el.querySelectorAll('.trace, .slice, .point').length,
          // marks with a real size on screen (bars, slices, line paths), not just trace groups
          visible: Array.from(el.querySelectorAll('.point path, .slice path, .js-line, .point'))
                     .filter(n => { const r = n.getBoundingClientRect(); return r.width > 1 || r.height > 1; }).length,
          state: el.closest('.panel').dataset.state,
          width: el.getBoundingClientRect().width,
        };
    }""", chart_id)


@pytest.mark.parametrize("path", list(CHARTS))
def test_page_renders_every_chart_with_data(browser, served, path):
    server, _ = served
    ctx, page, errors = open_page(browser, server.url + path)
    try:
        for chart in CHARTS[path]:
            info = chart_info(page, chart)
            assert info["svg"] >= 1 and info["traces"] >= 1 and info["points"] >= 1, (chart, info)
            assert info["drawn"] >= 1 and info["visible"] >= 1, (chart, info)
            assert info["state"] == "ready", (chart, info)
        cards = page.eval_on_selector_all("[data-card]", "els => els.map(e => e.textContent.trim())")
        assert cards and all(c and c != "–" for c in cards), cards
        assert page.get_attribute("#live", "data-state") == "live"
        assert page.is_hidden("#banner")
        if path == "/pipeline":
            rows = page.eval_on_selector_all("#table-reasons tbody tr", "rs => rs.map(r => r.textContent)")
            assert any("invalid event_type" in r for r in rows)
            assert page.eval_on_selector_all("#table-runs tbody a", "as => as.map(a => a.href)")[0].startswith(
                "http://127.0.0.1:3999/runs/")
            # the untrusted dead-letter payload is shown as text, never parsed as HTML
            assert page.locator("#table-recent script").count() == 0
            assert "<script>" in page.text_content("#table-recent")
        page.wait_for_timeout(300)
        shot(page, f"{NAMES[path]}-desktop")
        assert not errors, errors  # no JS errors, no CSP violations
    finally:
        ctx.close()


def test_charts_update_when_new_data_arrive(browser, served):
    server, url = served
    ctx, page, errors = open_page(browser, server.url + "/")
    try:
        def total(chart, trace=0):
            return page.evaluate("([id, i]) => (document.getElementById(id).data[i].y || []).reduce((a, b) => a + b, 0)",
                                 [chart, trace])
        before_timeline = total("chart-timeline")
        before_realtime = total("chart-realtime")
        before_cards = page.text_content('[data-card="events"]')
        refreshes = int(page.get_attribute("body", "data-refreshes"))
        now_conn = psycopg2.connect(url)
        with now_conn, now_conn.cursor() as cur:
            cur.execute("SELECT now()")
            (now,) = cur.fetchone()
            row = ecommerce_minute(minute(now) - timedelta(minutes=45), 7)
            row["events"] = 5000
            insert_rows(cur, "report_ecommerce_overview_minute", [row])
            cur.execute("""INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id)
                           SELECT gen_random_uuid(), 'search', now() - interval '5 seconds', 'U-new', 'S-new'
                           FROM generate_series(1, 25)""")
        now_conn.close()
        wait_js(page, f"Number(document.body.dataset.refreshes) > {refreshes}")
        wait_js(page, "document.getElementById('chart-timeline').data[0].y.reduce((a, b) => a + b, 0) > "
                               f"{before_timeline}")
        assert total("chart-timeline") == before_timeline + 5000  # a reload was not needed: same page, new figure
        wait_js(page, "document.getElementById('chart-realtime').data[0].y.reduce((a, b) => a + b, 0) > "
                               f"{before_realtime}")
        assert total("chart-realtime") == before_realtime + 25
        assert page.text_content('[data-card="events"]') != before_cards
        assert not errors, errors
    finally:
        ctx.close()


def test_range_selector_changes_queries(browser, served):
    server, _ = served
    ctx, page, errors = open_page(browser, server.url + "/restaurant")
    try:
        seen = []
        page.on("request", lambda r: seen.append(r.url))
        page.click('#range-selector button[data-range="15m"]')
        wait_js(page, "document.querySelector('#range-selector [data-range=\"15m\"]').getAttribute('aria-pressed') === 'true'")
        wait_js(page, "Array.from(document.querySelectorAll('.panel')).every(p => p.dataset.state === 'ready')")
        page.wait_for_timeout(200)
        assert any("/api/restaurant/summary?range=15m" in u for u in seen), seen
        assert all("range=1h" not in u for u in seen if "/api/restaurant/" in u)
        # 15 minutes of 1-minute buckets (16 when the window starts mid-minute)
        assert page.evaluate("document.getElementById('chart-timeline').data[0].x.length") in (15, 16)
    finally:
        ctx.close()


@pytest.mark.parametrize("path", list(CHARTS))
def test_phone_width_layout(browser, served, path):
    server, _ = served
    ctx, page, errors = open_page(browser, server.url + path, width=390, height=844)
    try:
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"horizontal overflow of {overflow}px"
        for chart in CHARTS[path]:
            info = chart_info(page, chart)
            assert info["svg"] >= 1 and 0 < info["width"] <= 390 and info["visible"] >= 1, (chart, info)
        widths = page.eval_on_selector_all(".panel", "ps => ps.map(p => p.getBoundingClientRect().right)")
        assert max(widths) <= 390
        page.wait_for_timeout(300)
        shot(page, f"{NAMES[path]}-phone")
        assert not errors, errors
    finally:
        ctx.close()


def test_empty_state_on_an_empty_database(browser, database_url):
    server = Server(settings_for(database_url))
    try:
        ctx, page, errors = open_page(browser, server.url + "/restaurant")
        states = page.eval_on_selector_all("[data-panel]", "ps => ps.map(p => [p.dataset.panel, p.dataset.state])")
        assert dict(states)["timeline"] == "empty" and dict(states)["top-items"] == "empty"
        assert page.is_visible('[data-panel="top-items"] .state')
        assert "No data" in page.text_content('[data-panel="top-items"] .state')
        shot(page, "restaurant-empty")
        ctx.close()
    finally:
        server.stop()


def test_error_state_when_database_is_down(browser):
    # the embedded cluster's account (its service roles' local passwords apply), on a port
    # where no PostgreSQL listens
    server = Server(settings_for(f"postgresql://{LOCAL_ADMIN_USER}:{LOCAL_ADMIN_PASSWORD}@127.0.0.1:{free_port()}/none"))
    try:
        ctx, page, _ = open_page(browser, server.url + "/")
        assert page.get_attribute('[data-panel="timeline"]', "data-state") == "error"
        assert "database unavailable" in page.text_content('[data-panel="timeline"] .state')
        assert page.is_visible("#banner") and page.get_attribute("#live", "data-state") == "error"
        shot(page, "ecommerce-db-down")
        ctx.close()
    finally:
        server.stop()


def test_sign_in_page_opens_every_page_without_a_token_in_the_url(browser, served):
    _, url = served
    server = Server(settings_for(url, dashboard_token="browser-token"))
    try:
        ctx, page, _ = open_page(browser, server.url + "/pipeline?token=browser-token")
        # a token in the URL is not accepted: the page says how to sign in
        assert "access token" in page.text_content("#banner")
        assert page.get_attribute('[data-panel="lag"]', "data-state") == "error"
        page.click("#banner a")
        page.wait_for_url("**/login?next=*")
        page.fill("#token", "browser-token")
        page.click("button[type=submit]")
        page.wait_for_url(server.url + "/pipeline*")
        wait_js(page, "Number(document.body.dataset.refreshes || 0) >= 1")
        assert page.get_attribute('[data-panel="lag"]', "data-state") == "ready"
        assert not page.evaluate("document.cookie")  # HttpOnly: not readable by scripts
        page.goto(server.url + "/")  # other pages send the same cookie
        wait_js(page, "Number(document.body.dataset.refreshes || 0) >= 1")
        assert page.get_attribute('[data-panel="timeline"]', "data-state") == "ready"
        assert "token" not in page.url
        ctx.close()
    finally:
        server.stop()


def test_a_page_whose_session_ended_with_a_token_change_goes_to_the_login_form(browser, served):
    """After a rotation the old cookie is a 401 ``session_expired``: the page
    sends its user to the login form, which says why (docs/security.md)."""
    _, url = served
    before = Server(settings_for(url, dashboard_token="browser-token"))
    after = Server(settings_for(url, dashboard_token="browser-token-rotated"))
    try:
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        page.goto(before.url + "/login?next=/pipeline")
        page.fill("#token", "browser-token")
        page.click("button[type=submit]")
        page.wait_for_url(before.url + "/pipeline*")
        # the same browser (cookies are per host, not per port) on the dashboard with the new token
        page.goto(after.url + "/pipeline")
        page.wait_for_url(after.url + "/login?reason=expired*")
        assert "sign in again" in page.text_content("#banner")
        shot(page, "login-session-expired")
        page.fill("#token", "browser-token-rotated")
        page.click("button[type=submit]")
        page.wait_for_url(after.url + "/pipeline*")
        wait_js(page, "Number(document.body.dataset.refreshes || 0) >= 1")
        assert page.get_attribute('[data-panel="lag"]', "data-state") == "ready"
        ctx.close()
    finally:
        before.stop()
        after.stop()


def test_pipeline_notice_for_stale_reports_a_blocked_queue_and_an_old_check(browser, served):
    """The notice follows what freshness_sensor recorded (rows as it writes them,
    see tests/test_report_freshness.py): hidden while current, then each problem in words."""
    server, url = served

    def record(*statements):  # one transaction: a poll sees all of it or none
        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
        conn.close()

    ctx, page, errors = open_page(browser, server.url + "/pipeline")
    try:
        assert page.is_hidden("#freshness-notice")
        assert page.get_attribute("#freshness-notice", "data-state") == "ok"
        record("""UPDATE pipeline_report_freshness SET stale = true, minutes_behind = 7,
                      newest_window = newest_raw_minute - interval '7 minutes' WHERE domain = 'ecommerce'""",
               """UPDATE pipeline_run_queue SET in_flight = 2, queued = 3, blocked = true, stalled =
                      '[{"run_id": "0a1b2c3d4e5f", "job_name": "refresh_reports_job", "status": "STARTED",
                         "idle_seconds": 4000}, {"run_id": "9f8e7d6c5b4a", "job_name": "refresh_reports_job",
                         "status": "STARTED", "idle_seconds": 3900}]'""")
        wait_js(page, "document.querySelectorAll('#freshness-notice p').length === 2")
        assert page.is_visible("#freshness-notice")
        assert page.get_attribute("#freshness-notice", "data-state") == "stale"
        lines = page.eval_on_selector_all("#freshness-notice p", "ps => ps.map(p => p.textContent)")
        assert len(lines) == 2, lines
        assert re.fullmatch(r"Reports are stale: newest e-commerce window \d\d:\d\d, 7 min behind the newest data "
                            r"\(target 3 min\)\.", lines[0]), lines
        assert lines[1] == "Runs are queued behind 2 runs making no progress (3 queued; silent: 0a1b2c3d, 9f8e7d6c)."
        shot(page, "pipeline-stale")

        record("UPDATE pipeline_report_freshness SET observed_at = now() - interval '12 minutes'")
        wait_js(page, "document.getElementById('freshness-notice').textContent.includes('last checked')")
        text = page.text_content("#freshness-notice")
        assert "Report freshness was last checked 12 min ago" in text and "not running" in text, text

        record("""UPDATE pipeline_report_freshness SET observed_at = now(), stale = false, minutes_behind = 1,
                      newest_window = newest_raw_minute - interval '1 minute'""",
               "UPDATE pipeline_run_queue SET observed_at = now(), queued = 0, blocked = false, stalled = '[]'")
        wait_js(page, "document.getElementById('freshness-notice').hidden")
        assert page.get_attribute("#freshness-notice", "data-state") == "ok"
        assert not errors, errors
    finally:
        ctx.close()


def test_pipeline_notice_says_late_where_the_freshness_table_does(browser, served):
    """Reports late by the freshness rule (freshness_sensor records the state, sql/150)
    are a line of the notice in the table's word, not "stale"."""
    server, url = served
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("""UPDATE pipeline_report_freshness SET observed_at = now(), state = 'late', stale = false,
                           minutes_behind = 4, newest_window = newest_raw_minute - interval '4 minutes'
                       WHERE domain = 'ecommerce'""")
    conn.close()
    ctx, page, errors = open_page(browser, server.url + "/pipeline")
    try:
        wait_js(page, "document.querySelectorAll('#freshness-notice p').length === 1")
        assert page.get_attribute("#freshness-notice", "data-state") == "late"
        (line,) = page.eval_on_selector_all("#freshness-notice p", "ps => ps.map(p => p.textContent)")
        assert re.fullmatch(r"Reports are late: newest e-commerce window \d\d:\d\d, 4 min behind the newest data "
                            r"\(target 3 min\)\.", line), line
        assert not errors, errors
    finally:
        ctx.close()


def test_pipeline_notice_names_a_local_stack_process_that_is_restarting(browser, database_url, tmp_path):
    """Under a real supervisord (as `make run` has): a program that keeps exiting is in back-off,
    and the pipeline page says so; one that runs is not mentioned."""
    from salespulse.stack.runner import Service
    from salespulse.stack.supervise import process_states, render_config, supervisor_dir

    supervisor_dir(tmp_path).mkdir(parents=True)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(render_config([Service("steady", ["sleep", "600"], 10),
                                   Service("crasher", ["sh", "-c", "exit 3"], 20)], tmp_path, tmp_path))
    supervisord = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seed_all(database_url)
    server = Server(settings_for(database_url, salespulse_state_dir=tmp_path))
    try:
        deadline = time.monotonic() + 60
        while {(p.name, p.state) for p in process_states(tmp_path) or []} != {("crasher", "BACKOFF"),
                                                                              ("steady", "RUNNING")}:
            assert time.monotonic() < deadline, "supervisord never ran steady and put crasher in back-off"
            time.sleep(0.2)
        ctx, page, errors = open_page(browser, server.url + "/pipeline")
        try:
            wait_js(page, "document.getElementById('freshness-notice').textContent.includes('crasher')")
            assert page.get_attribute("#freshness-notice", "data-state") in ("processes", "stale")
            lines = page.eval_on_selector_all("#freshness-notice p", "ps => ps.map(p => p.textContent)")
            crasher = [l for l in lines if "crasher" in l]
            assert len(crasher) == 1 and crasher[0].startswith("Process crasher is not running (")
            assert "restarting" in crasher[0] or "gave up" in crasher[0], crasher
            assert not any("steady" in l for l in lines), lines
            shot(page, "pipeline-process-restarting")
            assert not errors, errors
        finally:
            ctx.close()
    finally:
        server.stop()
        supervisord.terminate()
        supervisord.wait(30)

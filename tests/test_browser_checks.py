"""The reconciliation and alert checks on the dashboard: the real checks run
by Dagster against a real PostgreSQL record their outcomes, ``/api/pipeline/checks``
serves them, and the pipeline page in a real headless Chromium shows the failing
check with its offending window. Screenshot in artifacts/screenshots/."""

import json
import urllib.error
import urllib.request
from datetime import timedelta

import pytest

from tests.support.browser import Server, open_page, settings_for, shot, wait_js
from tests.support.orchestration import execute, seed_ecommerce, seed_restaurant
from tests.test_orchestration_minute_checks import (
    RECONCILE,
    now_minute,
    run_checks,
    write_ecommerce_reports,
    write_restaurant_reports,
)


@pytest.fixture
def failing(database_url):
    """Raw rows 20 minutes ago; reports computed after them, one e-commerce minute
    a cent off; the reconciliation checks run once (e-commerce fails, restaurant passes)."""
    base = now_minute() - timedelta(minutes=20)
    seed_ecommerce(database_url, base, minutes=(0, 2), per_minute=6)
    seed_restaurant(database_url, base, minutes=(1,), per_minute=3)
    for table in ("events", "orders"):
        execute(database_url, f"""UPDATE {table} SET ingested_at = "timestamp" + INTERVAL '1 second'""")
    write_ecommerce_reports(database_url, base, base + timedelta(minutes=3), skew_minute=base + timedelta(minutes=2))
    write_restaurant_reports(database_url, base, base + timedelta(minutes=3))
    results = run_checks(database_url, RECONCILE)
    assert not results["ecommerce_reports:reports_reconcile"].passed
    assert results["restaurant_reports:reports_reconcile"].passed
    server = Server(settings_for(database_url))
    yield server, base + timedelta(minutes=2)
    server.stop()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_checks_endpoint(failing):
    server, wrong = failing
    status, body = get(server.url + "/api/pipeline/checks?range=1h&limit=5")
    assert status == 200
    latest = {(c["check_name"], c["asset"]): c for c in body["checks"]}
    assert set(latest) == {("reports_reconcile", "ecommerce_reports"), ("reports_reconcile", "restaurant_reports"),
                           ("ledger_reconciles", "events"), ("ledger_reconciles", "orders")}
    assert body["failing"] == 1 and body["checks"][0]["passed"] is False  # failing first
    failed = latest[("reports_reconcile", "ecommerce_reports")]
    assert failed["windows_total"] == 1
    assert failed["windows"][0]["start"] == wrong.isoformat() and failed["windows"][0]["differs"] == ["revenue"]
    assert [f["check_name"] for f in body["failures"]] == ["reports_reconcile"]
    status, error = get(server.url + "/api/pipeline/checks?limit=0")
    assert status == 400 and error["parameter"] == "limit"
    _status, spec = get(server.url + "/api/openapi.json")
    assert "/api/pipeline/checks" in spec["paths"]


def test_pipeline_page_shows_the_failing_check_and_its_window(browser, failing):
    server, wrong = failing
    ctx, page, errors = open_page(browser, server.url + "/pipeline", width=1400)
    try:
        wait_js(page, "document.querySelector('[data-panel=checks]').dataset.state === 'ready'")
        states = page.evaluate("""() => Array.from(document.querySelectorAll('#table-checks .check-state'))
            .map(s => [s.dataset.check, s.dataset.asset, s.dataset.passed, s.textContent])""")
        assert states[0] == ["reports_reconcile", "ecommerce_reports", "false", "fail"]
        assert ["reports_reconcile", "restaurant_reports", "true", "pass"] in states
        window_text = page.evaluate("""() => document.querySelector('#table-checks tbody tr .check-windows li')
                                              .textContent""")
        assert window_text.startswith(f"{wrong:%Y-%m-%d %H:%M}–{wrong + timedelta(minutes=1):%H:%M} UTC mismatch")
        assert "revenue" in window_text
        notice = page.locator("#checks-notice")
        assert notice.is_visible()
        assert f"reports_reconcile on ecommerce_reports, window {wrong:%Y-%m-%d %H:%M}" in notice.inner_text()
        shot(page, "pipeline-checks-failing")
        assert errors == []
    finally:
        ctx.close()

"""Reconciliation and alert checks of ``pipeline_checks_job`` against a real
PostgreSQL, executed by Dagster (``execute_in_process`` of the real job's
checks): clean data passes, a crafted defect fails with the right window,
outcomes land in ``pipeline_check_results``, and a failing window is POSTed to
a real local HTTP server exactly once.

Raw rows are written either by the consumer's own ``BatchWriter`` (ledger,
content hash, one transaction per batch) or with plain SQL (tests/support);
report rows are written from independent SQL, like tests/test_orchestration_checks.py.
"""

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from dagster import AssetSelection, Definitions, define_asset_job, in_process_executor

from orchestration.assets import all_assets
from orchestration.checks import minute_checks
from orchestration.checks.alerts import (
    dead_letter_rate_alert,
    ecommerce_funnel_break,
    ecommerce_revenue_drop,
    restaurant_revenue_drop,
)
from orchestration.checks.reconcile import (
    ecommerce_reports_reconcile,
    ledger_reconciles,
    restaurant_reports_reconcile,
)
from orchestration.resources import KafkaResource, PostgresResource, SparkResource
from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC
from salespulse.settings import ROLE_INGEST, Settings, get_settings
from services.consumer.messages import RawMessage
from services.consumer.store import BatchWriter
from tests.support.consumer import ecommerce_event, restaurant_order
from tests.support.db import query
from tests.support.orchestration import (  # noqa: F401  (spark_remote: fixture)
    execute,
    expected_ecommerce_minutes,
    expected_restaurant_minutes,
    seed_ecommerce,
    seed_restaurant,
    spark_remote,
)

EC, RO = ECOMMERCE_TOPIC.name, RESTAURANT_TOPIC.name


def now_minute() -> datetime:
    return datetime.now(timezone.utc).replace(second=0, microsecond=0)


def run_checks(url, checks) -> dict:
    """``checks`` executed as ``pipeline_checks_job`` runs them: ``asset:check`` -> evaluation."""
    defs = Definitions(
        assets=all_assets, asset_checks=checks,
        jobs=[define_asset_job("checks", selection=AssetSelection.checks(*checks))],
        resources={"postgres": PostgresResource(database_url=url), "spark": SparkResource(), "kafka": KafkaResource()},
        executor=in_process_executor,
    )
    result = defs.resolve_job_def("checks").execute_in_process()
    assert result.success
    # every evaluation is recorded with its run
    assert query(url, "SELECT count(*) FROM pipeline_check_results WHERE run_id = %s", (result.run_id,)) == [
        (len(result.get_asset_check_evaluations()),)]
    return {f"{e.asset_key.to_user_string()}:{e.check_name}": e for e in result.get_asset_check_evaluations()}


def recorded(url, check, asset) -> list[tuple]:
    """(passed, severity, windows) of the recorded outcomes of ``check`` on ``asset``, oldest first."""
    return query(url, """SELECT passed, severity, windows FROM pipeline_check_results
                         WHERE check_name = %s AND asset = %s ORDER BY id""", (check, asset))


# --- writing raw and report rows ------------------------------------------------

def write_batch(url, messages, offset_from=0):
    """Messages through the consumer's writer, as one batch (ledger row in the same transaction)."""
    writer = BatchWriter(Settings(database_url=url).role_url(ROLE_INGEST))
    try:
        batch = [RawMessage(topic, 0, offset_from + i, b"k", json.dumps(value).encode(), None)
                 for i, (topic, value) in enumerate(messages)]
        return writer.write_raw(batch)
    finally:
        writer.close()


def consumer_rows(url, minute: datetime, n_events=15, n_orders=5, offset_from=0):
    ts = lambda i: (minute + timedelta(seconds=i % 60)).isoformat()  # noqa: E731
    messages = [(EC, ecommerce_event(i, timestamp=ts(i))) for i in range(n_events)]
    messages += [(RO, restaurant_order(i, timestamp=ts(i))) for i in range(n_orders)]
    return write_batch(url, messages, offset_from)


def write_ecommerce_reports(url, start, end, computed_at=None, skew_minute=None):
    """Overview rows equal to independent SQL (``skew_minute``: revenue + 1 there)."""
    for minute, (events, purchases, revenue, units) in expected_ecommerce_minutes(url, start, end).items():
        adds, removes = query(url, """SELECT count(*) FILTER (WHERE event_type = 'add_to_cart'),
                                             count(*) FILTER (WHERE event_type = 'remove_from_cart')
                                      FROM events WHERE date_trunc('minute', "timestamp") = %s""", (minute,))[0]
        execute(url, """INSERT INTO report_ecommerce_overview_minute
                        (window_start, events, page_views, searches, add_to_carts, remove_from_carts, purchases,
                         active_users, active_sessions, sessions_viewed, sessions_carted, sessions_purchased,
                         conversion_rate, revenue, units, avg_order_value, cart_abandonment_rate, computed_at)
                        VALUES (%s,%s,0,0,%s,%s,%s,1,1,1,1,1,0,%s,%s,0,0,COALESCE(%s, now()))""",
                (minute, events, adds, removes, purchases, revenue + (1 if minute == skew_minute else 0), units,
                 computed_at))


def write_restaurant_reports(url, start, end, computed_at=None, skip_minute=None):
    for minute, (orders, items, revenue) in expected_restaurant_minutes(url, start, end).items():
        if minute != skip_minute:
            restaurant_report_row(url, minute, revenue, orders=orders, items=items, computed_at=computed_at)


def restaurant_report_row(url, minute, revenue, orders=1, items=1, computed_at=None):
    execute(url, """INSERT INTO report_restaurant_overview_minute (window_start, orders, items_sold, revenue,
                                                                   avg_ticket, computed_at)
                    VALUES (%s,%s,%s,%s,0,COALESCE(%s, now()))
                    ON CONFLICT (window_start) DO UPDATE SET revenue = EXCLUDED.revenue""",
            (minute, orders, items, revenue, computed_at))


# --- reconciliation ------------------------------------------------------------------

RECONCILE = [ecommerce_reports_reconcile, restaurant_reports_reconcile, ledger_reconciles]
RECONCILE_KEYS = {"ecommerce_reports:reports_reconcile", "restaurant_reports:reports_reconcile",
                  "events:ledger_reconciles", "orders:ledger_reconciles"}


@pytest.fixture
def recent(database_url):
    """Rows in minutes 20..10 ago: by SQL (no ledger; ingested a second after their
    time) and by the consumer's writer (two batches, ingested now), and report rows
    equal to SQL over them, computed a minute after the last of them arrived (the
    report's grace: a report computed sooner could not have seen them all)."""
    base = now_minute() - timedelta(minutes=20)
    seed_ecommerce(database_url, base, minutes=(0, 3), per_minute=8)
    seed_restaurant(database_url, base, minutes=(1, 4), per_minute=3)
    for table in ("events", "orders"):  # rows without a ledger: their xmin does not matter
        execute(database_url, f"""UPDATE {table} SET ingested_at = "timestamp" + INTERVAL '1 second'
                                  WHERE content_hash IS NULL""")
    consumer_rows(database_url, base + timedelta(minutes=5))
    consumer_rows(database_url, base + timedelta(minutes=8), offset_from=100)
    computed = query(database_url, "SELECT now() + INTERVAL '61 seconds'")[0][0]
    write_ecommerce_reports(database_url, base, base + timedelta(minutes=11), computed_at=computed)
    write_restaurant_reports(database_url, base, base + timedelta(minutes=11), computed_at=computed)
    return database_url, base


def test_reconciliation_passes_on_a_clean_state(recent):
    url, _base = recent
    results = run_checks(url, RECONCILE)
    assert set(results) == RECONCILE_KEYS
    for key, evaluation in results.items():
        assert evaluation.passed, (key, evaluation.description)
    ledger = results["events:ledger_reconciles"].metadata
    assert ledger["stored"].value == ledger["rows_present"].value == 30  # the two batches' events
    assert ledger["messages"].value == 30
    assert results["orders:ledger_reconciles"].metadata["rows_present"].value == 10
    # minutes with rows from SQL and from the consumer, all settled and equal
    assert results["ecommerce_reports:reports_reconcile"].metadata["minutes_agreeing"].value == 4
    for check, asset in (("reports_reconcile", "ecommerce_reports"), ("ledger_reconciles", "orders")):
        assert recorded(url, check, asset) == [(True, "ERROR", [])]


def test_report_mismatch_fails_with_its_window(recent):
    url, base = recent
    wrong = base + timedelta(minutes=3)
    execute(url, "UPDATE report_ecommerce_overview_minute SET revenue = revenue + 1 WHERE window_start = %s", (wrong,))
    missing = base + timedelta(minutes=4)
    execute(url, "DELETE FROM report_restaurant_overview_minute WHERE window_start = %s", (missing,))
    results = run_checks(url, RECONCILE)
    ec = results["ecommerce_reports:reports_reconcile"]
    assert not ec.passed and ec.metadata["offending_windows"].value == 1
    (window,) = ec.metadata["windows"].value
    assert window["start"] == wrong.isoformat() and window["kind"] == "mismatch" and window["differs"] == ["revenue"]
    assert window["report"]["revenue"] == pytest.approx(window["raw"]["revenue"] + 1)
    ro = results["restaurant_reports:reports_reconcile"]
    assert not ro.passed and ro.metadata["first_offending"].value == missing.isoformat()
    assert ro.metadata["windows"].value[0]["kind"] == "missing"
    assert all(results[k].passed for k in ("events:ledger_reconciles", "orders:ledger_reconciles"))
    ((passed, severity, windows),) = recorded(url, "reports_reconcile", "ecommerce_reports")
    assert (passed, severity, [w["start"] for w in windows]) == (False, "ERROR", [wrong.isoformat()])


def test_late_row_is_pending_then_fails_when_not_restated(recent):
    url, base = recent
    minute = base + timedelta(minutes=5)
    late = ecommerce_event(999, event_type="page_view", timestamp=(minute + timedelta(seconds=30)).isoformat())
    # ingested now, less than the grace after its minute's report was computed (it may not have seen it)
    execute(url, "UPDATE report_ecommerce_overview_minute SET computed_at = now() WHERE window_start = %s", (minute,))
    write_batch(url, [(EC, late)], offset_from=500)
    ec = run_checks(url, [ecommerce_reports_reconcile])["ecommerce_reports:reports_reconcile"]
    assert ec.passed and ec.metadata["minutes_pending"].value == 1
    # ten minutes on, the report was never restated: the same row fails its minute
    execute(url, """UPDATE events SET ingested_at = ingested_at - INTERVAL '10 minutes'
                    WHERE "timestamp" >= %s AND "timestamp" < %s""", (minute, minute + timedelta(minutes=1)))
    execute(url, """UPDATE report_ecommerce_overview_minute SET computed_at = computed_at - INTERVAL '10 minutes'
                    WHERE window_start = %s""", (minute,))
    ec = run_checks(url, [ecommerce_reports_reconcile])["ecommerce_reports:reports_reconcile"]
    assert not ec.passed
    (window,) = ec.metadata["windows"].value
    assert (window["start"], window["kind"]) == (minute.isoformat(), "stale")
    assert window["raw"]["events"] == window["report"]["events"] + 1


def test_ledger_mismatch_fails_with_the_batch_minute(recent):
    url, _base = recent
    recorded_minute = query(url, f"""SELECT date_trunc('minute', max(recorded_at)) FROM ingest_ledger
                                     WHERE topic = '{EC}'""")[0][0]
    # a row the consumer stored disappears (a page view: nothing hangs on it)
    execute(url, """DELETE FROM events WHERE id = (SELECT max(id) FROM events
                    WHERE content_hash IS NOT NULL AND event_type = 'page_view')""")
    results = run_checks(url, [ledger_reconciles])
    assert results["orders:ledger_reconciles"].passed
    failed = results["events:ledger_reconciles"]
    assert not failed.passed
    (window,) = failed.metadata["windows"].value
    assert window["start"] == recorded_minute.isoformat()
    assert window["rows_present"] == window["stored"] - 1
    # a ledger row claiming dead letters that are nowhere
    execute(url, f"""INSERT INTO ingest_ledger (consumer_group, topic, "partition", first_offset, last_offset,
                                                messages, stored, duplicates, dead_lettered)
                     VALUES ('{get_settings().consumer_group}', '{RO}', 7, 0, 1, 2, 0, 0, 2)""")
    orders = run_checks(url, [ledger_reconciles])["orders:ledger_reconciles"]
    assert not orders.passed and "dead-letter rows" in orders.description


def test_rows_stored_under_a_savepoint_still_reconcile(database_url):
    """A batch the database partly rejects is isolated under savepoints: its rows
    carry subtransaction ids, and still count for their batch."""
    execute(database_url, "ALTER TABLE events ADD CONSTRAINT no_mallory CHECK (user_id <> 'mallory')")
    minute = now_minute() - timedelta(minutes=3)
    events = [ecommerce_event(i, event_type="page_view", timestamp=minute.isoformat()) for i in range(6)]
    events[1]["user_id"] = "mallory"
    result = write_batch(database_url, [(EC, e) for e in events])
    assert result.isolated and result.topics[EC].stored == 5 and result.topics[EC].dead_letters == 1
    unmatched = query(database_url, """SELECT count(*) FROM events
                                       WHERE xmin::text <> (SELECT xid::text FROM ingest_ledger)""")[0][0]
    assert unmatched > 0  # the savepoint rows: not matched by transaction id
    evaluation = run_checks(database_url, [ledger_reconciles])["events:ledger_reconciles"]
    assert evaluation.passed, evaluation.description
    assert (evaluation.metadata["rows_present"].value, evaluation.metadata["dead_letter_rows"].value) == (5, 1)


# --- alerts ------------------------------------------------------------------------

def seed_revenue(url, start, end, per_minute, computed_at=None):
    minute = start
    while minute < end:
        restaurant_report_row(url, minute, per_minute, computed_at=computed_at)
        minute += timedelta(minutes=1)


def test_revenue_drop_against_previous_days(database_url):
    now = now_minute()
    yesterday = now - timedelta(days=1)
    seed_revenue(database_url, yesterday - timedelta(minutes=90), yesterday + timedelta(minutes=30), Decimal(100))
    seed_revenue(database_url, now - timedelta(minutes=70), now + timedelta(minutes=1), Decimal(95))
    ok = run_checks(database_url, [restaurant_revenue_drop])["restaurant_reports:revenue_drop"]
    assert ok.passed, ok.description
    assert "previous day" in ok.metadata["baseline_from"].value
    assert ok.metadata["baseline"].value == pytest.approx(500)
    # the last 15 minutes earn a tenth: whichever 5-minute block is the newest complete one, it dropped
    seed_revenue(database_url, now - timedelta(minutes=15), now + timedelta(minutes=1), Decimal(10))
    bad = run_checks(database_url, [restaurant_revenue_drop])["restaurant_reports:revenue_drop"]
    assert not bad.passed and bad.description.startswith("REVENUE DROP")
    (window,) = bad.metadata["windows"].value
    start = datetime.fromisoformat(window["start"])
    assert start.minute % 5 == 0 and now - timedelta(minutes=15) <= start < now
    assert (window["revenue"], window["baseline"]) == (50.0, 500.0)
    assert recorded(database_url, "revenue_drop", "restaurant_reports")[-1][:2] == (False, "WARN")


def test_revenue_drop_against_the_trailing_hour(database_url):
    now = now_minute()
    drop = run_checks(database_url, [restaurant_revenue_drop])["restaurant_reports:revenue_drop"]
    assert drop.passed  # no report rows at all: nothing to compare
    seed_revenue(database_url, now - timedelta(minutes=80), now + timedelta(minutes=1), Decimal(40))
    ok = run_checks(database_url, [restaurant_revenue_drop])["restaurant_reports:revenue_drop"]
    assert ok.passed and "trailing" in ok.metadata["baseline_from"].value
    assert ok.metadata["baseline"].value == pytest.approx(200)
    seed_revenue(database_url, now - timedelta(minutes=15), now + timedelta(minutes=1), Decimal(0))
    bad = run_checks(database_url, [restaurant_revenue_drop])["restaurant_reports:revenue_drop"]
    assert not bad.passed and bad.metadata["windows"].value[0]["revenue"] == 0
    # the e-commerce side has no report rows: its check passes on its own
    assert run_checks(database_url, [ecommerce_revenue_drop])["ecommerce_reports:revenue_drop"].passed


def cart_event(url, session, product, event_type, ts):
    execute(url, """INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, product_id)
                    VALUES (%s, %s, %s, %s, %s, %s)""",
            (str(uuid.uuid4()), event_type, ts, f"u-{session}", session, product))


def test_funnel_break(database_url):
    at = now_minute() - timedelta(minutes=5)
    # normal sessions: what is taken was carted (an older addition counts too)
    cart_event(database_url, "s1", "p-1", "add_to_cart", at - timedelta(hours=3))
    cart_event(database_url, "s1", "p-1", "purchase", at + timedelta(seconds=5))
    cart_event(database_url, "s2", "p-2", "add_to_cart", at + timedelta(seconds=1))
    cart_event(database_url, "s2", "p-2", "add_to_cart", at + timedelta(seconds=2))
    cart_event(database_url, "s2", "p-2", "remove_from_cart", at + timedelta(seconds=3))
    cart_event(database_url, "s2", "p-2", "purchase", at + timedelta(seconds=4))
    ok = run_checks(database_url, [ecommerce_funnel_break])["ecommerce_reports:funnel_break"]
    assert ok.passed, ok.description
    assert (ok.metadata["purchases"].value, ok.metadata["removals"].value) == (2, 1)
    # a purchase of something never carted, and a second removal of one addition, a minute later
    broken = at + timedelta(minutes=1)
    cart_event(database_url, "s3", "p-3", "purchase", broken + timedelta(seconds=10))
    cart_event(database_url, "s4", "p-4", "add_to_cart", broken)
    cart_event(database_url, "s4", "p-4", "remove_from_cart", broken + timedelta(seconds=1))
    cart_event(database_url, "s4", "p-4", "remove_from_cart", broken + timedelta(seconds=2))
    bad = run_checks(database_url, [ecommerce_funnel_break])["ecommerce_reports:funnel_break"]
    assert not bad.passed
    (window,) = bad.metadata["windows"].value
    assert window["start"] == broken.isoformat()
    assert (window["purchases_without_cart"], window["removals_beyond_additions"]) == (1, 1)


def dead_letters(url, n, start=0):
    for i in range(start, start + n):
        execute(url, """INSERT INTO dead_letters (topic, "partition", "offset", key, payload, payload_sha256, error)
                        VALUES ('ecommerce.events', 0, %s, NULL, 'x', repeat('0', 64), 'bad json')""", (i,))


# --- webhook -----------------------------------------------------------------------

class Receiver:
    """A real HTTP server on a free local port, in a thread, keeping every POSTed JSON body."""

    def __init__(self, status: int = 204):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_env(monkeypatch):
    def configure(url):
        monkeypatch.setenv("ALERT_WEBHOOK_URL", url)
        monkeypatch.setenv("ALERT_WEBHOOK_ATTEMPTS", "2")
        monkeypatch.setenv("ALERT_WEBHOOK_TIMEOUT_S", "2")
        get_settings.cache_clear()

    yield configure
    get_settings.cache_clear()


def test_dead_letter_alert_posts_each_window_once(database_url, webhook_env):
    seed_ecommerce(database_url, now_minute() - timedelta(minutes=10), minutes=(0, 1), per_minute=20)
    dead_letters(database_url, 1)
    receiver = Receiver()
    try:
        webhook_env(receiver.url)
        ok = run_checks(database_url, [dead_letter_rate_alert])["dead_letters:dead_letter_rate_alert"]
        assert ok.passed and receiver.received == []  # normal data: no alert, nothing sent
        dead_letters(database_url, 30, start=1)
        for _ in range(2):  # the same failing hour, evaluated twice
            bad = run_checks(database_url, [dead_letter_rate_alert])["dead_letters:dead_letter_rate_alert"]
            assert not bad.passed
        assert len(receiver.received) == 1
        (sent,) = receiver.received
        assert (sent["check"], sent["asset"], sent["severity"]) == ("dead_letter_rate_alert", "dead_letters", "WARN")
        assert sent["windows"][0]["dead_letters"] == 31
        assert query(database_url, "SELECT status, attempts FROM pipeline_alert_notifications") == [("sent", 1)]
    finally:
        receiver.close()


def test_webhook_failure_is_not_fatal_and_is_retried(database_url, webhook_env):
    receiver = Receiver()
    port_url = receiver.url
    receiver.close()  # nothing listens there now: connection refused
    at = now_minute() - timedelta(minutes=4)
    cart_event(database_url, "s9", "p-9", "purchase", at)
    webhook_env(port_url)
    bad = run_checks(database_url, [ecommerce_funnel_break])["ecommerce_reports:funnel_break"]
    assert not bad.passed  # the check still reports, the run succeeds
    assert query(database_url, "SELECT window_key, status, attempts FROM pipeline_alert_notifications") == [
        (at.isoformat(), "failed", 2)]
    receiver = Receiver()
    try:
        webhook_env(receiver.url)
        run_checks(database_url, [ecommerce_funnel_break])
        run_checks(database_url, [ecommerce_funnel_break])
        assert [w["start"] for sent in receiver.received for w in sent["windows"]] == [at.isoformat()]
        assert query(database_url, "SELECT status FROM pipeline_alert_notifications") == [("sent",)]
    finally:
        receiver.close()


def test_webhook_delivery_bounds():
    """post_json against a real server: 2xx delivered at once, a refused body (400) not retried,
    a server error retried up to the bound; the setting refuses a URL that is not http(s)."""
    from orchestration.webhook import post_json

    for status, ok, attempts in ((200, True, 1), (400, False, 1), (503, False, 3)):
        receiver = Receiver(status)
        try:
            delivery = post_json(receiver.url, {"n": status}, timeout_s=2, attempts=3)
            assert (delivery.ok, delivery.attempts, delivery.http_status) == (ok, attempts, status)
            assert receiver.received == [{"n": status}] * attempts
        finally:
            receiver.close()
    assert Settings(alert_webhook_url="").alert_webhook_url is None
    with pytest.raises(ValueError, match="ALERT_WEBHOOK_URL must be an http"):
        Settings(alert_webhook_url="file:///etc/passwd")


# --- the job of the code location ------------------------------------------------------

def test_pipeline_checks_job_of_the_code_location(database_url, monkeypatch):
    """The real job and schedule, resources from the environment: every minute check runs and is recorded."""
    from tests.test_orchestration_definitions import load_defs

    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        defs, _repo = load_defs()
        assert _repo.get_schedule_def("pipeline_checks_every_minute").cron_schedule == "* * * * *"
        result = defs.resolve_job_def("pipeline_checks_job").execute_in_process()
        assert result.success
        keys = {f"{e.asset_key.to_user_string()}:{e.check_name}" for e in result.get_asset_check_evaluations()}
        assert keys == RECONCILE_KEYS | {"ecommerce_reports:revenue_drop", "restaurant_reports:revenue_drop",
                                         "ecommerce_reports:funnel_break", "dead_letters:dead_letter_rate_alert"}
        assert len(minute_checks) == 7  # 3 reconciliation checks (one of them on two assets), 4 alerts
        assert query(database_url, "SELECT count(*), bool_and(passed) FROM pipeline_check_results") == [(8, True)]
        # they are not part of the refresh runs
        refresh = defs.resolve_job_def("refresh_reports_job")
        assert not {k.name for k in refresh.asset_layer.asset_graph.asset_check_keys} & {
            "reports_reconcile", "revenue_drop", "funnel_break"}
    finally:
        get_settings.cache_clear()


def test_real_spark_reports_reconcile(database_url, spark_remote):
    """The report assets as Spark computes them agree with this check's SQL figures."""
    from dagster import materialize

    from orchestration.assets.partitions import partition_key_for
    from orchestration.assets.reports import ecommerce_reports, restaurant_reports

    minute = now_minute() - timedelta(minutes=8)
    seed_ecommerce(database_url, minute, minutes=(0,), per_minute=25)
    seed_restaurant(database_url, minute, minutes=(0,), per_minute=6)
    consumer_rows(database_url, minute, n_events=20, n_orders=4)
    result = materialize([ecommerce_reports, restaurant_reports], partition_key=partition_key_for(minute),
                         resources={"postgres": PostgresResource(database_url=database_url),
                                    "spark": SparkResource(remote=spark_remote)})
    assert result.success
    results = run_checks(database_url, RECONCILE)
    for key, evaluation in results.items():
        assert evaluation.passed, (key, evaluation.description)
    assert results["ecommerce_reports:reports_reconcile"].metadata["minutes_agreeing"].value == 1
    assert results["restaurant_reports:reports_reconcile"].metadata["minutes_agreeing"].value == 1
    # and a Spark report row that no longer matches its raw rows fails
    execute(database_url, """UPDATE report_restaurant_overview_minute SET items_sold = items_sold + 1,
                             computed_at = now() + INTERVAL '2 minutes'""")
    failed = run_checks(database_url, [restaurant_reports_reconcile])["restaurant_reports:reports_reconcile"]
    assert not failed.passed and failed.metadata["windows"].value[0]["differs"] == ["items_sold"]


def test_minute_schedule_skips_while_a_run_waits():
    from dagster import DagsterRun, DagsterRunStatus, build_schedule_context, instance_for_test

    from orchestration.jobs import pipeline_checks_job
    from orchestration.schedules import pipeline_checks_every_minute

    at = datetime(2026, 12, 6, 9, 17, tzinfo=timezone.utc)
    with instance_for_test() as instance:
        request = pipeline_checks_every_minute(build_schedule_context(instance=instance, scheduled_execution_time=at))
        assert request.run_key == "checks:2026-12-06T09:17"
        instance.add_run(DagsterRun(job_name=pipeline_checks_job.name, run_id=uuid.uuid4().hex,
                                    status=DagsterRunStatus.NOT_STARTED))
        skipped = pipeline_checks_every_minute(build_schedule_context(
            instance=instance, scheduled_execution_time=at + timedelta(minutes=1)))
        assert "still waiting" in skipped.skip_message

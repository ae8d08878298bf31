"""Asset checks pass on good data and fail on broken data.

The window checks run in a partitioned run next to a stand-in report asset
(same key and partitions as the real one) that writes report rows with plain
SQL — correct ones, or deliberately broken ones. (With the real Spark assets
they run in tests/test_orchestration_reports.py.)"""

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from dagster import (
    AssetCheckSeverity, AssetSelection, Definitions, asset, define_asset_job, in_process_executor, materialize,
)

from orchestration.assets.partitions import HOURLY
from orchestration.checks.freshness import ecommerce_reports_fresh
from orchestration.checks.integrity import (
    dead_letter_rate_check,
    ingest_ledger_contiguous,
    integrity_checks,
    raw_tables_consistent,
)
from orchestration.checks.window import (
    ecommerce_revenue_reconciles,
    ecommerce_windows_complete,
    restaurant_revenue_reconciles,
    restaurant_windows_complete,
)
from orchestration.resources import PostgresResource
from tests.support.orchestration import (
    BASE_HOUR,
    execute,
    expected_ecommerce_minutes,
    expected_restaurant_minutes,
    seed_ecommerce,
    seed_restaurant,
)

PARTITION = BASE_HOUR.strftime("%Y-%m-%d-%H:%M")


def write_ecommerce(url, start, end, *, skew=None, drop=None, computed_at=None):
    """Overview rows from independent SQL; ``skew`` adds 0.01 to one minute's
    revenue, ``drop`` leaves one minute out."""
    rows = sorted(expected_ecommerce_minutes(url, start, end).items())
    for i, (minute, (events, purchases, revenue, units)) in enumerate(rows):
        if drop == i:
            continue
        if skew == i:
            revenue += 1
        execute(url, """INSERT INTO report_ecommerce_overview_minute VALUES
                        (%s,%s,0,0,0,0,%s,1,1,1,1,1,1,%s,%s,0,0, COALESCE(%s, now()))""",
                (minute, events, purchases, revenue, units, computed_at))


def write_restaurant(url, start, end, *, skew=None, drop=None):
    rows = sorted(expected_restaurant_minutes(url, start, end).items())
    for i, (minute, (orders, items, revenue)) in enumerate(rows):
        if drop == i:
            continue
        if skew == i:
            revenue -= 1
        execute(url, "INSERT INTO report_restaurant_overview_minute VALUES (%s,%s,%s,%s,0,now())",
                (minute, orders, items, revenue))


def stand_in(name, url, writer, **broken):
    @asset(name=name, partitions_def=HOURLY, group_name=name.split("_")[0], description="stand-in")
    def _report(context):
        window = context.partition_time_window
        writer(url, window.start, window.end, **broken)

    return _report


def run_checks(url, name, writer, checks, **broken):
    result = materialize([stand_in(name, url, writer, **broken), *checks], partition_key=PARTITION,
                         resources={"postgres": PostgresResource(database_url=url)})
    assert result.success
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.fixture
def seeded(database_url):
    seed_ecommerce(database_url, BASE_HOUR)
    seed_restaurant(database_url, BASE_HOUR)
    # rows just outside the window must not count
    seed_ecommerce(database_url, BASE_HOUR + timedelta(hours=1), minutes=(0,), seed=5)
    seed_restaurant(database_url, BASE_HOUR - timedelta(hours=1), minutes=(59,), seed=6)
    return database_url


EC_CHECKS = [ecommerce_revenue_reconciles, ecommerce_windows_complete]
RO_CHECKS = [restaurant_revenue_reconciles, restaurant_windows_complete]


def test_window_checks_pass_on_good_reports(seeded):
    ec = run_checks(seeded, "ecommerce_reports", write_ecommerce, EC_CHECKS)
    assert ec["revenue_reconciles"].passed, ec["revenue_reconciles"].description
    assert ec["windows_complete"].passed
    assert ec["windows_complete"].metadata["minutes_with_data"].value == 5
    ro = run_checks(seeded, "restaurant_reports", write_restaurant, RO_CHECKS)
    assert ro["revenue_reconciles"].passed and ro["windows_complete"].passed
    assert ro["windows_complete"].metadata["minutes_with_data"].value == 4


def test_reconciliation_fails_on_wrong_revenue(seeded):
    ec = run_checks(seeded, "ecommerce_reports", write_ecommerce, EC_CHECKS, skew=2)
    assert not ec["revenue_reconciles"].passed
    assert ec["revenue_reconciles"].metadata["difference"].value == pytest.approx(1.0)
    assert ec["windows_complete"].passed
    ro = run_checks(seeded, "restaurant_reports", write_restaurant, RO_CHECKS, skew=0)
    assert not ro["revenue_reconciles"].passed


def test_completeness_fails_on_a_missing_window(seeded):
    ec = run_checks(seeded, "ecommerce_reports", write_ecommerce, EC_CHECKS, drop=4)
    assert not ec["windows_complete"].passed
    assert ec["windows_complete"].metadata["missing_windows"].value == 1
    assert (BASE_HOUR + timedelta(minutes=59)).isoformat() in ec["windows_complete"].metadata["first_missing"].value
    ro = run_checks(seeded, "restaurant_reports", write_restaurant, RO_CHECKS, drop=1)
    assert not ro["windows_complete"].passed and not ro["revenue_reconciles"].passed


def run_checks_job(url, checks):
    """``checks`` in a job of their own, as the health job runs them: ``asset:check`` -> evaluation."""
    defs = Definitions(
        assets=[stand_in("ecommerce_reports", url, write_ecommerce)],
        asset_checks=checks,
        jobs=[define_asset_job("health", selection=AssetSelection.checks(*checks))],
        resources={"postgres": PostgresResource(database_url=url)},
        executor=in_process_executor,
    )
    result = defs.resolve_job_def("health").execute_in_process()
    assert result.success
    return {f"{e.asset_key.to_user_string()}:{e.check_name}": e for e in result.get_asset_check_evaluations()}


def run_health(url, check):
    (evaluation,) = run_checks_job(url, [check]).values()
    return evaluation


def test_freshness(database_url):
    assert run_health(database_url, ecommerce_reports_fresh).passed  # no events: nothing to report
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    recent = now - timedelta(minutes=3)
    seed_ecommerce(database_url, recent, minutes=(0,), per_minute=5)
    stale = now - timedelta(minutes=30)
    seed_ecommerce(database_url, stale, minutes=(0,), per_minute=5, seed=3)
    # reports computed 25 minutes ago, covering only the old minute
    write_ecommerce(database_url, stale, stale + timedelta(minutes=1), computed_at=now - timedelta(minutes=25))
    evaluation = run_health(database_url, ecommerce_reports_fresh)
    # the dashboard's rule (salespulse.freshness; tests/test_freshness.py has every state)
    assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.ERROR
    assert evaluation.metadata["reports_state"].value == "stale" and "STALE" in evaluation.description
    # the reports catch up
    write_ecommerce(database_url, recent, recent + timedelta(minutes=1))
    assert run_health(database_url, ecommerce_reports_fresh).passed


def test_dead_letter_rate(database_url):
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    n = seed_ecommerce(database_url, now - timedelta(minutes=10), minutes=(0, 1, 2, 3, 4), per_minute=20)

    def dead(count, start):
        for i in range(start, start + count):
            execute(database_url, """INSERT INTO dead_letters (topic, "partition", "offset", key, payload, payload_sha256, error)
                                     VALUES ('ecommerce.events', 0, %s, NULL, 'x', repeat('0', 64), 'bad json')""", (i,))

    dead(2, 0)
    ok = run_health(database_url, dead_letter_rate_check)
    assert ok.passed and ok.metadata["messages"].value == n + 2
    dead(20, 2)
    bad = run_health(database_url, dead_letter_rate_check)
    assert not bad.passed
    assert bad.metadata["rate"].value == pytest.approx(22 / (n + 22), abs=1e-6)


def test_health_job_of_the_code_location(database_url, monkeypatch):
    """The real pipeline_health_checks_job, resources from the environment."""
    from salespulse.settings import get_settings
    from tests.test_orchestration_definitions import load_defs

    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        defs, _repo = load_defs()
        seed_ecommerce(database_url, datetime.now(timezone.utc) - timedelta(minutes=90), minutes=(0,))
        result = defs.resolve_job_def("pipeline_health_checks_job").execute_in_process()
        assert result.success
        evaluations = {f"{e.asset_key.to_user_string()}:{e.check_name}": e for e in result.get_asset_check_evaluations()}
        assert set(evaluations) == {"ecommerce_reports:reports_fresh", "restaurant_reports:reports_fresh",
                                    "ecommerce_reports:reports_current", "restaurant_reports:reports_current",
                                    "dead_letters:dead_letter_rate",
                                    "events:ingest_ledger_contiguous", "orders:ingest_ledger_contiguous",
                                    "events:raw_tables_consistent", "orders:raw_tables_consistent"}
        # e-commerce rows 90 minutes old were never reported: stale; no orders: fresh; no dead letters
        assert not evaluations["ecommerce_reports:reports_fresh"].passed
        assert evaluations["restaurant_reports:reports_fresh"].passed
        assert not evaluations["ecommerce_reports:reports_current"].passed
        assert evaluations["restaurant_reports:reports_current"].passed
        assert evaluations["dead_letters:dead_letter_rate"].passed
        # seeded rows agree; an empty ledger has no gap
        assert all(e.passed for key, e in evaluations.items() if key.startswith(("events:", "orders:")))
    finally:
        get_settings.cache_clear()


# --- ingest integrity: ledger contiguity and raw-table consistency ------------

def ledger(url, topic, partition, first, last, incarnation="inc-1"):
    execute(url, """INSERT INTO ingest_ledger (consumer_group, topic, topic_incarnation, "partition", first_offset,
                                               last_offset, messages, stored, duplicates, dead_lettered)
                    VALUES ('salespulse-ingest', %s, %s, %s, %s, %s, %s, %s, 0, 0)""",
            (topic, incarnation, partition, first, last, last - first + 1, last - first + 1))


INTEGRITY_KEYS = {"events:ingest_ledger_contiguous", "orders:ingest_ledger_contiguous",
                  "events:raw_tables_consistent", "orders:raw_tables_consistent"}


@pytest.fixture
def clean(seeded):
    """Seeded raw tables that agree, and a contiguous ledger on both topics."""
    for first, last in ((0, 99), (100, 149), (150, 150)):
        ledger(seeded, "ecommerce.events", 0, first, last)
    ledger(seeded, "ecommerce.events", 1, 0, 9)
    ledger(seeded, "ecommerce.events", 1, 0, 4, incarnation="inc-2")  # broker restart: offsets from 0 again
    ledger(seeded, "restaurant.orders", 3, 0, 39)
    ledger(seeded, "restaurant.orders", 3, 40, 41)
    return seeded


def test_integrity_checks_pass_on_clean_data(clean):
    results = run_checks_job(clean, integrity_checks)
    assert set(results) == INTEGRITY_KEYS
    for key, evaluation in results.items():
        assert evaluation.passed, (key, evaluation.description)
    assert results["events:ingest_ledger_contiguous"].metadata["ledger_rows"].value == 5
    assert results["events:ingest_ledger_contiguous"].metadata["messages"].value == 166
    assert results["orders:raw_tables_consistent"].metadata["violations"].value == 0


def test_ledger_check_fails_on_a_gap(clean):
    ledger(clean, "restaurant.orders", 3, 45, 50)  # 42..44 in no batch
    results = run_checks_job(clean, [ingest_ledger_contiguous])
    assert results["events:ingest_ledger_contiguous"].passed  # the other topic is contiguous
    failed = results["orders:ingest_ledger_contiguous"]
    assert not failed.passed and failed.metadata["discontinuities"].value == 1
    assert "| gap | salespulse-ingest | restaurant.orders | inc-1 | 3 | 42 | 45 |" in failed.metadata["gaps"].value


def test_consistency_check_fails_on_a_purchase_without_its_transaction(clean):
    orphan = str(uuid.uuid4())
    execute(clean, """INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, product_id)
                      VALUES (%s, 'purchase', %s, 'u-1', 's-1', 'p-1')""", (orphan, BASE_HOUR + timedelta(minutes=7)))
    results = run_checks_job(clean, [raw_tables_consistent])
    failed = results["events:raw_tables_consistent"]
    assert not failed.passed and failed.metadata["violations"].value == 1
    assert orphan in failed.metadata["first_violations"].value
    assert results["orders:raw_tables_consistent"].passed
    # the check looks at what was ingested since its last evaluation: a new order
    # whose items disagree, a late row, history left alone: tests/test_health_increments.py

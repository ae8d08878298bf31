"""The five-minute integrity checks look only at what is new (orchestration/increments.py).

Against the real PostgreSQL, through Dagster jobs built afresh for every
evaluation (so the state can only come from ``health_check_marks``):

* a violation ingested since the last evaluation is found, and the
  evaluation reports how many rows it looked at (the increment, not history);
* history is not scanned again: a violation made in old rows without an
  ingest (a hand edit, or rows backdated as if ingested long ago) is not
  reported by the check, while the whole-table query of ``salespulse audit``
  reports it;
* a violation found stays failing until it is fixed (then passes);
* a row whose ingest transaction was open across an evaluation (so it became
  visible with an ``ingested_at`` before that evaluation) is found by the next
  one, with no clock margin at all;
* the ledger: a gap between a new range and the partition's last older range
  is found.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg2
import pytest

from orchestration.checks.integrity import ingest_ledger_contiguous, raw_tables_consistent
from salespulse.integrity import consistency_violations, ledger_gaps, minute_ranges
from tests.support.orchestration import BASE_HOUR, execute, seed_ecommerce, seed_restaurant
from tests.test_orchestration_checks import ledger, run_checks_job

EC, RO = "ecommerce.events", "restaurant.orders"


@pytest.fixture(scope="module")
def own_cluster(state_dir):
    """A PostgreSQL cluster of this module's own. The increments' bound waits for any
    transaction open anywhere in the cluster during an evaluation (transaction-id
    marks); on the shared cluster another test's background process could hold one
    and make the next evaluation read the same rows again. Here only the test's own
    transactions exist, so the row counts below are exact."""
    from salespulse.stack.postgres import EmbeddedPostgres
    from tests.conftest import free_port

    pg = EmbeddedPostgres(state_dir / f"health-{uuid.uuid4().hex[:6]}", free_port(), durable=False).start()
    yield pg
    pg.stop()


@pytest.fixture
def no_margin(own_cluster, monkeypatch):
    """A migrated database on the module's own cluster, and no clock margin on the
    ``ingested_at`` bound: only the transaction-id marks can keep a late-committing
    row in the next increment."""
    from salespulse.db import migrate
    from salespulse.settings import Settings, get_settings

    url = own_cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")
    migrate(Settings(database_url=url))
    monkeypatch.setenv("LATE_ROWS_MARGIN_SECONDS", "0")
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def backdate(url, minutes=10):
    """Every row so far as if ingested (ledger rows recorded) ``minutes`` ago."""
    for table, column in (("events", "ingested_at"), ("orders", "ingested_at"), ("ingest_ledger_ranges", "recorded_at")):
        execute(url, f"UPDATE {table} SET {column} = {column} - %s", (timedelta(minutes=minutes),))


def orphan_purchase(url, minute, conn=None) -> str:
    """A purchase event without its transaction, at ``minute`` (event time)."""
    event_id = str(uuid.uuid4())
    sql = """INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, product_id)
             VALUES (%s, 'purchase', %s, 'u-1', 's-1', 'p-1')"""
    if conn is None:
        execute(url, sql, (event_id, minute))
    else:
        with conn.cursor() as cur:
            cur.execute(sql, (event_id, minute))
    return event_id


def consistency(url) -> dict:
    results = run_checks_job(url, [raw_tables_consistent])
    return {key.split(":")[0]: e for key, e in results.items()}


def meta(evaluation, name):
    return evaluation.metadata[name].value


def whole_table(url, query) -> list[tuple]:
    """``query(cursor)`` of ``salespulse.integrity`` over the whole tables (the audit's)."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            return query(cur)
    finally:
        conn.close()


def test_minute_ranges_merge_consecutive_minutes():
    m = [BASE_HOUR + timedelta(minutes=k) for k in (5, 0, 1, 2, 5, 9)]
    assert minute_ranges(m) == [(BASE_HOUR, BASE_HOUR + timedelta(minutes=3)),
                                (BASE_HOUR + timedelta(minutes=5), BASE_HOUR + timedelta(minutes=6)),
                                (BASE_HOUR + timedelta(minutes=9), BASE_HOUR + timedelta(minutes=10))]
    assert minute_ranges([]) == []


def test_consistency_check_looks_at_the_increment_and_keeps_failing_until_fixed(database_url):
    url = database_url
    history = seed_ecommerce(url, BASE_HOUR)
    orders = seed_restaurant(url, BASE_HOUR)
    old_orphan = orphan_purchase(url, BASE_HOUR + timedelta(minutes=7))
    backdate(url)

    # first evaluation: the last hour of ingestion (here: all of it)
    first = consistency(url)
    assert meta(first["events"], "first_evaluation") and meta(first["events"], "rows_ingested") == history + 1
    assert meta(first["orders"], "rows_ingested") == orders and first["orders"].passed
    assert not first["events"].passed and old_orphan in meta(first["events"], "first_violations")

    # nothing new: only the violation's minute is looked at again, and still fails
    again = consistency(url)
    assert not meta(again["events"], "first_evaluation")
    assert meta(again["events"], "rows_ingested") == 0 and meta(again["events"], "pending_rechecked") == 1
    assert meta(again["events"], "minutes_checked") == 1 and meta(again["events"], "violations") == 1
    assert meta(again["orders"], "rows_ingested") == 0 and meta(again["orders"], "minutes_checked") == 0

    # fixed: passes, nothing pending
    execute(url, """INSERT INTO transactions (transaction_id, event_id, product_id, quantity, total_amount,
                                              payment_method, "timestamp")
                    SELECT 'tx-fix', event_id, 'p-1', 1, 1, 'card', "timestamp" FROM events WHERE event_id = %s""",
            (old_orphan,))
    fixed = consistency(url)
    assert fixed["events"].passed and meta(fixed["events"], "pending_rechecked") == 1
    assert meta(consistency(url)["events"], "pending_rechecked") == 0

    # history is not scanned: a hand edit of an old row is left to `salespulse audit`
    execute(url, """DELETE FROM transactions WHERE id = (SELECT min(id) FROM transactions
                    WHERE "timestamp" < %s)""", (BASE_HOUR + timedelta(minutes=5),))
    assert [v[0] for v in whole_table(url, consistency_violations)] == ["purchase_without_transaction"]
    untouched = consistency(url)
    assert untouched["events"].passed and meta(untouched["events"], "minutes_checked") == 0

    # a late purchase ingested now, into an old minute of its own: found, alone
    late = orphan_purchase(url, BASE_HOUR + timedelta(minutes=40))
    found = consistency(url)
    assert not found["events"].passed and meta(found["events"], "violations") == 1
    assert late in meta(found["events"], "first_violations")
    assert meta(found["events"], "rows_ingested") == 1 and meta(found["events"], "minutes_checked") == 1
    assert found["orders"].passed and meta(found["orders"], "rows_ingested") == 0


def test_a_new_order_whose_items_disagree_fails_the_restaurant_side(database_url):
    seed_restaurant(database_url, BASE_HOUR)
    backdate(database_url)
    assert consistency(database_url)["orders"].passed
    order_id = str(uuid.uuid4())
    execute(database_url, """
        WITH o AS (INSERT INTO orders (order_id, "timestamp", restaurant_id, channel, total_amount, payment_method,
                                       item_count)
                   VALUES (%(id)s, %(ts)s, 'r-1', 'takeaway', 9, 'card', 3) RETURNING order_id, "timestamp")
        INSERT INTO order_items (order_id, line_number, item_id, name, category, quantity, unit_price, line_total,
                                 "timestamp")
        SELECT order_id, 1, 'i-1', 'Soup', 'mains', 2, 4.5, 9, "timestamp" FROM o""",
            {"id": order_id, "ts": BASE_HOUR + timedelta(minutes=3, seconds=30)})
    results = consistency(database_url)
    assert results["events"].passed
    failed = results["orders"]
    assert not failed.passed and meta(failed, "violations") == 1 and meta(failed, "rows_ingested") == 1
    assert "order_item_count_mismatch" in meta(failed, "first_violations") and order_id in meta(
        failed, "first_violations")


def test_a_row_committed_after_an_evaluation_that_could_not_see_it_is_found(no_margin):
    url = no_margin
    seed_ecommerce(url, BASE_HOUR, minutes=(0,))
    assert consistency(url)["events"].passed  # the state starts here

    held = psycopg2.connect(url)  # an ingest transaction that stays open across an evaluation
    try:
        orphan = orphan_purchase(url, BASE_HOUR + timedelta(minutes=20), conn=held)
        during = consistency(url)
        assert during["events"].passed and orphan not in meta(during["events"], "first_violations")  # not visible yet
        held.commit()
    finally:
        held.close()
    # visible now, with an ingested_at before the previous evaluation
    after = consistency(url)
    assert not after["events"].passed and orphan in meta(after["events"], "first_violations")
    assert meta(after["events"], "rows_ingested") == 1


def test_ledger_check_finds_a_gap_at_the_increments_boundary(no_margin):
    """(No margin: with one, the rows recorded in the minute before an
    evaluation are looked at again by the next. The bound also waits for any
    transaction open anywhere in the cluster during an evaluation: the module's
    own cluster has none but the test's, so the row counts below are exact.)"""
    url = no_margin
    ledger(url, RO, 0, 0, 99)
    ledger(url, RO, 0, 100, 149)
    backdate(url)
    results = run_checks_job(url, [ingest_ledger_contiguous])
    assert results["orders:ingest_ledger_contiguous"].passed
    assert meta(results["orders:ingest_ledger_contiguous"], "ledger_rows") == 2

    ledger(url, RO, 0, 160, 170)  # 150..159 in no batch: between the old last range and the new one
    failed = run_checks_job(url, [ingest_ledger_contiguous])["orders:ingest_ledger_contiguous"]
    assert not failed.passed and meta(failed, "discontinuities") == 1 and meta(failed, "ledger_rows") == 1
    assert f"| gap | salespulse-ingest | {RO} | inc-1 | 0 | 150 | 160 |" in meta(failed, "gaps")

    still = run_checks_job(url, [ingest_ledger_contiguous])["orders:ingest_ledger_contiguous"]
    assert not still.passed and meta(still, "ledger_rows") == 0 and meta(still, "pending_rechecked") == 1

    ledger(url, RO, 0, 150, 159)  # the missing batch arrives
    results = run_checks_job(url, [ingest_ledger_contiguous])
    assert results["orders:ingest_ledger_contiguous"].passed
    assert results["events:ingest_ledger_contiguous"].passed

    # a gap in history (rows recorded long ago) is left to `salespulse audit`
    ledger(url, EC, 2, 0, 9)
    ledger(url, EC, 2, 20, 29)
    backdate(url)
    results = run_checks_job(url, [ingest_ledger_contiguous])
    assert results["events:ingest_ledger_contiguous"].passed
    assert meta(results["events:ingest_ledger_contiguous"], "ledger_rows") == 0
    assert [(g[1], g[3], g[4], g[5]) for g in whole_table(url, ledger_gaps)] == [(EC, 2, 10, 20)]

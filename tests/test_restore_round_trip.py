"""``salespulse backup`` then ``salespulse restore`` of everything, against the real
PostgreSQL and broker: a database filled by the real consumer (raw rows in their month
partitions, keys, ledger, dead letters) and holding reports, restored into a brand-new
database, equals the original table by table, partition by partition and grant by
grant; the service roles work in it; and a message re-sent after the restore is still
recognised as a duplicate of what was stored before the backup. A restore whose SQL
fails after its ``DROP SCHEMA public`` exits non-zero with psql's error and, being one
transaction, leaves the database as it was.

(tests/test_ops.py has the narrower round trips: rows of two tables, stdin/stdout, a
missing or broken dump file.)"""

from __future__ import annotations

import uuid

from salespulse import cli
from salespulse.db import migrate
from salespulse.settings import Settings, get_settings
from services.consumer.app import ConsumerService
from tests.support.consumer import (
    ServiceThread,
    count_events,
    count_orders,
    ecommerce_event,
    end_offsets,
    group_from,
    produce,
    produce_events,
    produce_orders,
    restaurant_order,
)
from tests.support.dashboard_seed import seed_all
from tests.support.db import query

ROLES = ("salespulse_ingest", "salespulse_analytics", "salespulse_dashboard")


def consume(settings: Settings, bootstrap: str, tag: str, start: dict) -> None:
    """The real consumer, from ``start`` (this test's first offsets) to the end."""
    svc = ConsumerService(settings.model_copy(update={"metrics_port": 0}), group_id=group_from(bootstrap, tag, start),
                          stop_at_end=True, batch_size=200)
    ServiceThread(svc).start().join(180)


def snapshot(url: str) -> dict:
    """Everything a restore must bring back, as comparable values: every table's
    (partitioned ones whole and each partition), and materialized view's rows (count and a digest of the sorted rows), the partition
    tree with its bounds, the service roles' privileges, sequences, functions,
    triggers, views and indexes."""
    relations = [r[0] for r in query(url, """
        SELECT c.relname FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'm') ORDER BY 1""")]
    rows = {}
    for rel in relations:
        (count, digest), = query(url, f"""
            SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), ''))
            FROM public."{rel}" t""")
        rows[rel] = (count, digest)
    return {
        "rows": rows,
        "partitions": query(url, """
            SELECT i.inhparent::regclass::text, i.inhrelid::regclass::text,
                   pg_get_expr(c.relpartbound, c.oid)
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid ORDER BY 1, 2"""),
        "grants": query(url, """
            SELECT grantee, table_name, privilege_type FROM information_schema.role_table_grants
            WHERE table_schema = 'public' AND grantee LIKE 'salespulse%' ORDER BY 1, 2, 3"""),
        "sequences": query(url, "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public' "
                                "ORDER BY 1"),
        "functions": query(url, "SELECT p.oid::regprocedure::text FROM pg_proc p "
                                "WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1"),
        "triggers": query(url, "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal "
                               "ORDER BY 1, 2"),
        "views": query(url, "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1"),
        "indexes": query(url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"),
    }


def ledger_totals(url: str) -> tuple[int, int, int]:
    (stored, duplicates, dead), = query(url, "SELECT coalesce(sum(stored), 0), coalesce(sum(duplicates), 0), "
                                             "coalesce(sum(dead_lettered), 0) FROM ingest_ledger")
    return int(stored), int(duplicates), int(dead)


def run_cli(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_restore_into_a_new_database_brings_back_everything(settings, broker, postgres, tmp_path, capsys,
                                                              monkeypatch):
    source = settings.database_url
    seed_all(source)  # reports, restatements, pipeline records (and raw rows of their own)
    events = [ecommerce_event(i, run="restore") for i in range(120)]
    orders = [restaurant_order(i) for i in range(30)]
    start = end_offsets(broker.bootstrap)
    produce_events(broker.bootstrap, events)
    produce_orders(broker.bootstrap, orders)
    produce(broker.bootstrap, "ecommerce.events", [(b"k", b"{not json")])  # a dead letter
    consume(settings, broker.bootstrap, "restore-fill", start)
    assert count_events(source, [e["event_id"] for e in events]) == len(events)
    assert count_orders(source, [o["order_id"] for o in orders]) == len(orders)
    stored, duplicates, dead = ledger_totals(source)
    assert (stored, duplicates, dead) == (len(events) + len(orders), 0, 1)
    before = snapshot(source)
    # what the round trip must carry: more than one month partition, reports, keys
    assert len([p for p in before["partitions"] if p[0] == "events"]) >= 2, before["partitions"]
    for table in ("report_ecommerce_overview_minute", "report_restaurant_overview_minute", "event_keys",
                  "order_keys", "order_items", "dead_letters", "ingest_ledger_ranges", "schema_migrations"):
        assert before["rows"][table][0] > 0, table
    assert set(ROLES) <= {g[0] for g in before["grants"]}

    dump = tmp_path / "everything.dump"
    code, _, _ = run_cli(["backup", "--out", str(dump)], capsys)
    assert code == 0

    # a brand-new database of the same cluster (roles are cluster-wide: created by the
    # migration of the session's template, as `salespulse migrate` on a new server)
    fresh = postgres.create_database(f"restore_{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("DATABASE_URL", fresh)
    get_settings.cache_clear()
    code, out, err = run_cli(["restore", str(dump)], capsys)
    assert code == 0, err
    assert snapshot(fresh) == before

    restored = settings.model_copy(update={"database_url": fresh})
    migrate(restored)  # nothing pending: the restored schema_migrations match the code
    assert snapshot(fresh) == before

    # the roles work in the restored database
    reports = "SELECT count(*) FROM report_ecommerce_overview_minute"
    assert query(restored.role_url("salespulse_dashboard"), reports) == query(fresh, reports)
    assert query(restored.role_url("salespulse_analytics"), reports) == query(fresh, reports)

    # a message stored before the backup, re-sent after the restore: a duplicate, not a
    # second row nor a dead letter (the keys and content hashes came back)
    again = end_offsets(broker.bootstrap)
    produce_events(broker.bootstrap, [events[7]])
    produce_orders(broker.bootstrap, [orders[3]])
    consume(restored, broker.bootstrap, "restore-resend", again)
    assert ledger_totals(fresh) == (stored, 2, 1)
    after = snapshot(fresh)["rows"]
    for table in ("events", "event_keys", "orders", "order_keys", "order_items", "dead_letters"):
        assert after[table][0] == before["rows"][table][0], table


def test_a_restore_that_fails_after_dropping_the_schema_exits_non_zero_and_changes_nothing(
        settings, postgres, tmp_path, capsys, monkeypatch):
    """The dump's SQL fails after ``DROP SCHEMA public CASCADE`` has run: the dump creates
    a schema the target already has. psql stops there; its error is reported, the exit
    is non-zero, and the one transaction rolls the drop back."""
    source = settings.database_url
    seed_all(source)
    query(source, "CREATE SCHEMA extra; CREATE TABLE extra.notes (note text)")
    dump = tmp_path / "with-extra.dump"
    code, _, _ = run_cli(["backup", "--out", str(dump)], capsys)
    assert code == 0

    target = postgres.create_database(f"failing_{uuid.uuid4().hex[:8]}")
    migrate(settings.model_copy(update={"database_url": target}))
    seed_all(target)
    query(target, "CREATE SCHEMA extra")
    before = snapshot(target)
    monkeypatch.setenv("DATABASE_URL", target)
    get_settings.cache_clear()
    code, out, err = run_cli(["restore", str(dump)], capsys)
    assert code != 0
    assert "restore failed (psql" in err and 'schema "extra" already exists' in err, err
    assert "restored" not in out
    assert snapshot(target) == before

    # object by object, the drop is not rolled back: still a non-zero exit and the error
    code, out, err = run_cli(["restore", "--no-single-transaction", str(dump)], capsys)
    assert code != 0
    assert "restore failed (psql" in err and 'schema "extra" already exists' in err, err
    assert snapshot(target)["rows"] != before["rows"]

"""Migrations, roles and topic creation against the real services."""

import psycopg2
import pytest

from salespulse.contracts import all_topic_partitions
from salespulse.db import apply_migrations, discover_migrations, pending_migrations
from salespulse.kafka import ensure_topics, existing_topics, admin_client
from salespulse.settings import ROLE_DASHBOARD, ROLE_INGEST


def test_migrations_recorded_and_rerun_is_noop(database_url):
    assert pending_migrations(database_url) == []
    assert apply_migrations(database_url) == []
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM schema_migrations ORDER BY version")
        assert [r[0] for r in cur.fetchall()] == [m.name for m in discover_migrations()]


def test_materialized_views_refresh_concurrently(database_url):
    from decimal import Decimal

    views = ("sales_by_category", "top_products", "daily_metrics")

    def refresh(concurrently: str) -> dict:
        conn = psycopg2.connect(database_url)
        conn.autocommit = True  # CONCURRENTLY cannot run in a transaction block
        with conn.cursor() as cur:
            for view in views:
                cur.execute(f"REFRESH MATERIALIZED VIEW {concurrently} {view}")
            cur.execute("SELECT category, revenue, units, orders FROM sales_by_category")
            by_category = sorted(cur.fetchall())
            cur.execute("SELECT product_id, units, orders FROM top_products")
            top = sorted(cur.fetchall())
            cur.execute("SELECT day::text, events, purchases, revenue FROM daily_metrics")
            daily = sorted(cur.fetchall())
        conn.close()
        return {"sales_by_category": by_category, "top_products": top, "daily_metrics": daily}

    def write(*statements: str) -> None:
        with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
        conn.close()

    # the views read the daily aggregates (sql/090), maintained from the raw rows elsewhere
    write("""INSERT INTO products (product_id, product_name, category, price)
             VALUES ('p-1', 'Kettle', 'kitchen', 10), ('p-2', 'Lamp', 'home', 4.5), ('p-3', 'Pot', 'kitchen', 5)""",
          """INSERT INTO daily_event_totals (day, events, unique_users, sessions, purchases)
             VALUES ('2026-03-01', 5, 2, 2, 1)""",
          """INSERT INTO daily_product_sales (day, product_id, units, revenue, orders, last_sale_at)
             VALUES ('2026-03-01', 'p-1', 2, 20, 1, '2026-03-01T12:00:00Z')""")
    first = refresh("")  # the first refresh populates (CONCURRENTLY needs a populated view)
    assert first["sales_by_category"] == [("kitchen", Decimal("20.00"), 2, 1)]

    write("""UPDATE daily_event_totals SET events = 9, purchases = 3""",
          """UPDATE daily_product_sales SET units = 3, revenue = 30, orders = 2""",
          """INSERT INTO daily_product_sales (day, product_id, units, revenue, orders, last_sale_at)
             VALUES ('2026-03-01', 'p-2', 2, 9, 1, '2026-03-01T12:03:00Z'),
                    ('2026-03-01', 'p-3', 1, 5, 1, '2026-03-01T12:04:00Z')""")
    second = refresh("CONCURRENTLY")  # the unique indexes allow it, and it sees the changes
    assert second == {
        "sales_by_category": [("home", Decimal("9.00"), 2, 1), ("kitchen", Decimal("35.00"), 4, 3)],
        "top_products": [("p-1", 3, 2), ("p-2", 2, 1), ("p-3", 1, 1)],
        "daily_metrics": [("2026-03-01", 9, 3, Decimal("44.00"))],
    }


def test_roles_have_least_privilege(settings):
    dash = psycopg2.connect(settings.role_url(ROLE_DASHBOARD))
    with dash.cursor() as cur:
        cur.execute("SELECT count(*) FROM sales_by_category")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("INSERT INTO dead_letters (topic, partition, \"offset\", payload_sha256, error) "
                        "VALUES ('x', 0, 0, repeat('0', 64), 'e')")
    dash.close()
    ingest = psycopg2.connect(settings.role_url(ROLE_INGEST))
    with ingest.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT * FROM report_ecommerce_overview_minute")
    ingest.close()


def test_topics_created_with_partition_counts(broker):
    created = ensure_topics(broker.bootstrap)
    assert created == all_topic_partitions()
    assert existing_topics(admin_client(broker.bootstrap))["ecommerce.events"] == 6
    assert ensure_topics(broker.bootstrap) == created  # idempotent


def test_recover_group_keeps_committed_offsets(broker):
    import uuid

    from confluent_kafka import Consumer, TopicPartition

    from salespulse.kafka import committed_offsets, consumer_config, recover_group

    ensure_topics(broker.bootstrap)
    group = f"stuck-{uuid.uuid4().hex[:8]}"
    offsets = [TopicPartition("ecommerce.events", 0, 5), TopicPartition("restaurant.orders", 1, 7)]
    consumer = Consumer(consumer_config(broker.bootstrap, group))
    consumer.assign(offsets)
    consumer.commit(offsets=offsets, asynchronous=False)
    consumer.close()

    saved = recover_group(broker.bootstrap, group)

    def as_pairs(tps):
        return sorted((tp.topic, tp.partition, tp.offset) for tp in tps if tp.offset >= 0)

    assert as_pairs(saved) == [("ecommerce.events", 0, 5), ("restaurant.orders", 1, 7)]
    assert as_pairs(committed_offsets(broker.bootstrap, group)) == as_pairs(saved)


def test_the_base_package_reaches_no_service_and_replay_is_still_a_command():
    """salespulse/ (but for the local stack, which starts the services as processes) names no
    services/, orchestration/ or dashboard/ module; the consumer's replay registers itself
    through the ``salespulse.commands`` entry point."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    upper = ("services", "orchestration", "dashboard")
    found = []
    for path in (root / "salespulse").rglob("*.py"):
        if "stack" in path.relative_to(root / "salespulse").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and " " not in node.value:
                names = [node.value]  # a module loaded by name
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in upper and "." in n]
    assert found == []
    help_text = subprocess.run([sys.executable, "-m", "salespulse.cli", "--help"], cwd=root,
                               capture_output=True, text=True, check=True).stdout
    assert "replay" in help_text

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
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        for view in ("sales_by_category", "top_products", "daily_metrics"):
            cur.execute(f"REFRESH MATERIALIZED VIEW {view}")  # first refresh populates
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        for view in ("sales_by_category", "top_products", "daily_metrics"):
            cur.execute(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}")
    conn.close()


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

"""Materialized-view assets refresh (concurrently, as the analytics role) to
the values plain SQL gives over the raw tables."""

from datetime import timedelta
from decimal import Decimal

from dagster import materialize

from orchestration.assets.views import materialized_views
from orchestration.resources import PostgresResource
from tests.support.orchestration import BASE_HOUR, materializations, query, seed_ecommerce


def test_views_refresh_to_independent_sql(database_url):
    pg = PostgresResource(database_url=database_url)
    assert query(database_url, "SELECT count(*) FROM sales_by_category")[0][0] == 0
    seed_ecommerce(database_url, BASE_HOUR)
    seed_ecommerce(database_url, BASE_HOUR + timedelta(days=1), minutes=(3, 4))

    result = materialize(materialized_views, resources={"postgres": pg})
    assert result.success

    expected = query(database_url, """SELECT p.category, sum(t.total_amount), sum(t.quantity), count(*)
                                      FROM transactions t JOIN products p USING (product_id) GROUP BY 1""")
    got = query(database_url, "SELECT category, revenue, units, orders FROM sales_by_category")
    assert sorted(got) == sorted(expected) and len(expected) >= 2
    expected_top = query(database_url, """SELECT product_id, sum(quantity), sum(total_amount) FROM transactions
                                          GROUP BY 1""")
    assert sorted(query(database_url, "SELECT product_id, units, revenue FROM top_products")) == sorted(expected_top)
    days = query(database_url, """SELECT ("timestamp" AT TIME ZONE 'UTC')::date, count(*),
                                         count(*) FILTER (WHERE event_type = 'purchase')
                                  FROM events GROUP BY 1""")
    assert sorted(query(database_url, "SELECT day, events, purchases FROM daily_metrics")) == sorted(days)
    assert len(days) == 2

    meta = {key: m for (key, _partition), m in materializations(result).items()}
    assert meta["sales_by_category"]["dagster/row_count"].value == len(expected)
    assert meta["top_products"]["dagster/row_count"].value == len(expected_top)

    # refreshing again after new sales picks them up (and stays unique per key)
    revenue_before = query(database_url, "SELECT sum(revenue) FROM sales_by_category")[0][0]
    seed_ecommerce(database_url, BASE_HOUR + timedelta(hours=2), minutes=(10,), per_minute=40, seed=7)
    assert materialize(materialized_views, resources={"postgres": pg}).success
    new_total = query(database_url, "SELECT sum(total_amount) FROM transactions")[0][0]
    assert query(database_url, "SELECT sum(revenue) FROM sales_by_category")[0][0] == new_total
    assert new_total > revenue_before
    assert isinstance(new_total, Decimal)


DAILY_FROM_RAW = """SELECT ("timestamp" AT TIME ZONE 'UTC')::date, count(*), count(DISTINCT user_id),
                           count(DISTINCT session_id), count(*) FILTER (WHERE event_type = 'purchase')
                    FROM events GROUP BY 1"""
DAILY_FROM_VIEW = "SELECT day, events, unique_users, sessions, purchases FROM daily_metrics"


def test_only_changed_days_are_recomputed_and_distinct_counts_stay_exact(database_url):
    import psycopg2

    from salespulse.daily_aggregates import maintain

    pg = PostgresResource(database_url=database_url)
    seed_ecommerce(database_url, BASE_HOUR)
    seed_ecommerce(database_url, BASE_HOUR + timedelta(days=1), minutes=(3, 4))
    assert materialize(materialized_views, resources={"postgres": pg}).success
    assert sorted(query(database_url, DAILY_FROM_VIEW)) == sorted(query(database_url, DAILY_FROM_RAW))

    # a quiet maintenance (the rows above are older than the margin) recomputes nothing
    query(database_url, "UPDATE events SET ingested_at = ingested_at - interval '1 hour'")
    query(database_url, "UPDATE daily_aggregates_state SET maintained_until = now()")
    conn = psycopg2.connect(database_url)
    try:
        assert maintain(conn).days == []
        computed = dict(query(database_url, "SELECT day, computed_at FROM daily_event_totals"))

        # late events for the first day (new users, one more session) restate that day only
        seed_ecommerce(database_url, BASE_HOUR + timedelta(minutes=30), minutes=(1,), per_minute=9, seed=99)
        query(database_url, """UPDATE events SET user_id = 'late-' || id, session_id = 'late-s-' || id
                               WHERE ingested_at > now() - interval '1 minute'""")
        done = maintain(conn)
    finally:
        conn.close()
    assert done.days == [BASE_HOUR.date()]
    after = dict(query(database_url, "SELECT day, computed_at FROM daily_event_totals"))
    second_day = (BASE_HOUR + timedelta(days=1)).date()
    assert after[second_day] == computed[second_day] and after[BASE_HOUR.date()] > computed[BASE_HOUR.date()]

    assert materialize(materialized_views, resources={"postgres": pg}).success
    assert sorted(query(database_url, DAILY_FROM_VIEW)) == sorted(query(database_url, DAILY_FROM_RAW))
    revenue = query(database_url, "SELECT sum(total_amount) FROM transactions")[0][0]
    assert query(database_url, "SELECT sum(revenue) FROM daily_metrics")[0][0] == revenue
    assert query(database_url, "SELECT sum(revenue) FROM sales_by_category")[0][0] == revenue


def test_the_migration_converts_existing_history_into_daily_aggregates(postgres, tmp_path):
    import shutil
    import uuid

    from salespulse.db import SQL_DIR, apply_migrations

    url = postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
    for path in SQL_DIR.glob("*.sql"):
        if path.name < "090":
            shutil.copy(path, tmp_path / path.name)
    apply_migrations(url, tmp_path)
    seed_ecommerce(url, BASE_HOUR)
    seed_ecommerce(url, BASE_HOUR + timedelta(days=3), minutes=(7,))
    applied = apply_migrations(url)
    assert "090_daily_aggregates" in applied
    assert query(url, "SELECT count(*) FROM daily_metrics")[0][0] == 2  # populated by the migration itself
    assert sorted(query(url, DAILY_FROM_VIEW)) == sorted(query(url, DAILY_FROM_RAW))
    assert sorted(query(url, "SELECT product_id, units, revenue FROM top_products")) == sorted(
        query(url, "SELECT product_id, sum(quantity), sum(total_amount) FROM transactions GROUP BY 1"))


def test_every_view_that_reads_the_aggregates_is_an_asset():
    from orchestration.assets.views import VIEWS
    from salespulse.daily_aggregates import VIEWS as AGGREGATE_VIEWS

    assert tuple(VIEWS) == AGGREGATE_VIEWS

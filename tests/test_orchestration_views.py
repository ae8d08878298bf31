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

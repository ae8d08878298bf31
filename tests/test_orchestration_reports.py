"""The Spark report assets materialised with materialize() on seeded raw rows
(real PostgreSQL, real Spark Connect server): values equal independent SQL,
only the partition's windows are written, re-runs replace instead of adding,
and the partition's checks pass."""

from datetime import timedelta

from dagster import materialize

from orchestration.assets.reports import ecommerce_reports, restaurant_reports
from orchestration.checks import window_checks
from orchestration.resources import PostgresResource, SparkResource
from tests.support.orchestration import (  # noqa: F401  (fixtures)
    BASE_HOUR,
    actual_ecommerce_minutes,
    actual_restaurant_minutes,
    expected_ecommerce_minutes,
    expected_restaurant_minutes,
    materializations,
    query,
    seed_ecommerce,
    seed_restaurant,
    spark_remote,
)

PARTITION = BASE_HOUR.strftime("%Y-%m-%d-%H:%M")
START, END = BASE_HOUR, BASE_HOUR + timedelta(hours=1)


def resources(database_url, remote):
    return {"postgres": PostgresResource(database_url=database_url), "spark": SparkResource(remote=remote)}


def table_rows(url, table):
    return query(url, f"SELECT count(*) FROM {table}")[0][0]


def test_report_assets_for_one_partition(database_url, spark_remote):
    for hour in (BASE_HOUR - timedelta(hours=1), BASE_HOUR, BASE_HOUR + timedelta(hours=1)):
        seed_ecommerce(database_url, hour)
        seed_restaurant(database_url, hour)

    result = materialize([ecommerce_reports, restaurant_reports, *window_checks], partition_key=PARTITION,
                         resources=resources(database_url, spark_remote))
    assert result.success
    for evaluation in result.get_asset_check_evaluations():
        assert evaluation.passed, (evaluation.check_name, evaluation.description)
    assert len(result.get_asset_check_evaluations()) == 4
    # the run is recorded with the windows it computed (the drill-down's "computed by")
    assert sorted(query(database_url, "SELECT domain, window_start, window_end, run_id FROM report_refreshes")) == \
        [("ecommerce", START, END, result.run_id), ("restaurant", START, END, result.run_id)]

    expected = expected_ecommerce_minutes(database_url, START, END)
    assert len(expected) == 5
    assert actual_ecommerce_minutes(database_url, START, END) == expected
    # nothing outside the partition's hour was written
    assert table_rows(database_url, "report_ecommerce_overview_minute") == 5
    assert actual_restaurant_minutes(database_url, START, END) == expected_restaurant_minutes(database_url, START, END)
    assert table_rows(database_url, "report_restaurant_overview_minute") == 4

    # per-category revenue equals SQL over the raw rows
    assert sorted(query(database_url, """SELECT window_start, category, revenue, units FROM report_ecommerce_category_minute""")) == \
        sorted(query(database_url, """SELECT date_trunc('minute', t."timestamp"), p.category, sum(t.total_amount), sum(t.quantity)
                                      FROM transactions t JOIN products p USING (product_id)
                                      WHERE t."timestamp" >= %s AND t."timestamp" < %s GROUP BY 1, 2""", (START, END)))
    assert sorted(query(database_url, "SELECT window_start, item_id, quantity, revenue FROM report_restaurant_item_minute")) == \
        sorted(query(database_url, """SELECT date_trunc('minute', o."timestamp"), i.item_id, sum(i.quantity), sum(i.line_total)
                                      FROM order_items i JOIN orders o USING (order_id)
                                      WHERE o."timestamp" >= %s AND o."timestamp" < %s GROUP BY 1, 2""", (START, END)))

    meta = materializations(result)
    ec = meta[("ecommerce_reports", PARTITION)]
    assert ec["window_start"].value == START.isoformat() and ec["window_end"].value == END.isoformat()
    assert ec["rows/report_ecommerce_overview_minute"].value == 5
    assert ec["rows_written"].value == sum(
        table_rows(database_url, t) for t in ("report_ecommerce_overview_minute", "report_ecommerce_category_minute",
                                              "report_ecommerce_product_minute"))
    assert ec["source_rows"].value > 0
    assert "spark_seconds" in ec
    ro = meta[("restaurant_reports", PARTITION)]
    assert ro["rows/report_restaurant_overview_minute"].value == 4

    # late data for the hour, then a re-run: replaced, never duplicated
    seed_ecommerce(database_url, BASE_HOUR, minutes=(5, 44), per_minute=6, seed=42)
    again = materialize([ecommerce_reports, *window_checks[::2]], partition_key=PARTITION,
                        resources=resources(database_url, spark_remote))
    assert again.success
    expected = expected_ecommerce_minutes(database_url, START, END)
    assert len(expected) == 6
    assert actual_ecommerce_minutes(database_url, START, END) == expected
    assert table_rows(database_url, "report_ecommerce_overview_minute") == 6


def test_refresh_job_of_the_code_location(database_url, spark_remote, monkeypatch):
    """The real refresh_reports_job for one partition: both reports, the views
    and the window checks, resources from the environment."""
    from salespulse.settings import get_settings
    from tests.test_orchestration_definitions import load_defs

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SPARK_REMOTE", spark_remote)
    get_settings.cache_clear()
    try:
        defs, _repo = load_defs()
        seed_ecommerce(database_url, BASE_HOUR)
        seed_restaurant(database_url, BASE_HOUR)
        result = defs.resolve_job_def("refresh_reports_job").execute_in_process(partition_key=PARTITION)
        assert result.success
        done = {key for key, _partition in materializations(result)}
        assert done == {"ecommerce_reports", "restaurant_reports", "daily_aggregates", "sales_by_category", "top_products",
                        "daily_metrics"}
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 4 and all(c.passed for c in checks)
        assert actual_ecommerce_minutes(database_url, START, END) == expected_ecommerce_minutes(database_url, START, END)
        assert query(database_url, "SELECT sum(revenue) FROM sales_by_category")[0][0] == \
            query(database_url, "SELECT sum(total_amount) FROM transactions")[0][0]
    finally:
        get_settings.cache_clear()

"""A three-partition backfill through a real Dagster instance (PostgreSQL
storage from prepare_dagster_home) leaves exact, non-duplicated report rows;
re-running a partition changes nothing."""

import uuid
from datetime import timedelta

import pytest
from dagster import AssetKey, DagsterInstance, materialize

from orchestration.assets.reports import ecommerce_reports, restaurant_reports
from orchestration.checks import window_checks
from orchestration.resources import PostgresResource, SparkResource
from salespulse.settings import Settings
from salespulse.stack.dagster_home import prepare_dagster_home
from tests.support.orchestration import (  # noqa: F401  (fixtures)
    instance,
    BASE_HOUR,
    actual_ecommerce_minutes,
    actual_restaurant_minutes,
    expected_ecommerce_minutes,
    expected_restaurant_minutes,
    query,
    seed_ecommerce,
    seed_restaurant,
    spark_remote,
)

HOURS = [BASE_HOUR + timedelta(hours=i) for i in range(3)]
KEYS = [h.strftime("%Y-%m-%d-%H:%M") for h in HOURS]


def snapshot(url):
    tables = ("report_ecommerce_overview_minute", "report_ecommerce_category_minute",
              "report_ecommerce_product_minute", "report_restaurant_overview_minute",
              "report_restaurant_item_minute", "report_restaurant_category_minute",
              "report_restaurant_channel_minute")
    return {t: sorted(query(url, f"SELECT * FROM {t}"), key=repr) for t in tables}


def strip_computed_at(snap):
    # computed_at is the refresh time: compare everything else
    return {t: [r[:-1] if t.endswith("overview_minute") else r for r in rows] for t, rows in snap.items()}


def test_three_partition_backfill_is_exact_and_idempotent(database_url, spark_remote, instance):
    for hour in [HOURS[0] - timedelta(hours=1), *HOURS, HOURS[-1] + timedelta(hours=1)]:
        seed_ecommerce(database_url, hour)
        seed_restaurant(database_url, hour)
    resources = {"postgres": PostgresResource(database_url=database_url), "spark": SparkResource(remote=spark_remote)}
    assets = [ecommerce_reports, restaurant_reports, *window_checks]

    for key in KEYS:
        result = materialize(assets, partition_key=key, instance=instance, resources=resources,
                             tags={"dagster/backfill": "test-backfill"})
        assert result.success
        assert all(e.passed for e in result.get_asset_check_evaluations())

    start, end = HOURS[0], HOURS[-1] + timedelta(hours=1)
    assert actual_ecommerce_minutes(database_url, start, end) == expected_ecommerce_minutes(database_url, start, end)
    assert actual_restaurant_minutes(database_url, start, end) == expected_restaurant_minutes(database_url, start, end)
    # exactly the three hours' minutes: 5 e-commerce and 4 restaurant minutes per hour
    assert query(database_url, "SELECT count(*), count(DISTINCT window_start) FROM report_ecommerce_overview_minute")[0] == (15, 15)
    assert query(database_url, "SELECT count(*), count(DISTINCT window_start) FROM report_restaurant_overview_minute")[0] == (12, 12)
    assert query(database_url, "SELECT min(window_start), max(window_start) FROM report_ecommerce_overview_minute")[0] == (
        HOURS[0], HOURS[-1] + timedelta(minutes=59))

    for name in ("ecommerce_reports", "restaurant_reports"):
        assert instance.get_materialized_partitions(AssetKey(name)) == set(KEYS)
    runs = instance.get_runs()
    assert len(runs) == 3 and all(r.tags.get("dagster/backfill") == "test-backfill" for r in runs)

    before = snapshot(database_url)
    again = materialize(assets, partition_key=KEYS[1], instance=instance, resources=resources)
    assert again.success
    assert strip_computed_at(snapshot(database_url)) == strip_computed_at(before)


def test_cli_backfill_of_a_partition_range(database_url, spark_remote, postgres, tmp_path):
    """``dagster asset materialize --partition-range`` (the CLI backfill) runs the
    three hours as one run on the instance of DAGSTER_HOME."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    for hour in [HOURS[0] - timedelta(hours=1), *HOURS, HOURS[-1] + timedelta(hours=1)]:
        seed_ecommerce(database_url, hour)
        seed_restaurant(database_url, hour)
    admin_url = postgres.create_database(f"dagster_{uuid.uuid4().hex[:8]}")
    home = prepare_dagster_home(Settings(database_url=admin_url), database=admin_url.rsplit("/", 1)[1],
                                home=tmp_path / "dagster_home")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "DAGSTER_HOME": str(home), "DATABASE_URL": database_url, "SPARK_REMOTE": spark_remote}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "orchestration.definitions",
         "--select", "ecommerce_reports,restaurant_reports", "--partition-range", f"{KEYS[0]}...{KEYS[-1]}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    start, end = HOURS[0], HOURS[-1] + timedelta(hours=1)
    assert actual_ecommerce_minutes(database_url, start, end) == expected_ecommerce_minutes(database_url, start, end)
    assert actual_restaurant_minutes(database_url, start, end) == expected_restaurant_minutes(database_url, start, end)
    assert query(database_url, "SELECT count(*), count(DISTINCT window_start) FROM report_ecommerce_overview_minute")[0] == (15, 15)
    assert query(database_url, "SELECT count(*), count(DISTINCT window_start) FROM report_restaurant_overview_minute")[0] == (12, 12)
    inst = DagsterInstance.from_config(str(home))
    try:
        assert inst.get_materialized_partitions(AssetKey("ecommerce_reports")) == set(KEYS)
        (run,) = inst.get_runs()
        assert run.tags["dagster/asset_partition_range_start"] == KEYS[0]
        assert run.tags["dagster/asset_partition_range_end"] == KEYS[-1]
    finally:
        inst.dispose()

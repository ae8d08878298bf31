"""The code location loads cleanly (no warnings), the graph has its lineage,
automation is on by default, and DAGSTER_HOME gives a PostgreSQL instance."""

import os
import stat
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import dagster
import yaml
from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    HourlyPartitionsDefinition,
)

from salespulse.settings import Settings, get_settings
from salespulse.stack.dagster_home import prepare_dagster_home

ROOT = Path(__file__).resolve().parent.parent


def load_defs():
    """Import (or re-import) the definitions module with every warning an error."""
    for name in [m for m in sys.modules if m == "orchestration" or m.startswith("orchestration.")]:
        if not name.startswith("orchestration.reports"):
            del sys.modules[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from orchestration.definitions import defs

        Definitions.validate_loadable(defs)
        repo = defs.get_repository_def()
        repo.load_all_definitions()
    return defs, repo


def test_definitions_load_without_any_warning():
    defs, repo = load_defs()
    assert {j.name for j in repo.get_all_jobs()} >= {"refresh_reports_job", "pipeline_health_checks_job"}


def test_graph_lineage_groups_and_descriptions():
    _defs, repo = load_defs()
    graph = repo.asset_graph
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "kafka_ecommerce_events", "kafka_restaurant_orders", "kafka_ecommerce_events_dlq",
        "kafka_restaurant_orders_dlq", "events", "products", "transactions", "orders", "order_items",
        "dead_letters", "ecommerce_reports", "restaurant_reports", "daily_aggregates", "sales_by_category",
        "top_products", "daily_metrics", "dashboard",
    }

    def parents(name):
        return {k.to_user_string() for k in graph.get(AssetKey(name)).parent_keys}

    assert parents("events") == {"kafka_ecommerce_events"}
    assert parents("orders") == {"kafka_restaurant_orders"}
    assert parents("ecommerce_reports") == {"events", "products", "transactions"}
    assert parents("restaurant_reports") == {"orders", "order_items"}
    assert parents("daily_aggregates") == {"events", "transactions"}
    assert parents("sales_by_category") == {"daily_aggregates", "products"}
    assert parents("daily_metrics") == {"daily_aggregates"}
    assert parents("dashboard") >= {"ecommerce_reports", "restaurant_reports", "top_products", "daily_metrics"}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, key
        assert node.group_name in {"ecommerce", "restaurant", "pipeline"}, key
    assert graph.get(AssetKey("ecommerce_reports")).group_name == "ecommerce"
    assert graph.get(AssetKey("restaurant_reports")).group_name == "restaurant"
    assert graph.get(AssetKey("dashboard")).group_name == "pipeline"
    # only the reports, the daily aggregates and the views are materialised by Dagster; the rest are external
    materializable = {k.to_user_string() for k in graph.materializable_asset_keys}
    assert materializable == {"ecommerce_reports", "restaurant_reports", "daily_aggregates", "sales_by_category",
                              "top_products", "daily_metrics"}
    for name in ("ecommerce_reports", "restaurant_reports"):
        partitions = graph.get(AssetKey(name)).partitions_def
        assert isinstance(partitions, HourlyPartitionsDefinition)
        assert partitions.timezone == "UTC"


def test_checks_schedules_and_sensors_run_by_default():
    defs, repo = load_defs()
    checks = {f"{k.asset_key.to_user_string()}:{k.name}" for k in repo.asset_graph.asset_check_keys}
    assert checks == {
        "ecommerce_reports:revenue_reconciles", "restaurant_reports:revenue_reconciles",
        "ecommerce_reports:windows_complete", "restaurant_reports:windows_complete",
        "ecommerce_reports:reports_fresh", "restaurant_reports:reports_fresh",
        "dead_letters:dead_letter_rate",
        "events:ingest_ledger_contiguous", "orders:ingest_ledger_contiguous",
        "events:raw_tables_consistent", "orders:raw_tables_consistent",
        "ecommerce_reports:reports_current", "restaurant_reports:reports_current",
        # pipeline_checks_job: reconciliation and alerts
        "ecommerce_reports:reports_reconcile", "restaurant_reports:reports_reconcile",
        "events:ledger_reconciles", "orders:ledger_reconciles",
        "ecommerce_reports:revenue_drop", "restaurant_reports:revenue_drop",
        "ecommerce_reports:funnel_break", "dead_letters:dead_letter_rate_alert",
    }
    schedules = {s.name: s for s in repo.schedule_defs}
    assert set(schedules) == {"refresh_every_minute", "health_checks_every_5_minutes", "pipeline_checks_every_minute",
                              "raw_partitions_hourly", "store_retention_every_10_minutes"}
    assert schedules["raw_partitions_hourly"].job_name == "raw_partitions_job"
    assert schedules["store_retention_every_10_minutes"].job_name == "store_retention_job"
    assert schedules["store_retention_every_10_minutes"].cron_schedule == "*/10 * * * *"
    assert schedules["refresh_every_minute"].cron_schedule == "* * * * *"
    assert all(s.default_status == DefaultScheduleStatus.RUNNING for s in schedules.values())
    sensors = {s.name: s for s in repo.sensor_defs}
    assert set(sensors) == {"new_data_sensor", "kafka_lag_sensor", "record_run_failures", "record_run_successes",
                            "freshness_sensor"}
    assert all(s.default_status == DefaultSensorStatus.RUNNING for s in sensors.values())


def test_resources_come_from_environment_variables(monkeypatch):
    monkeypatch.setenv("SPARK_REMOTE", "sc://spark.example:15002")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    monkeypatch.setenv("DATABASE_URL", "postgresql://a:b@db.example:5432/sp")
    monkeypatch.setenv("FRESHNESS_LAG_TARGET_MESSAGES", "123")
    monkeypatch.setenv("ANALYTICS_DB_PASSWORD", "analytics-role-password")  # another server: no local default
    get_settings.cache_clear()  # the password is read through the settings
    load_defs()
    from orchestration.definitions import build_resources

    with dagster.build_resources(build_resources()) as resources:
        assert resources.spark.remote == "sc://spark.example:15002"
        assert resources.kafka.bootstrap == "kafka.example:9092"
        assert resources.kafka.lag_threshold == 123
        assert resources.postgres.analytics_url.startswith("postgresql://salespulse_analytics:")
        assert resources.postgres.analytics_url.endswith("@db.example:5432/sp")
    # a field left unset falls back to the settings (read from the environment)
    from orchestration.resources import KafkaResource, SparkResource

    get_settings.cache_clear()
    try:
        assert KafkaResource().bootstrap == "kafka.example:9092"
        monkeypatch.delenv("SPARK_REMOTE")
        get_settings.cache_clear()
        assert SparkResource().remote is None
        assert get_settings().spark_remote == "sc://127.0.0.1:15002"
    finally:
        get_settings.cache_clear()


def test_workspace_yaml_loads_with_the_dagster_cli(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "salespulse" in proc.stdout + proc.stderr


def test_dagster_home_uses_postgres_storage(postgres, tmp_path):
    admin_url = postgres.create_database(f"dagster_{uuid.uuid4().hex[:8]}")
    database = admin_url.rsplit("/", 1)[1]
    home = prepare_dagster_home(Settings(database_url=postgres.admin_url), database=database, home=tmp_path / "home")
    path = home / "dagster.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = yaml.safe_load(path.read_text())
    db = config["storage"]["postgres"]["postgres_db"]
    assert db["scheme"] == "postgresql+psycopg2"
    assert (db["hostname"], db["port"], db["db_name"]) == ("127.0.0.1", postgres.port, database)
    assert config["telemetry"] == {"enabled": False}
    first = path.read_text()
    prepare_dagster_home(Settings(database_url=postgres.admin_url), database=database, home=home)
    assert path.read_text() == first

    instance = DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert instance.run_coordinator.get_run_queue_config().max_concurrent_runs == 2
        assert not instance.telemetry_enabled
        assert instance.get_runs() == []
    finally:
        instance.dispose()

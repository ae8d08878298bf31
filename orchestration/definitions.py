"""The SalesPulse Dagster code location (``workspace.yaml`` loads this module).

Composes the asset graph, asset checks, jobs, schedules, sensors and resources
defined in the small modules of this package. Resources are configured from
environment variables where they are set (``EnvVar``: resolved when a run or
tick uses them); unset ones fall back to ``salespulse.settings`` defaults
(``salespulse.settings.set_in_environment`` tells which are set: only the
settings module reads the environment).

Runs execute in process (one process per run, steps in sequence): on a
2-core machine a process per step would cost more than the steps; the
instance's run queue caps concurrent runs at 2 (``dagster.yaml``).
"""

from __future__ import annotations

from dagster import Definitions, EnvVar, in_process_executor

from orchestration.assets import all_assets
from orchestration.assets.jobs import health_checks_job, minute_checks, pipeline_checks_job, refresh_job
from orchestration.assets.reports import with_freshness_policy
from orchestration.checks import all_checks
from orchestration.resources import KafkaResource, PostgresResource, SparkResource
from orchestration.retention import (
    raw_partitions_hourly,
    raw_partitions_job,
    store_retention_every_10_minutes,
    store_retention_job,
)
from orchestration.schedules import all_schedules
from orchestration.sensors import all_sensors
from salespulse.settings import get_settings, set_in_environment


def _env(field: str):
    """``EnvVar`` of the settings ``field`` when its variable is set, else None (settings default)."""
    return EnvVar(field.upper()) if set_in_environment(field) else None


def build_resources() -> dict:
    lag_threshold = EnvVar.int("FRESHNESS_LAG_TARGET_MESSAGES") if set_in_environment(
        "freshness_lag_target_messages") else None
    return {
        "postgres": PostgresResource(
            database_url=_env("database_url"),
            analytics_database_url=_env("analytics_database_url"),
        ),
        "spark": SparkResource(remote=_env("spark_remote")),
        "kafka": KafkaResource(
            bootstrap_servers=_env("kafka_bootstrap_servers"),
            consumer_group=_env("consumer_group"),
            lag_threshold=lag_threshold,
        ),
    }


defs = Definitions(
    assets=with_freshness_policy(all_assets, get_settings()),
    asset_checks=[*all_checks, *minute_checks],
    jobs=[refresh_job, health_checks_job, pipeline_checks_job, raw_partitions_job, store_retention_job],
    schedules=[*all_schedules, raw_partitions_hourly, store_retention_every_10_minutes],
    sensors=all_sensors,
    resources=build_resources(),
    executor=in_process_executor,
)

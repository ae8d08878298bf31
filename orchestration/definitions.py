"""The SalesPulse Dagster code location (``workspace.yaml`` loads this module).

Composes the asset graph, asset checks, jobs, schedules, sensors and resources
defined in the small modules of this package. Resources are configured from
environment variables where they are set (``EnvVar``: resolved when a run or
tick uses them); unset ones fall back to ``salespulse.settings`` defaults.

Runs execute in process (one process per run, steps in sequence): on a
2-core machine a process per step would cost more than the steps; the
instance's run queue caps concurrent runs at 2 (``dagster.yaml``).
"""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar, in_process_executor

from orchestration.assets import all_assets
from orchestration.assets.jobs import health_checks_job, refresh_job
from orchestration.checks import all_checks
from orchestration.resources import KafkaResource, PostgresResource, SparkResource
from orchestration.run_checks import reports_current_sensor
from orchestration.schedules import all_schedules
from orchestration.sensors import all_sensors


def _env(name: str):
    """``EnvVar(name)`` when the variable is set, else None (settings default)."""
    return EnvVar(name) if os.environ.get(name) else None


def build_resources() -> dict:
    lag_threshold = EnvVar.int("KAFKA_LAG_THRESHOLD") if os.environ.get("KAFKA_LAG_THRESHOLD") else 10_000
    return {
        "postgres": PostgresResource(
            database_url=_env("DATABASE_URL"),
            analytics_database_url=_env("ANALYTICS_DATABASE_URL"),
        ),
        "spark": SparkResource(remote=_env("SPARK_REMOTE")),
        "kafka": KafkaResource(
            bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS"),
            consumer_group=_env("CONSUMER_GROUP"),
            lag_threshold=lag_threshold,
        ),
    }


defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[refresh_job, health_checks_job],
    schedules=all_schedules,
    sensors=[*all_sensors, reports_current_sensor],
    resources=build_resources(),
    executor=in_process_executor,
)

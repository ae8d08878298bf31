"""The SalesPulse Dagster code location (``workspace.yaml`` loads this module).

Composes the lists of the package, each kind in one place (the layout of
Dagster's ``project_fully_featured`` example): ``assets/`` (``all_assets``),
``checks/`` (``all_checks``), ``jobs.py`` (``all_jobs``), ``schedules.py``
(``all_schedules``), ``sensors/`` (``all_sensors``), and the resources below. Resources are configured from
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
from orchestration.assets.reports import with_freshness_policy
from orchestration.checks import all_checks
from orchestration.jobs import all_jobs
from orchestration.resources import KafkaResource, PostgresResource, SparkResource
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
    # the report assets' Dagster freshness policy is an attribute of the
    # definition, so the freshness settings are read here, once, when the code
    # location loads; everything that runs reads them through the resources
    assets=with_freshness_policy(all_assets, get_settings()),
    asset_checks=all_checks,
    jobs=all_jobs,
    schedules=all_schedules,
    sensors=all_sensors,
    resources=build_resources(),
    executor=in_process_executor,
)

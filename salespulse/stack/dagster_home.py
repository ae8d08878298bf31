"""DAGSTER_HOME for the local stack: ``dagster.yaml`` with PostgreSQL storage.

The Dagster webserver and daemon (and every run they launch) share one
instance: runs, event logs and schedules live in the database ``dagster`` of
the same PostgreSQL server as the application data (the embedded PostgreSQL
creates it), reached with the admin URL's host, port and credentials through
dagster-postgres. SQLAlchemy 2.1 defaults to psycopg 3, so the scheme is set to
``postgresql+psycopg2``. Telemetry is off; at most 2 runs execute at once (2
cores), the rest wait in the run queue (so a run left ``STARTED`` by a dead
worker blocks a slot until ``salespulse dagster-daemon`` repairs it); ticks of skipped schedule/sensor
evaluations are purged after a day.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from psycopg2.extensions import parse_dsn

from salespulse.settings import Settings

MAX_CONCURRENT_RUNS = 2


def postgres_db_config(database_url: str, database: str = "dagster") -> dict:
    """dagster-postgres ``postgres_db`` block for ``database`` on ``database_url``'s server."""
    options = parse_dsn(database_url)
    return {
        "username": options.get("user", "postgres"),
        "password": options.get("password", ""),
        "hostname": options.get("host", "127.0.0.1"),
        "port": int(options.get("port", 5432)),
        "db_name": database,
        "scheme": "postgresql+psycopg2",
    }


def dagster_config(settings: Settings, database: str = "dagster") -> dict:
    return {
        "storage": {"postgres": {"postgres_db": postgres_db_config(settings.database_url, database)}},
        "telemetry": {"enabled": False},
        "nux": {"enabled": False},
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {
                "max_concurrent_runs": MAX_CONCURRENT_RUNS,
                "dequeue_interval_seconds": 2,  # the minute schedule's runs wait less (default 5)
                # one run per job and partition at a time
                "tag_concurrency_limits": [
                    {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
                ],
            },
        },
        # a run stuck STARTING or CANCELING is ended by the daemon; a STARTED one whose worker
        # is gone by `salespulse dagster-daemon` (salespulse.dagster_runs), the minute job's
        # runs also by their dagster/max_runtime tag
        "run_monitoring": {"enabled": True, "start_timeout_seconds": 180, "cancel_timeout_seconds": 60,
                           "poll_interval_seconds": 60},
        # re-execution of failed runs, for jobs that ask for it (dagster/max_retries tag)
        "run_retries": {"enabled": True, "max_retries": 0},
        "retention": {
            "schedule": {"purge_after_days": {"skipped": 1, "success": 7, "failure": 30}},
            "sensor": {"purge_after_days": {"skipped": 1, "success": 7, "failure": 30}},
        },
        # the webserver/daemon wait for the code servers they started before exiting,
        # so a supervisor's SIGKILL-after-grace reaches them in the same process group
        "code_servers": {"local_startup_timeout": 180, "wait_for_local_processes_on_shutdown": True},
    }


def prepare_dagster_home(settings: Settings, *, database: str = "dagster", home: Path | None = None) -> Path:
    """Write ``<DAGSTER_HOME>/dagster.yaml`` (idempotent) and return DAGSTER_HOME.

    ``home`` defaults to ``settings.dagster_home_path``. The file holds the
    database password, so it is readable by its owner only.
    """
    home = Path(home) if home is not None else settings.dagster_home_path
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    text = "# Written by salespulse.stack.dagster_home; edits are overwritten.\n" + yaml.safe_dump(
        dagster_config(settings, database), sort_keys=False
    )
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".yaml.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    return home

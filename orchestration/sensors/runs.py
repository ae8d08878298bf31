"""Helpers shared by the schedules and sensors: runs already waiting."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

PARTITION_TAG = "dagster/partition"
TRIGGER_TAG = "salespulse/trigger"
SCHEDULE_TRIGGER = "refresh_every_minute"
WAITING = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED]


def waiting_runs_by_partition(instance: DagsterInstance, job_name: str) -> dict[str, list]:
    """Partition key -> runs of ``job_name`` that are queued and have not started
    (they will read every row committed before they start)."""
    runs = instance.get_runs(filters=RunsFilter(job_name=job_name, statuses=WAITING), limit=200)
    out: dict[str, list] = {}
    for run in runs:
        key = run.tags.get(PARTITION_TAG)
        if key:
            out.setdefault(key, []).append(run)
    return out


def covered_by_waiting_run(waiting: dict[str, list], partition_key: str, asset_keys) -> bool:
    """Whether a waiting run of that partition already materialises ``asset_keys``."""
    wanted = set(asset_keys)
    for run in waiting.get(partition_key, []):
        if run.asset_selection is None or wanted <= set(run.asset_selection):
            return True
    return False


def schedule_is_covering(instance: DagsterInstance, job_name: str, partition_key: str,
                         within: timedelta = timedelta(seconds=120)) -> bool:
    """Whether the minute schedule launched a run for ``partition_key`` recently
    (it is running, and its next tick will read any newer rows)."""
    runs = instance.get_runs(
        filters=RunsFilter(
            job_name=job_name,
            tags={TRIGGER_TAG: SCHEDULE_TRIGGER, PARTITION_TAG: partition_key},
            created_after=datetime.now(timezone.utc) - within,
        ),
        limit=1,
    )
    return bool(runs)

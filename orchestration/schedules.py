"""Every schedule: the minute refresh of the current hour, the health checks,
the minute checks, and the two retention jobs."""


from datetime import timedelta

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from orchestration.assets.partitions import partition_key_for
from orchestration.assets.reports import REPORT_ASSETS
from orchestration.jobs import (
    health_checks_job,
    pipeline_checks_job,
    raw_partitions_job,
    refresh_job,
    store_retention_job,
)
from orchestration.sensors.runs import (
    SCHEDULE_TRIGGER,
    TRIGGER_TAG,
    WAITING,
    covered_by_waiting_run,
    waiting_runs_by_partition,
)

#: in the first minutes of an hour the previous hour is closed out as well
CLOSE_PREVIOUS_HOUR_MINUTES = 2


def refresh_requests(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
    tick = context.scheduled_execution_time
    current = partition_key_for(tick)
    wanted = [(current, None)]  # None: the whole job (reports + views)
    if tick.minute < CLOSE_PREVIOUS_HOUR_MINUTES:
        wanted.insert(0, (partition_key_for(tick - timedelta(hours=1)), [a.key for a in REPORT_ASSETS]))
    waiting = waiting_runs_by_partition(context.instance, refresh_job.name)
    requests = []
    for key, selection in wanted:
        runs = waiting.get(key, [])
        if selection is None:
            already = any(run.asset_selection is None for run in runs)  # a full refresh is waiting
        else:
            already = covered_by_waiting_run(waiting, key, selection)
        if already:
            continue
        requests.append(
            RunRequest(
                run_key=f"minute:{key}:{tick.strftime('%Y-%m-%dT%H:%M')}",
                partition_key=key,
                asset_selection=selection,
                tags={TRIGGER_TAG: SCHEDULE_TRIGGER},
            )
        )
    return requests or SkipReason(f"partition {current} already has a waiting run")


@schedule(
    cron_schedule="* * * * *",
    job=refresh_job,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description=(
        "Every minute: recompute the current hour's reports (both domains) and refresh the "
        "materialized views; in the first two minutes of an hour also close out the previous hour. "
        "Skipped while an identical run is still queued."
    ),
)
def refresh_every_minute(context: ScheduleEvaluationContext):
    return refresh_requests(context)


@schedule(
    cron_schedule="*/5 * * * *",
    job=health_checks_job,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Every five minutes: report freshness, dead-letter rate, ingest ledger and raw-table consistency checks.",
)
def health_checks_every_5_minutes(context: ScheduleEvaluationContext):
    return RunRequest(run_key=f"health:{context.scheduled_execution_time.isoformat()}")


@schedule(
    cron_schedule="* * * * *",
    job=pipeline_checks_job,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description=("Every minute: reconciliation (reports vs raw tables vs ingest ledger) and alerts (revenue drop, "
                 "funnel break, dead-letter rate). Skipped while a previous run of the job has not started."),
)
def pipeline_checks_every_minute(context: ScheduleEvaluationContext):
    if context.instance.get_runs(filters=RunsFilter(job_name=pipeline_checks_job.name, statuses=WAITING), limit=1):
        return SkipReason("a pipeline_checks_job run is still waiting to start")
    return RunRequest(run_key=f"checks:{context.scheduled_execution_time.strftime('%Y-%m-%dT%H:%M')}")


def keyed_schedule(name: str, cron: str, job, key: str, description: str):
    """A schedule that requests one run of ``job`` per tick, keyed ``<job's key>:<tick formatted by key>``
    (the retention jobs: a tick's run is requested once)."""
    prefix, time_format = key.split(":", 1)

    @schedule(name=name, cron_schedule=cron, job=job, execution_timezone="UTC",
              default_status=DefaultScheduleStatus.RUNNING, description=description)
    def _schedule(context: ScheduleEvaluationContext):
        return RunRequest(run_key=f"{prefix}:{context.scheduled_execution_time.strftime(time_format)}")

    return _schedule


raw_partitions_hourly = keyed_schedule(
    "raw_partitions_hourly", "7 * * * *", raw_partitions_job, "partitions:%Y-%m-%dT%H",
    "Hourly at :07: raw_partitions_job (month partitions ahead; retention when RAW_RETENTION_DAYS > 0).")
store_retention_every_10_minutes = keyed_schedule(
    "store_retention_every_10_minutes", "*/10 * * * *", store_retention_job, "stores:%Y-%m-%dT%H:%M",
    "Every 10 minutes: store_retention_job (dead letters, pipeline records, ...).")

all_schedules = [refresh_every_minute, health_checks_every_5_minutes, pipeline_checks_every_minute,
                 raw_partitions_hourly, store_retention_every_10_minutes]

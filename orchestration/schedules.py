"""Schedules: the minute refresh of the current hour, and the health checks."""


from datetime import timedelta

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from orchestration.assets.jobs import REPORT_ASSETS, health_checks_job, pipeline_checks_job, refresh_job
from orchestration.assets.partitions import partition_key_for
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


all_schedules = [refresh_every_minute, health_checks_every_5_minutes, pipeline_checks_every_minute]

"""Run status sensors: record failed (and succeeded) runs in ``pipeline_runs``,
which the dashboard shows."""


from dagster import (
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunStatusSensorContext,
    run_failure_sensor,
    run_status_sensor,
)

from orchestration.resources import PostgresResource

MAX_MESSAGE = 4000
KEEP_DAYS = 7


def run_partition(run: DagsterRun) -> str | None:
    tags = run.tags
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if start and end:
        return f"{start}...{end}"
    return None


def record_run(postgres: PostgresResource, run: DagsterRun, status: str, message: str | None) -> None:
    with postgres.connection() as conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO pipeline_runs (run_id, job_name, status, partition, message)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (run_id) DO UPDATE SET status = EXCLUDED.status, message = EXCLUDED.message,
                                                 recorded_at = now()""",
            (run.run_id, run.job_name, status, run_partition(run), (message or "")[:MAX_MESSAGE] or None),
        )


@run_failure_sensor(
    default_status=DefaultSensorStatus.RUNNING,
    description="Records every failed run (job, partition, error) in pipeline_runs for the dashboard.",
)
def record_run_failures(context: RunFailureSensorContext, postgres: PostgresResource) -> None:
    parts = [context.failure_event.message or "run failed"]
    for event in context.get_step_failure_events():
        error = getattr(event.event_specific_data, "error", None)
        messages = []
        while error is not None:  # the user error is usually the innermost cause
            messages.append(error.message.strip())
            error = error.cause
        if messages:
            parts.append(f"{event.step_key}: " + " <- ".join(reversed(messages)))
    record_run(postgres, context.dagster_run, "FAILURE", "\n".join(parts))


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    default_status=DefaultSensorStatus.RUNNING,
    description=f"Records successful runs in pipeline_runs (and drops rows older than {KEEP_DAYS} days).",
)
def record_run_successes(context: RunStatusSensorContext, postgres: PostgresResource) -> None:
    record_run(postgres, context.dagster_run, "SUCCESS", None)
    with postgres.connection() as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM pipeline_runs WHERE recorded_at < now() - make_interval(days => %s)", (KEEP_DAYS,))

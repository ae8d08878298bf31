"""The raw tables' month partitions: created ahead, and dropped after
``RAW_RETENTION_DAYS`` once their reports exist (``salespulse/partitions.py``).

One op in its own job, every hour: creating next month's partitions does not
wait for a day boundary, and a retention drop that had to wait for a report
is retried soon. Each drop is recorded in ``raw_partition_drops`` with the
run's id; the op's output metadata lists what it did and why it stopped where
it did.
"""

from dagster import (
    DefaultScheduleStatus,
    MetadataValue,
    OpExecutionContext,
    Output,
    RunRequest,
    ScheduleEvaluationContext,
    job,
    op,
    schedule,
)

from orchestration.resources import PostgresResource
from salespulse.partitions import drop_expired, ensure_partitions


@op(description="Create the raw tables' month partitions around now (moving rows waiting in a DEFAULT "
                "partition), then drop the ones older than RAW_RETENTION_DAYS whose reports exist.")
def maintain_raw_partitions(context: OpExecutionContext, postgres: PostgresResource) -> Output[int]:
    keep_days = postgres.settings().raw_retention_days
    with postgres.connection() as conn, conn.cursor() as cur:
        created = ensure_partitions(cur)
        conn.commit()
        drops, why = drop_expired(cur, keep_days, run_id=context.run_id)
    for d in drops:
        context.log.info(f"dropped {d.partition} ({d.table}, {d.start:%Y-%m-%d}..{d.end:%Y-%m-%d}, {d.rows} rows)")
    rows = [f"| {d.table} | {d.partition} | {d.start:%Y-%m-%d} | {d.end:%Y-%m-%d} | {d.rows} |" for d in drops]
    return Output(len(drops), metadata={
        "partitions_created": MetadataValue.text(", ".join(created) or "none"),
        "partitions_dropped": MetadataValue.int(len(drops)),
        "retention_days": MetadataValue.int(keep_days),
        "bound": MetadataValue.text(why),
        "dropped": MetadataValue.md("| table | partition | from | to | rows |\n|---|---|---|---|---|\n" + "\n".join(rows)
                                    if rows else "nothing dropped"),
    })


@job(description="Raw table partitions: create the coming months', drop expired ones (RAW_RETENTION_DAYS).",
     tags={"salespulse/job": "partitions", "dagster/max_runtime": "1800"})
def raw_partitions_job():
    maintain_raw_partitions()


@schedule(cron_schedule="7 * * * *", job=raw_partitions_job, execution_timezone="UTC",
          default_status=DefaultScheduleStatus.RUNNING,
          description="Hourly at :07: raw_partitions_job (month partitions ahead; retention when RAW_RETENTION_DAYS > 0).")
def raw_partitions_hourly(context: ScheduleEvaluationContext):
    return RunRequest(run_key=f"partitions:{context.scheduled_execution_time.strftime('%Y-%m-%dT%H')}")

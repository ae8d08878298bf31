"""Retention ops (their jobs are in ``orchestration/jobs.py``, their schedules
in ``orchestration/schedules.py``).

``maintain_raw_partitions`` (``raw_partitions_job``): the raw tables' month
partitions, created ahead, and dropped after ``RAW_RETENTION_DAYS`` once their
reports exist (``salespulse/partitions.py``).

One op in its own job, every hour: creating next month's partitions does not
wait for a day boundary, and a retention drop that had to wait for a report
is retried soon. Each drop is recorded in ``raw_partition_drops`` with the
run's id; the op's output metadata lists what it did and why it stopped where
it did.
"""

from dagster import MetadataValue, OpExecutionContext, Output, op

from orchestration.resources import PostgresResource
from salespulse.bounded_stores import trim_all
from salespulse.dagster_retention import trim_dagster_storage as trim_dagster
from salespulse.ledger import maintain as maintain_ledger
from salespulse.ledger import sizes as ledger_sizes
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


# --- store_retention_job: every store that grows with time has a bound ----------
# Each op of STORE_TRIMS is independent (no inputs): one failing leaves the
# others to run. The trims themselves are plain functions in salespulse/
# (bounded per call: batches of rows, one transaction each); the op's output
# metadata says what was deleted per table.


@op(description="Dead letters (DEAD_LETTER_RETENTION_DAYS, DEAD_LETTER_MAX_MB) and the pipeline records that grow "
                "with time (OPS_HISTORY_RETENTION_DAYS), in bounded batches; never what a check still reads "
                "(salespulse/bounded_stores.py).")
def trim_pipeline_records(context: OpExecutionContext, postgres: PostgresResource) -> Output[int]:
    settings = postgres.settings()
    with postgres.connection() as conn:
        trims = trim_all(conn, settings)
    for t in trims:
        if t.deleted or t.emptied:
            context.log.info(f"{t.table}: deleted {t.deleted} rows" + (f", emptied {t.emptied} payloads" if t.emptied
                                                                        else ""))
    rows = [f"| {t.table} | {t.deleted} | {t.emptied} | {t.horizon:%Y-%m-%d %H:%M} | {'yes' if t.more else 'no'} "
            f"| {t.note} |" for t in trims]
    metadata = {
        "deleted": MetadataValue.md("| table | deleted | payloads emptied | older than (UTC) | more left | note |\n"
                                    "|---|---|---|---|---|---|\n" + "\n".join(rows)),
        **{f"deleted_{t.table}": MetadataValue.int(t.deleted) for t in trims},
        "dead_letter_payloads_emptied": MetadataValue.int(trims[0].emptied),
        "ops_history_retention_days": MetadataValue.float(settings.ops_history_retention_days),
        "dead_letter_retention_days": MetadataValue.float(settings.dead_letter_retention_days),
        "dead_letter_max_mb": MetadataValue.float(settings.dead_letter_max_mb),
    }
    return Output(sum(t.deleted for t in trims), metadata=metadata)


@op(description="Dagster's runs with their event logs, compute logs and check executions: successes after "
                "DAGSTER_RUN_RETENTION_DAYS, failures after DAGSTER_FAILED_RUN_RETENTION_DAYS, at most "
                "DAGSTER_RETENTION_MAX_RUNS a call; each partition whose latest materialization was in a deleted "
                "run is re-recorded first, so it stays materialized (salespulse/dagster_retention.py).")
def trim_dagster_storage(context: OpExecutionContext, postgres: PostgresResource) -> Output[int]:
    settings = postgres.settings()
    trim = trim_dagster(context.instance, run_retention_days=settings.dagster_run_retention_days,
                        failed_run_retention_days=settings.dagster_failed_run_retention_days,
                        max_runs=settings.dagster_retention_max_runs, log=context.log.debug)
    context.log.info(f"deleted {trim.runs_deleted} runs ({trim.failed_runs_deleted} failed/canceled), re-recorded "
                     f"{trim.rematerialized} latest materializations, {trim.check_executions_deleted} check "
                     f"executions, {trim.observations_deleted} runless observations in {trim.seconds:.1f} s"
                     + ("; more left for the next call" if trim.more else ""))
    return Output(trim.runs_deleted, metadata={
        "runs_deleted": MetadataValue.int(trim.runs_deleted),
        "failed_runs_deleted": MetadataValue.int(trim.failed_runs_deleted),
        "materializations_rerecorded": MetadataValue.int(trim.rematerialized),
        "check_executions_deleted": MetadataValue.int(trim.check_executions_deleted),
        "observations_deleted": MetadataValue.int(trim.observations_deleted),
        "more_left": MetadataValue.bool(trim.more),
        "oldest_run_kept": MetadataValue.text(trim.oldest_kept.isoformat() if trim.oldest_kept else "none"),
        "run_retention_days": MetadataValue.float(settings.dagster_run_retention_days),
        "failed_run_retention_days": MetadataValue.float(settings.dagster_failed_run_retention_days),
        "max_runs": MetadataValue.int(settings.dagster_retention_max_runs),
        "seconds": MetadataValue.float(round(trim.seconds, 2)),
    })


@op(description="The ingest ledger (sql/130): ranges older than LEDGER_ROLLUP_MINUTES merged per stream and hour "
                "where contiguous, then those older than LEDGER_RETENTION_DAYS (or than the raw history dropped) "
                "deleted into each stream's trimmed range, a contiguous prefix at a time, so the audit still "
                "accounts for every offset (salespulse/ledger.py).")
def trim_ingest_ledger(context: OpExecutionContext, postgres: PostgresResource) -> Output[int]:
    settings = postgres.settings()
    with postgres.connection() as conn:
        done = maintain_ledger(conn, settings.ledger_rollup_minutes, settings.ledger_retention_days)
        with conn.cursor() as cur:
            size = ledger_sizes(cur)
        conn.commit()
    context.log.info(f"ingest ledger: {done.rolled_up} ranges rolled up, {done.trimmed} trimmed, "
                     f"{done.streams_forgotten} idle streams forgotten in {done.calls} calls; now {size['ranges']} "
                     f"ranges, {size['bytes']} bytes" + ("" if done.complete else "; more left for the next run"))
    return Output(done.rolled_up + done.trimmed, metadata={
        "ranges_rolled_up": MetadataValue.int(done.rolled_up),
        "ranges_trimmed": MetadataValue.int(done.trimmed),
        "streams_forgotten": MetadataValue.int(done.streams_forgotten),
        "more_left": MetadataValue.bool(not done.complete),
        "ledger_ranges": MetadataValue.int(size["ranges"]),
        "ledger_streams": MetadataValue.int(size["streams"]),
        "ledger_bytes": MetadataValue.int(size["bytes"]),
        "ledger_rollup_minutes": MetadataValue.float(settings.ledger_rollup_minutes),
        "ledger_retention_days": MetadataValue.float(settings.ledger_retention_days),
    })


#: the ops of store_retention_job (each independent; other stores add theirs here)
STORE_TRIMS = [trim_pipeline_records, trim_dagster_storage, trim_ingest_ledger]

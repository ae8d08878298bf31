"""New-data sensor: new raw rows since its cursor -> refresh the touched partitions.

The cursor holds the highest row id seen per raw table (ids are BIGSERIAL, so a
range scan of the primary key finds the new rows). For every hour that has new
events or orders, the sensor requests a run of ``refresh_reports_job`` for that
hourly partition (late rows of a closed hour are therefore reported too), and
it reports an observation of each raw table (new rows, highest id, newest
timestamp). The current hour is left to the minute schedule while that
schedule is running (it launched a run for the hour in the last two minutes),
so the two do not both refresh the same hour every minute. On its first tick it only records the current ids, so turning it
on against a large history does not start hundreds of runs (backfill those
from the UI instead).
"""


import json
from datetime import datetime, timezone

from dagster import (
    AssetObservation,
    DefaultSensorStatus,
    MetadataValue,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from orchestration.assets.jobs import refresh_job
from orchestration.assets.partitions import FIRST_PARTITION, partition_key_for
from orchestration.assets.reports import ecommerce_reports, restaurant_reports
from orchestration.assets.sources import RAW_TABLE_KEYS
from orchestration.assets.views import VIEW_KEYS
from orchestration.resources import PostgresResource
from orchestration.sensors.runs import covered_by_waiting_run, schedule_is_covering, waiting_runs_by_partition

#: raw tables whose new rows trigger a refresh -> the report asset they feed
TRIGGERS = {"events": ecommerce_reports.key, "orders": restaurant_reports.key}
#: tables observed by max(id) only
OBSERVED_ONLY = ("products", "transactions", "order_items", "dead_letters")


def _max_ids(cur) -> dict[str, int]:
    ids = {}
    for table in (*TRIGGERS, *OBSERVED_ONLY):
        cur.execute(f"SELECT COALESCE(max(id), 0) FROM {table}")
        ids[table] = int(cur.fetchone()[0])
    return ids


@sensor(
    job=refresh_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Requests refresh_reports_job for every hourly partition that received new events or "
        "orders since the cursor (highest row ids seen), and observes the raw tables."
    ),
)
def new_data_sensor(context: SensorEvaluationContext, postgres: PostgresResource):
    previous = json.loads(context.cursor) if context.cursor else None
    touched: dict[str, set] = {}  # partition key -> report asset keys
    newest: dict[str, object] = {}
    with postgres.connection() as conn, conn.cursor() as cur:
        ids = _max_ids(cur)
        if previous is not None:
            for table, report_key in TRIGGERS.items():
                seen = previous.get(table, 0)
                if ids[table] < seen:  # the table was emptied / recreated: start over
                    seen = 0
                if ids[table] <= seen:
                    continue
                cur.execute(
                    f"""SELECT date_trunc('hour', "timestamp"), max("timestamp") FROM {table}
                        WHERE id > %s AND id <= %s GROUP BY 1 ORDER BY 1""",
                    (seen, ids[table]),
                )
                for hour, latest in cur.fetchall():
                    touched.setdefault(partition_key_for(hour), set()).add(report_key)
                    newest[table] = max(latest, newest.get(table, latest))
    cursor = json.dumps(ids, sort_keys=True)
    current_hour = partition_key_for(datetime.now(timezone.utc))
    # rows stamped before the partitions begin or in a future hour (a skewed
    # clock) have no partition to refresh
    outside = sorted(k for k in touched if not FIRST_PARTITION <= k <= current_hour)
    if outside:
        context.log.warning(f"new rows in hours outside the partitions, not reported: {outside}")
        for key in outside:
            del touched[key]

    observations = []
    for table, max_id in ids.items():
        metadata = {"max_id": MetadataValue.int(max_id)}
        if previous is not None:
            seen = previous.get(table, 0)
            metadata["new_rows"] = MetadataValue.int(max_id - seen if max_id >= seen else max_id)
        if table in newest:
            metadata["newest_timestamp"] = MetadataValue.text(newest[table].isoformat())
        observations.append(AssetObservation(asset_key=RAW_TABLE_KEYS[table], metadata=metadata))

    if previous is None:
        return SensorResult(asset_events=observations, cursor=cursor,
                            skip_reason=f"cursor initialised at {cursor}")
    if not touched:
        return SensorResult(asset_events=observations, cursor=cursor, skip_reason="no new rows")

    waiting = waiting_runs_by_partition(context.instance, refresh_job.name)
    latest_ecommerce = max((k for k, v in touched.items() if ecommerce_reports.key in v), default=None)
    run_requests = []
    for key in sorted(touched):
        selection = sorted(touched[key], key=str)
        if key == latest_ecommerce:
            selection += VIEW_KEYS  # the views cover all time: refresh them once
        if covered_by_waiting_run(waiting, key, selection):
            context.log.info(f"partition {key} already has a waiting run")
            continue
        if key == current_hour and schedule_is_covering(context.instance, refresh_job.name, key):
            context.log.info(f"partition {key} is refreshed every minute by the running schedule")
            continue
        run_requests.append(
            RunRequest(
                run_key=f"new-data:{key}:{cursor}",
                partition_key=key,
                asset_selection=selection,
                tags={"salespulse/trigger": "new_data_sensor"},
            )
        )
    return SensorResult(
        run_requests=run_requests,
        asset_events=observations,
        cursor=cursor,
        skip_reason=None if run_requests else "every touched partition already has a waiting run or a scheduled refresh",
    )

"""New-data sensor: rows committed since its last tick -> restate the minute
windows whose reports they left wrong.

Detection (``late_rows.py`` explains why it cannot miss a row whatever the
commit order): each tick scans the raw rows by ``ingested_at`` from a bound
that follows the oldest ingest transaction still open at the previous tick,
takes their minute windows plus the windows still pending, and keeps those
whose raw count differs from the report's (``events`` of
``report_ecommerce_overview_minute``, ``orders`` of
``report_restaurant_overview_minute``; no report row differs too). A late
event (its minute already reported) and a row whose id was passed by a later
commit are found alike.

Recompute: one ``refresh_reports_job`` run per hourly partition holding such
windows, tagged ``salespulse/restate-<domain>`` with exactly those minutes
(``orchestration/restatement.py``): the report assets recompute and replace
only those windows, and record each restatement (``report_restatements``) in
the same transaction. The newest e-commerce hour's run also refreshes the
(all-time) views.

Kept behaviours:

* first tick (or a cursor of the former id format): only records the bound,
  so turning the sensor on against a large history does not start hundreds of
  runs (backfill those from the UI instead);
* the current hour is left to the minute schedule while that schedule is
  running (it launched a run for the hour in the last two minutes): it
  recomputes the whole hour every minute; its windows stay pending, so they
  are requested here if the schedule stops;
* windows in hours outside the partitions (before they begin, or in a future
  hour: a skewed clock) have no partition: logged and dropped;
* a partition whose windows are all covered by a run that is queued or
  running (a full-hour run, or a restate run with those windows) gets no
  second run; if that run read before a row committed, or failed, the windows
  are still pending at the next tick and requested then;
* a database that was replaced (its transaction ids went back) restarts the
  marks and keeps the scan bound (its rows were ingested after it anyway).

Each tick reports an observation of each raw table (highest id, new ids since
the last tick, newest event time of the rows scanned).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from dagster import (
    AssetObservation,
    DagsterRunStatus,
    DefaultSensorStatus,
    MetadataValue,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from orchestration.assets.partitions import FIRST_PARTITION, partition_hour, partition_key_for
from orchestration.assets.reports import REPORT_ASSET_BY_DOMAIN
from orchestration.assets.sources import RAW_TABLE_KEYS
from orchestration.assets.views import VIEW_KEYS
from orchestration.jobs import refresh_job
from orchestration.reports import REPORT_DOMAINS
from orchestration.resources import PostgresResource
from orchestration.restatement import encode_minutes, tag_name, windows_from_tags
from orchestration.sensors.late_rows import (
    MAX_PENDING,
    Cursor,
    advance,
    begin_tick,
    by_hour,
    windows_to_restate,
)
from orchestration.sensors.runs import PARTITION_TAG, TRIGGER_TAG, schedule_is_covering

#: tables observed by max(id) only
OBSERVED_ONLY = ("products", "transactions", "order_items", "dead_letters")
SENSOR_TRIGGER = "new_data_sensor"
IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
             DagsterRunStatus.STARTED]


def _max_ids(cur) -> dict[str, int]:
    ids = {}
    for table in (*(d.raw_table for d in REPORT_DOMAINS.values()), *OBSERVED_ONLY):
        cur.execute(f"SELECT COALESCE(max(id), 0) FROM {table}")
        ids[table] = int(cur.fetchone()[0])
    return ids


def _newest_timestamps(cur, since: datetime) -> dict[str, datetime]:
    out = {}
    for domain in REPORT_DOMAINS.values():
        cur.execute(f'SELECT max("timestamp") FROM {domain.raw_table} WHERE ingested_at > %s', (since,))
        newest = cur.fetchone()[0]
        if newest is not None:
            out[domain.raw_table] = newest
    return out


def covered_by_run_in_flight(runs: list, domain: str, hour: datetime, windows: list[datetime]) -> bool:
    """Whether a queued/running run of the partition recomputes ``windows`` of ``domain``."""
    asset_key = REPORT_ASSET_BY_DOMAIN[domain].key
    for run in runs:
        if run.asset_selection is not None and asset_key not in run.asset_selection:
            continue
        restated = windows_from_tags(run.tags, domain, hour)
        if restated is None or set(windows) <= set(restated):
            return True
    return False


def _runs_in_flight(instance) -> dict[str, list]:
    runs = instance.get_runs(filters=RunsFilter(job_name=refresh_job.name, statuses=IN_FLIGHT), limit=500)
    out: dict[str, list] = {}
    for run in runs:
        if run.tags.get(PARTITION_TAG):
            out.setdefault(run.tags[PARTITION_TAG], []).append(run)
    return out


def _observations(ids: dict[str, int], previous: Cursor | None, newest: dict[str, datetime]) -> list:
    observations = []
    for table, max_id in ids.items():
        metadata = {"max_id": MetadataValue.int(max_id)}
        if previous is not None and table in previous.ids:
            seen = previous.ids[table]
            metadata["new_rows"] = MetadataValue.int(max_id - seen if max_id >= seen else max_id)
        if table in newest:
            metadata["newest_timestamp"] = MetadataValue.text(newest[table].isoformat())
        observations.append(AssetObservation(asset_key=RAW_TABLE_KEYS[table], metadata=metadata))
    return observations


def utc_now() -> datetime:
    """The wall clock that says which hour is the current one (tests set it, rather
    than wait for an hour boundary to pass)."""
    return datetime.now(timezone.utc)


@sensor(
    job=refresh_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Finds the minute windows touched by rows committed since its last tick (by ingested_at, "
        "whatever their ids or commit order) whose report counts differ from the raw rows, and "
        "requests refresh_reports_job for exactly those windows (restatements); observes the raw tables."
    ),
)
def new_data_sensor(context: SensorEvaluationContext, postgres: PostgresResource):
    previous = Cursor.from_json(context.cursor)
    margin = timedelta(seconds=postgres.settings().late_rows_margin_seconds)
    wrong: dict[str, list[datetime]] = {}  # domain -> windows whose reports differ
    with postgres.connection() as conn:
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot for the tick
            now, mark, xmin = begin_tick(cur)
            ids = _max_ids(cur)
            since, marks, fell_back, restarted = advance(previous.marks if previous else None, mark, xmin, margin)
            if restarted:
                context.log.warning("transaction ids went back (database replaced): marks restarted")
            if fell_back and previous is not None:
                context.log.warning(f"a transaction older than every mark is still open: next scan from {since}")
            newest = {}
            if previous is not None:
                for name, domain in REPORT_DOMAINS.items():
                    wrong[name] = windows_to_restate(cur, domain.raw_table, domain.overview, domain.counted,
                                                     previous.since, previous.pending.get(name, []))
                newest = _newest_timestamps(cur, previous.since)

    observations = _observations(ids, previous, newest)
    if previous is None:
        cursor = Cursor(since=since, marks=marks, ids=ids)
        return SensorResult(asset_events=observations, cursor=cursor.to_json(),
                            skip_reason=f"cursor initialised: rows ingested after {since.isoformat()} are scanned")

    current_hour = partition_key_for(utc_now())
    touched: dict[str, dict[str, list[datetime]]] = {}  # partition key -> domain -> windows
    pending: dict[str, list[datetime]] = {}
    outside = set()
    for name, windows in wrong.items():
        for hour, ws in by_hour(windows).items():
            key = partition_key_for(hour)
            if not FIRST_PARTITION <= key <= current_hour:
                outside.add(key)
                continue
            touched.setdefault(key, {})[name] = ws
            pending.setdefault(name, []).extend(ws)
    if outside:
        context.log.warning(f"rows in hours outside the partitions, not reported: {sorted(outside)}")
    cursor = Cursor(since=since, marks=marks, ids=ids,
                    pending={d: ws[-MAX_PENDING:] for d, ws in pending.items()}).to_json()
    if not touched:
        return SensorResult(asset_events=observations, cursor=cursor, skip_reason="no new rows")

    in_flight = _runs_in_flight(context.instance)
    latest_ecommerce = max((k for k, v in touched.items() if "ecommerce" in v), default=None)
    run_requests, left = [], []
    for key in sorted(touched):
        hour = partition_hour(key)
        domains = {d: ws for d, ws in touched[key].items()
                   if not covered_by_run_in_flight(in_flight.get(key, []), d, hour, ws)}
        if not domains:
            left.append(f"{key}: a run in flight covers its windows")
            continue
        if key == current_hour and schedule_is_covering(context.instance, refresh_job.name, key):
            left.append(f"{key}: refreshed every minute by the running schedule")
            continue
        selection = sorted((REPORT_ASSET_BY_DOMAIN[d].key for d in domains), key=str)
        if key == latest_ecommerce and "ecommerce" in domains:
            selection += VIEW_KEYS  # the views cover all time: refresh them once
        tags = {TRIGGER_TAG: SENSOR_TRIGGER}
        tags.update({tag_name(d): encode_minutes(ws, hour) for d, ws in domains.items()})
        run_requests.append(RunRequest(run_key=f"restate:{key}:{now.isoformat()}", partition_key=key,
                                       asset_selection=selection, tags=tags))
    for reason in left:
        context.log.info(reason)
    return SensorResult(
        run_requests=run_requests,
        asset_events=observations,
        cursor=cursor,
        skip_reason=None if run_requests else "; ".join(left),
    )

"""Retention of Dagster's own storage: runs, their event logs and compute logs.

Dagster open source purges schedule and sensor ticks (``dagster.yaml``,
``salespulse/stack/dagster_home.py``) but never runs, event logs or compute
logs: about 100 runs and 6,800 event-log rows an hour on the local stack.
:func:`trim_dagster_storage` (the op ``trim_dagster_storage`` of
``store_retention_job``, every 10 minutes) deletes finished runs older than
their retention, oldest first, at most ``DAGSTER_RETENTION_MAX_RUNS`` runs a
call:

* successful runs after ``DAGSTER_RUN_RETENTION_DAYS`` (7), failed and
  canceled ones after ``DAGSTER_FAILED_RUN_RETENTION_DAYS`` (30), counted
  from the run's last update (its end); runs not finished are never touched;
* for each run, in this order (each step idempotent, so a crash anywhere
  leaves nothing lost and the next call finishes the run):

  1. **keep what the catalog shows**: deleting a run deletes its
     ``ASSET_MATERIALIZATION`` events, and a report partition whose only (or
     latest) materialization was in that run would turn "missing" (a backfill
     of missing hours would recompute it). So every asset partition (or
     unpartitioned asset) whose *latest* materialization is in the run is
     re-recorded first as a runless materialization (run id ``""``, the
     instance's own ``report_dagster_event``, the same path as
     ``report_runless_asset_event``) with the original metadata, tags and
     timestamp, plus ``salespulse/retained_from_run``. After that its latest
     materialization is no longer in the run, so a second pass (after a
     crash) re-records nothing: one runless event per partition per expired
     run that held its latest materialization, never more;
  2. the run's asset check executions (the table ``delete_run`` leaves
     behind: one row per check per run) — check history of deleted runs goes;
  3. its compute logs (``compute_log_manager.delete_logs(prefix=[run_id])``);
  4. its event log (``event_log_storage.delete_events``), then the run
     (``instance.delete_run``): events first, so a crash between the two
     leaves a run (found and finished next time), never orphaned events.

* runless observations (the sensors' observations of the raw tables and
  topics, a few per tick, stored with run id ``""`` that no run deletion
  reaches) older than ``DAGSTER_RUN_RETENTION_DAYS``, except each asset's
  newest, at most :data:`OBSERVATION_BATCH` rows a call.

Steps 2 and the observations use Dagster's own table definitions
(``dagster._core.storage.event_log.schema``) through the event log storage's
connection: Dagster has no API for either (``delete_run("")`` would delete
every runless event, the re-recorded materializations too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    MetadataValue,
    RunsFilter,
)

#: the metadata key naming the run a re-recorded materialization came from
RETAINED_FROM = "salespulse/retained_from_run"
SUCCESS_STATUSES = [DagsterRunStatus.SUCCESS]
FAILED_STATUSES = [DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
#: runs fetched per query
RUN_PAGE = 200
#: runless observations looked at per call
OBSERVATION_BATCH = 20_000


@dataclass
class DagsterTrim:
    runs_deleted: int = 0
    failed_runs_deleted: int = 0
    rematerialized: int = 0  # runless materializations recorded to keep partitions materialized
    check_executions_deleted: int = 0
    observations_deleted: int = 0
    more: bool = False  # stopped at the bound with expired runs left
    oldest_kept: datetime | None = None
    seconds: float = 0.0
    deleted_run_ids: list[str] = field(default_factory=list)


def _latest_storage_ids(instance: DagsterInstance, asset_key: AssetKey, partitions: set[str | None]) -> dict:
    """partition (None: unpartitioned) -> storage id of the asset's latest materialization."""
    out: dict[str | None, int] = {}
    keys = {p for p in partitions if p is not None}
    if keys:
        out.update(instance.event_log_storage.get_latest_storage_id_by_partition(
            asset_key, DagsterEventType.ASSET_MATERIALIZATION, partitions=keys))
    if None in partitions:
        records = instance.fetch_materializations(asset_key, limit=1).records
        if records:
            out[None] = records[0].storage_id
    return out


def _materializations(instance: DagsterInstance, run_id: str) -> list:
    records, cursor = [], None
    while True:
        conn = instance.get_records_for_run(run_id, cursor=cursor, of_type=DagsterEventType.ASSET_MATERIALIZATION,
                                            limit=1000)
        records.extend(conn.records)
        if not conn.has_more:
            return records
        cursor = conn.cursor


def keep_latest_materializations(instance: DagsterInstance, run_id: str) -> int:
    """Re-record as runless events the materializations of ``run_id`` that are
    their asset partition's latest; returns how many (0 on a second call)."""
    from dagster._core.events import DagsterEvent, StepMaterializationData
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    by_asset: dict[AssetKey, dict[str | None, object]] = {}
    for record in _materializations(instance, run_id):
        mat = record.asset_materialization
        if mat is None:
            continue
        by_asset.setdefault(mat.asset_key, {})[mat.partition] = record
    recorded = 0
    for asset_key, records in by_asset.items():
        latest = _latest_storage_ids(instance, asset_key, set(records))
        for partition, record in sorted(records.items(), key=lambda kv: kv[1].storage_id):
            if latest.get(partition) != record.storage_id:
                continue  # a later materialization (a later run, or already re-recorded) is the latest
            mat: AssetMaterialization = record.asset_materialization
            kept = mat.with_metadata({**mat.metadata, RETAINED_FROM: MetadataValue.text(run_id)})
            instance.report_dagster_event(
                DagsterEvent(event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                             event_specific_data=StepMaterializationData(kept), job_name=RUNLESS_JOB_NAME),
                run_id=RUNLESS_RUN_ID,
                timestamp=record.timestamp,  # the catalog keeps showing when it was materialized
            )
            recorded += 1
    return recorded


def _sql_storage(instance: DagsterInstance):
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

    storage = instance.event_log_storage
    return storage if isinstance(storage, SqlEventLogStorage) else None


def delete_check_executions(instance: DagsterInstance, run_id: str) -> int:
    """Delete the asset check execution rows of ``run_id`` (by the unique index's columns)."""
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable

    storage = _sql_storage(instance)
    if storage is None or not storage.has_table("asset_check_executions"):
        return 0
    keys = set()
    conn = instance.get_records_for_run(run_id, of_type={DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
                                                         DagsterEventType.ASSET_CHECK_EVALUATION})
    for record in conn.records:
        data = record.event_log_entry.dagster_event.event_specific_data
        keys.add((data.asset_key.to_string(), data.check_name))
    deleted = 0
    with storage.index_connection() as db:
        for asset_key, check_name in keys:
            t = AssetCheckExecutionsTable
            result = db.execute(t.delete().where(t.c.asset_key == asset_key, t.c.check_name == check_name,
                                                 t.c.run_id == run_id))
            deleted += result.rowcount or 0
    return deleted


def delete_run_fully(instance: DagsterInstance, run_id: str) -> tuple[int, int]:
    """Steps 1-4 of the module docstring for one run: (re-recorded, check rows deleted)."""
    recorded = keep_latest_materializations(instance, run_id)
    checks = delete_check_executions(instance, run_id)
    instance.compute_log_manager.delete_logs(prefix=[run_id])
    instance.event_log_storage.delete_events(run_id)
    instance.delete_run(run_id)
    return recorded, checks


def trim_runless_observations(instance: DagsterInstance, older_than: datetime, limit: int = OBSERVATION_BATCH) -> int:
    """Delete runless observations older than ``older_than``, except each asset's newest."""
    import sqlalchemy as db
    from dagster._core.storage.event_log.schema import AssetEventTagsTable, SqlEventLogStorageTable as E

    storage = _sql_storage(instance)
    if storage is None:
        return 0
    cutoff = older_than.astimezone(timezone.utc).replace(tzinfo=None)  # the column is naive UTC
    with storage.index_connection() as conn:
        rows = conn.execute(
            db.select(E.c.id, E.c.asset_key).where(
                E.c.run_id == "", E.c.dagster_event_type == DagsterEventType.ASSET_OBSERVATION.value,
                E.c.timestamp < cutoff,
            ).order_by(E.c.id).limit(limit)
        ).fetchall()
        if not rows:
            return 0
        newest = {}
        for asset_key in {r[1] for r in rows}:
            latest = conn.execute(
                db.select(db.func.max(E.c.id)).where(
                    E.c.asset_key == asset_key, E.c.dagster_event_type == DagsterEventType.ASSET_OBSERVATION.value)
            ).scalar()
            newest[asset_key] = latest
        ids = [r[0] for r in rows if r[0] != newest.get(r[1])]
        for start in range(0, len(ids), 5000):
            chunk = ids[start:start + 5000]
            conn.execute(AssetEventTagsTable.delete().where(AssetEventTagsTable.c.event_id.in_(chunk)))
            conn.execute(E.delete().where(E.c.id.in_(chunk)))
    return len(ids)


def _expired(instance: DagsterInstance, statuses, before: datetime, limit: int):
    return instance.get_run_records(filters=RunsFilter(statuses=statuses, updated_before=before), limit=limit,
                                    order_by="update_timestamp", ascending=True)


def trim_dagster_storage(instance: DagsterInstance, *, run_retention_days: float, failed_run_retention_days: float,
                         max_runs: int, time_budget_s: float = 300.0, now: datetime | None = None,
                         log=None) -> DagsterTrim:
    """Delete expired runs (failures kept longer), at most ``max_runs`` and
    about ``time_budget_s`` seconds a call; then old runless observations."""
    started = time.monotonic()
    now = now or datetime.now(timezone.utc)
    out = DagsterTrim()
    for statuses, days in ((FAILED_STATUSES, failed_run_retention_days), (SUCCESS_STATUSES, run_retention_days)):
        before = now - timedelta(days=days)
        while out.runs_deleted < max_runs and time.monotonic() - started < time_budget_s:
            records = _expired(instance, statuses, before, min(RUN_PAGE, max_runs - out.runs_deleted))
            if not records:
                break
            for record in records:
                if time.monotonic() - started >= time_budget_s:
                    break
                run_id = record.dagster_run.run_id
                recorded, checks = delete_run_fully(instance, run_id)
                out.runs_deleted += 1
                out.failed_runs_deleted += statuses is FAILED_STATUSES
                out.rematerialized += recorded
                out.check_executions_deleted += checks
                out.deleted_run_ids.append(run_id)
                if log and recorded:
                    log(f"run {run_id}: re-recorded {recorded} latest materialization(s) before deleting it")
        if _expired(instance, statuses, before, 1):
            out.more = True
    out.observations_deleted = trim_runless_observations(instance, now - timedelta(days=run_retention_days))
    oldest = instance.get_run_records(limit=1, order_by="update_timestamp", ascending=True)
    out.oldest_kept = oldest[0].update_timestamp if oldest else None
    out.seconds = time.monotonic() - started
    return out

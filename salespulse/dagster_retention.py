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
* in batches of :data:`RUN_PAGE` runs, in this order (each step
  idempotent, so a crash anywhere leaves nothing lost and the next call
  finishes the batch):

  1. **keep what the catalog shows**: deleting a run deletes its
     ``ASSET_MATERIALIZATION`` events, and a report partition whose only (or
     latest) materialization was in that run would turn "missing" (a backfill
     of missing hours would recompute it). So every asset partition (or
     unpartitioned asset) whose *latest* materialization is in one of the
     runs is re-recorded first as a runless materialization (run id ``""``,
     the instance's own ``report_dagster_event``, the same path as
     ``report_runless_asset_event``) with the original metadata, tags and
     timestamp, plus ``salespulse/retained_from_run``. After that its latest
     materialization is no longer in the run, so a second pass (after a
     crash) re-records nothing: one runless event per partition per expired
     run that held its latest materialization, never more;
  2. the runs' asset check executions (the table ``delete_run`` leaves
     behind: one row per check per run) — check history of deleted runs goes;
  3. their compute logs (``compute_log_manager.delete_logs(prefix=[run_id])``);
  4. their event logs (the statements of the storage's ``delete_events``, for
     the batch at once), then the runs (``run_storage.delete_run``'s
     statement, for the batch): events first, so a crash between the two
     leaves runs (found and finished next time), never orphaned events.

* runless observations (the sensors' observations of the raw tables and
  topics, a few per tick, stored with run id ``""`` that no run deletion
  reaches) older than ``DAGSTER_RUN_RETENTION_DAYS``, except each asset's
  newest, at most :data:`OBSERVATION_BATCH` rows a call.

Steps 2 and 4 (per batch) and the observations use Dagster's own table
definitions (``dagster._core.storage.event_log.schema``) through the event
log storage's connection: Dagster has no API for the first and the last
(``delete_run("")`` would delete every runless event, the re-recorded
materializations too), and one ``delete_events`` per run costs six
statements where a batch needs three.
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
RUN_PAGE = 100
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


def _materializations(instance: DagsterInstance, run_ids: list[str]) -> list:
    """The materialization records of ``run_ids`` (one query on the event log's run index)."""
    storage = _sql_storage(instance)
    if storage is None:  # not a SQL storage: the instance's per-run API
        return [r for run_id in run_ids for r in instance.get_records_for_run(
            run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records]
    import sqlalchemy as db
    from dagster import EventLogEntry, EventLogRecord
    from dagster._core.storage.event_log.schema import SqlEventLogStorageTable as E
    from dagster._serdes import deserialize_value

    with storage.index_connection() as conn:
        rows = conn.execute(db.select(E.c.id, E.c.event).where(
            E.c.run_id.in_(run_ids), E.c.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION.value)
        ).fetchall()
    return [EventLogRecord(storage_id=row[0], event_log_entry=deserialize_value(row[1], EventLogEntry))
            for row in sorted(rows)]


def keep_latest_materializations(instance: DagsterInstance, run_ids: list[str]) -> int:
    """Re-record as runless events the materializations of ``run_ids`` that are
    their asset partition's latest; returns how many (0 on a second call)."""
    from dagster._core.events import DagsterEvent, StepMaterializationData
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    by_asset: dict[AssetKey, dict[str | None, object]] = {}
    for record in _materializations(instance, run_ids):
        mat = record.asset_materialization
        if mat is not None:
            by_asset.setdefault(mat.asset_key, {})[mat.partition] = record  # ascending ids: the run's last wins
    recorded = 0
    for asset_key, records in by_asset.items():
        latest = _latest_storage_ids(instance, asset_key, set(records))
        for partition, record in sorted(records.items(), key=lambda kv: kv[1].storage_id):
            if latest.get(partition) != record.storage_id:
                continue  # a later materialization (a later run, or already re-recorded) is the latest
            mat: AssetMaterialization = record.asset_materialization
            run_id = record.run_id
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


def check_keys(instance: DagsterInstance) -> list[tuple[str, str]]:
    """(asset key, check name) of every check with executions."""
    import sqlalchemy as db
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable as t

    storage = _sql_storage(instance)
    if storage is None or not storage.has_table("asset_check_executions"):
        return []
    with storage.index_connection() as conn:
        return [tuple(r) for r in conn.execute(db.select(t.c.asset_key, t.c.check_name).distinct())]


def delete_check_executions(instance: DagsterInstance, run_ids: list[str],
                            checks: list[tuple[str, str]] | None = None) -> int:
    """Delete the asset check execution rows of ``run_ids`` (through the unique
    index on asset key, check name and run id: one statement per check)."""
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable as t

    storage = _sql_storage(instance)
    if storage is None or not storage.has_table("asset_check_executions"):
        return 0
    deleted = 0
    checks = check_keys(instance) if checks is None else checks
    with storage.index_connection() as conn:
        for asset_key, check_name in checks:
            result = conn.execute(t.delete().where(t.c.asset_key == asset_key, t.c.check_name == check_name,
                                                   t.c.run_id.in_(run_ids)))
            deleted += result.rowcount or 0
    return deleted


def delete_events(instance: DagsterInstance, run_ids: list[str]) -> None:
    """The event log of ``run_ids``: ``delete_events`` of the event log storage,
    for a batch of runs in one transaction on SQL storages (same statements)."""
    storage = _sql_storage(instance)
    if storage is None:
        for run_id in run_ids:
            instance.event_log_storage.delete_events(run_id)
        return
    import sqlalchemy as db
    from dagster._core.storage.event_log.schema import AssetEventTagsTable, SqlEventLogStorageTable as E

    with storage.index_transaction() as conn:
        asset_event_ids = [row[0] for row in conn.execute(db.select(E.c.id).where(
            E.c.run_id.in_(run_ids), E.c.dagster_event_type.in_(
                [DagsterEventType.ASSET_MATERIALIZATION.value, DagsterEventType.ASSET_OBSERVATION.value])))]
        if asset_event_ids:
            conn.execute(AssetEventTagsTable.delete().where(AssetEventTagsTable.c.event_id.in_(asset_event_ids)))
        conn.execute(E.delete().where(E.c.run_id.in_(run_ids)))
    # what delete_events does last (three queries a run): only when concurrency pools exist at all
    if storage.supports_global_concurrency_limits and storage.get_concurrency_keys():
        for run_id in run_ids:
            storage.free_concurrency_slots_for_run(run_id)


def delete_runs_fully(instance: DagsterInstance, run_ids: list[str],
                      checks: list[tuple[str, str]] | None = None) -> tuple[int, int]:
    """Steps 1-4 of the module docstring for a batch of runs: (re-recorded, check rows deleted)."""
    recorded = keep_latest_materializations(instance, run_ids)
    checks = delete_check_executions(instance, run_ids, checks)
    for run_id in run_ids:
        instance.compute_log_manager.delete_logs(prefix=[run_id])
    delete_events(instance, run_ids)
    delete_runs(instance, run_ids)
    return recorded, checks


def delete_runs(instance: DagsterInstance, run_ids: list[str]) -> None:
    """The run rows (their tags cascade): ``run_storage.delete_run``'s statement
    for the batch on SQL run storages, else ``instance.delete_run`` per run
    (whose event deletion is then a no-op: the events are gone already)."""
    from dagster._core.storage.runs.sql_run_storage import SqlRunStorage

    storage = instance.run_storage
    if not isinstance(storage, SqlRunStorage):
        for run_id in run_ids:
            instance.delete_run(run_id)
        return
    import sqlalchemy as db
    from dagster._core.storage.runs.schema import RunsTable

    with storage.connect() as conn:
        conn.execute(db.delete(RunsTable).where(RunsTable.c.run_id.in_(run_ids)))


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
    checks = check_keys(instance)  # read once a call: the same checks run all along
    for statuses, days in ((FAILED_STATUSES, failed_run_retention_days), (SUCCESS_STATUSES, run_retention_days)):
        before = now - timedelta(days=days)
        while out.runs_deleted < max_runs and time.monotonic() - started < time_budget_s:
            records = _expired(instance, statuses, before, min(RUN_PAGE, max_runs - out.runs_deleted))
            if not records:
                break
            run_ids = [r.dagster_run.run_id for r in records]
            recorded, deleted_checks = delete_runs_fully(instance, run_ids, checks)
            out.runs_deleted += len(run_ids)
            out.failed_runs_deleted += len(run_ids) if statuses is FAILED_STATUSES else 0
            out.rematerialized += recorded
            out.check_executions_deleted += deleted_checks
            out.deleted_run_ids.extend(run_ids)
            if log and recorded:
                log(f"re-recorded {recorded} latest materialization(s) before deleting {len(run_ids)} runs")
        if _expired(instance, statuses, before, 1):
            out.more = True
    out.observations_deleted = trim_runless_observations(instance, now - timedelta(days=run_retention_days))
    oldest = instance.get_run_records(limit=1, order_by="update_timestamp", ascending=True)
    out.oldest_kept = oldest[0].update_timestamp if oldest else None
    out.seconds = time.monotonic() - started
    return out

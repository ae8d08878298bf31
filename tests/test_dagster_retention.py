"""Retention of Dagster's storage (salespulse/dagster_retention.py) on a real
Dagster instance with PostgreSQL storage: old runs go with their event logs,
compute logs and check executions; failures stay longer; every partition
that was materialized still shows as materialized (the instance's query and
the asset status cache the UI reads); a second call changes nothing; a crash
between the steps loses nothing and the next call finishes without duplicating."""

import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dagster import (
    AssetCheckResult,
    AssetKey,
    AssetObservation,
    DagsterEventType,
    DagsterRunStatus,
    HourlyPartitionsDefinition,
    asset,
    asset_check,
    materialize,
)
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

import salespulse.dagster_retention as retention
from salespulse.settings import get_settings
from tests.support.orchestration import instance  # noqa: F401  (fixture)

HOURLY = HourlyPartitionsDefinition(start_date="2026-03-10-00:00", timezone="UTC")
H = ["2026-03-10-09:00", "2026-03-10-10:00", "2026-03-10-11:00"]
PART, PLAIN = AssetKey("part"), AssetKey("plain")


@asset(partitions_def=HOURLY)
def part(context):
    print(f"computing {context.partition_key}")  # captured in the run's compute logs
    if context.run.tags.get("fail") == "1":
        raise RuntimeError("boom")
    return 1


@asset
def plain():
    return 2


@asset_check(asset=plain)
def plain_ok():
    return AssetCheckResult(passed=True)


def run(instance, assets, key=None, **tags):
    result = materialize(assets, partition_key=key, instance=instance, tags=tags, raise_on_error=False)
    return result.run_id


def runless_materializations(instance, key):
    return [r for r in instance.fetch_materializations(key, limit=1000).records if r.run_id == ""]


def status_cache_keys(instance, key, rebuild=False):
    """The materialized partitions as the UI's asset status cache holds them (rebuilt from scratch if asked)."""
    if rebuild:
        instance.event_log_storage.wipe_asset_cached_status(key)
    value = get_and_update_asset_status_cache_value(instance, key, HOURLY)
    return set(value.deserialize_materialized_partition_subsets(HOURLY).get_partition_keys())


def compute_log_dir(instance, run_id) -> Path:
    return Path(instance.compute_log_manager._base_dir) / run_id  # the local manager's layout


def check_rows(instance, run_id):
    with instance.event_log_storage.index_connection() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM asset_check_executions WHERE run_id = %s",
                                    (run_id,)).scalar()


def trim(instance, days_later, **kwargs):
    args = dict(run_retention_days=7, failed_run_retention_days=30, max_runs=1000,
                now=datetime.now(timezone.utc) + timedelta(days=days_later))
    args.update(kwargs)
    return retention.trim_dagster_storage(instance, **args)


@pytest.fixture
def history(instance):
    a = run(instance, [part], H[0])
    p = run(instance, [plain, plain_ok])
    b = run(instance, [part], H[1])
    c = run(instance, [part], H[0])  # h0 again: its latest materialization is c's
    d = run(instance, [part], H[2], fail="1")
    statuses = {r.run_id: r.status for r in instance.get_runs()}
    assert statuses == {a: DagsterRunStatus.SUCCESS, p: DagsterRunStatus.SUCCESS, b: DagsterRunStatus.SUCCESS,
                        c: DagsterRunStatus.SUCCESS, d: DagsterRunStatus.FAILURE}
    assert instance.get_materialized_partitions(PART) == {H[0], H[1]}
    assert status_cache_keys(instance, PART) == {H[0], H[1]}  # the cache exists before the trim
    return a, p, b, c, d


def test_trim_deletes_old_runs_keeps_failures_longer_and_partitions_materialized(instance, history):
    a, p, b, c, d = history
    for run_id in (a, b, c):
        assert compute_log_dir(instance, run_id).is_dir()
        assert instance.get_records_for_run(run_id).records
    assert check_rows(instance, p) == 1
    latest_plain = instance.fetch_materializations(PLAIN, limit=1).records[0]

    assert trim(instance, 1).runs_deleted == 0  # nothing old enough yet

    out = trim(instance, 8)
    assert sorted(out.deleted_run_ids) == sorted([a, p, b, c]) and out.failed_runs_deleted == 0
    assert out.rematerialized == 3  # h0 from c (not a), h1 from b, plain from p
    assert out.check_executions_deleted == 1
    assert {r.run_id for r in instance.get_runs()} == {d}
    for run_id in (a, p, b, c):
        assert instance.get_records_for_run(run_id).records == []
        assert not compute_log_dir(instance, run_id).exists()
        assert check_rows(instance, run_id) == 0
    assert compute_log_dir(instance, d).is_dir()

    # still materialized: the instance's query, the UI's status cache (updated, and rebuilt from scratch)
    assert instance.get_materialized_partitions(PART) == {H[0], H[1]}
    assert status_cache_keys(instance, PART) == {H[0], H[1]}
    assert status_cache_keys(instance, PART, rebuild=True) == {H[0], H[1]}
    kept = {r.partition_key: r for r in runless_materializations(instance, PART)}
    assert set(kept) == {H[0], H[1]}
    assert kept[H[0]].asset_materialization.metadata[retention.RETAINED_FROM].value == c
    plain_now = instance.fetch_materializations(PLAIN, limit=1).records[0]
    assert plain_now.run_id == "" and plain_now.timestamp == latest_plain.timestamp  # original time kept

    # the failure stays until its own, longer retention
    out = trim(instance, 31)
    assert out.deleted_run_ids == [d] and out.failed_runs_deleted == 1 and out.rematerialized == 0
    assert instance.get_runs() == []
    assert not compute_log_dir(instance, d).exists()
    assert instance.get_materialized_partitions(PART) == {H[0], H[1]}

    # idempotent: nothing more to delete, nothing re-recorded twice
    out = trim(instance, 31)
    assert out.runs_deleted == 0 and out.rematerialized == 0
    assert len(runless_materializations(instance, PART)) == 2 and len(runless_materializations(instance, PLAIN)) == 1


def test_a_later_materialization_of_a_retained_partition_is_retained_once_more(instance, history):
    trim(instance, 8)
    e = run(instance, [part], H[1])  # h1 recomputed after its first run was deleted
    assert instance.fetch_materializations(PART, limit=1).records[0].run_id == e
    assert trim(instance, 6).runs_deleted == 0  # e is not old enough
    out = trim(instance, 31)
    assert set(out.deleted_run_ids) == {history[4], e} and out.rematerialized == 1
    assert instance.get_materialized_partitions(PART) == {H[0], H[1]}
    latest_h1 = instance.event_log_storage.get_latest_storage_id_by_partition(
        PART, DagsterEventType.ASSET_MATERIALIZATION, partitions={H[1]})[H[1]]
    assert [r.storage_id for r in runless_materializations(instance, PART) if r.partition_key == H[1]][0] == latest_h1


class Crash(RuntimeError):
    pass


def test_a_crash_between_re_recording_and_deleting_loses_nothing(instance, history, monkeypatch):
    a, p, b, c, d = history

    def crash(inst, run_ids, checks=None):
        raise Crash("killed after re-recording, before deleting")

    monkeypatch.setattr(retention, "delete_check_executions", crash)
    with pytest.raises(Crash):
        trim(instance, 8)
    # the batch's latest materializations were re-recorded (h0 from c, h1 from b, plain from p); nothing deleted
    assert len(instance.get_runs()) == 5
    kept = {r.partition_key: r.asset_materialization.metadata[retention.RETAINED_FROM].value
            for r in runless_materializations(instance, PART)}
    assert kept == {H[0]: c, H[1]: b}
    assert instance.get_materialized_partitions(PART) == {H[0], H[1]}
    assert len(runless_materializations(instance, PLAIN)) == 1
    monkeypatch.undo()

    # a crash between deleting the events and deleting the run: a run without events is left
    real_delete_runs = retention.delete_runs
    calls = []

    def delete_runs_crashing_once(inst, run_ids):
        calls.append(list(run_ids))
        if len(calls) == 1:
            raise Crash("killed before the run rows went")
        real_delete_runs(inst, run_ids)

    monkeypatch.setattr(retention, "delete_runs", delete_runs_crashing_once)
    with pytest.raises(Crash):
        trim(instance, 8)
    first = calls[0][0]
    assert first == a  # the oldest; the batch's events are gone, its runs are left
    for run_id in (a, p, b, c):
        assert instance.get_run_by_id(run_id) is not None and instance.get_records_for_run(run_id).records == []
    monkeypatch.undo()

    out = trim(instance, 8)
    assert {r.run_id for r in instance.get_runs()} == {d}
    assert first in out.deleted_run_ids
    assert instance.get_materialized_partitions(PART) == {H[0], H[1]}
    assert status_cache_keys(instance, PART, rebuild=True) == {H[0], H[1]}
    # each partition re-recorded exactly once across the crashes and the retry
    assert sorted(r.partition_key for r in runless_materializations(instance, PART)) == [H[0], H[1]]
    assert len(runless_materializations(instance, PLAIN)) == 1


def test_bounded_per_call(instance, history):
    out = trim(instance, 8, max_runs=2)
    assert out.runs_deleted == 2 and out.more
    out = trim(instance, 8, max_runs=2)
    assert out.runs_deleted == 2 and not out.more
    assert instance.get_materialized_partitions(PART) == {H[0], H[1]}


def test_old_runless_observations_go_except_each_assets_newest(instance):
    for i in range(3):
        instance.report_runless_asset_event(AssetObservation(asset_key=PLAIN, metadata={"i": i}))
        instance.report_runless_asset_event(AssetObservation(asset_key=PART, metadata={"i": i}))
    out = trim(instance, 8)
    assert out.observations_deleted == 4
    for key in (PLAIN, PART):
        left = instance.fetch_observations(key, limit=10).records
        assert [r.asset_observation.metadata["i"].value for r in left] == [2]
    assert trim(instance, 0).observations_deleted == 0


def test_the_op_in_store_retention_job_uses_the_settings(instance, database_url, monkeypatch):
    from orchestration.resources import PostgresResource
    from orchestration.jobs import store_retention_job
    from orchestration.retention import STORE_TRIMS, trim_dagster_storage

    assert trim_dagster_storage in STORE_TRIMS
    old = run(instance, [part], H[0])
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DAGSTER_RUN_RETENTION_DAYS", "0.00002")  # 1.7 s: the soak's scaled-down path
    get_settings.cache_clear()
    time.sleep(2)
    result = store_retention_job.execute_in_process(
        instance=instance, op_selection=["trim_dagster_storage"],
        resources={"postgres": PostgresResource(database_url=database_url)})
    get_settings.cache_clear()
    assert result.success
    assert result.output_for_node("trim_dagster_storage") == 1
    assert instance.get_run_by_id(old) is None
    assert instance.get_materialized_partitions(PART) == {H[0]}
    assert os.environ["DAGSTER_RUN_RETENTION_DAYS"] == "0.00002"

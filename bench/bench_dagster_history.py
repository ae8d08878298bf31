"""Benchmark: the Dagster UI and daemon on day 1 and on day 30 of the local
stack's run history, before and after retention (a script, not a test).

1. Starts its own EmbeddedPostgres, EmbeddedBroker and Spark Connect server
   (free ports, state under /var/tmp, removed at the end); an application
   database with an hour of data and a Dagster instance on PostgreSQL
   (``prepare_dagster_home``, as ``make run`` writes it).
2. **The real shape**: runs every job the schedules launch once, in process,
   on that instance (``refresh_reports_job`` for an hour, the minute checks,
   the five-minute health checks, the hourly raw partitions, the 10-minute
   store retention) and evaluates every sensor once (their runless
   observations); each run's run record, event log rows (every event type),
   asset event tags and check executions are the templates.
3. **Seeds** the history at the schedules' cadence — every minute a refresh
   run (the hour's partition) and a checks run, every 5 minutes health
   checks, every 10 the retention job, hourly the partitions job, the
   sensors' observations every 30/60 s — with timestamps spread over
   ``--days`` days ending now. Rows are the templates' own rows (Dagster's
   ``_event_to_row`` / ``_get_run_insertion_values`` of the real events and
   runs) with the run id, partition and times replaced, inserted in batches
   into Dagster's tables (``SqlEventLogStorageTable``, ``RunsTable``,
   ``RunTagsTable``, ``AssetEventTagsTable``, ``AssetCheckExecutionsTable``);
   the asset index (``asset_keys``) is then updated through the storage's
   ``store_asset_event`` with each asset's latest event. Per-event storage
   calls would take hours for 30 days (a transaction and a NOTIFY each).
4. **Measures**, on day 1 (one day seeded), on day ``--days`` without
   retention, and on day ``--days`` after ``trim_dagster_storage`` has run to
   completion with the default retention (7 days, failures 30): the GraphQL
   queries behind the Runs page, a report asset's page with its partitions,
   its asset checks (list and one check's history) and a backfill launch
   (``launchPartitionBackfill``), against a real ``dagster-webserver``
   started by the bench (median of ``--repeat`` after a warm-up); and the
   evaluation time of every sensor and schedule (the functions the daemon's
   ticks call, evaluated in process against the same instance). Prints a
   table and ends with one JSON line.

Usage: ``.venv/bin/python bench/bench_dagster_history.py [--days 30] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from bench_orchestration import stop_group  # noqa: E402 (bench/ is the script's folder)

RUNS_PAGE = """
query RunsRoot($limit: Int!) {
  runsFeedOrError(limit: $limit, view: ROOTS) {
    __typename
    ... on RunsFeedConnection { cursor hasMore results {
      __typename id
      ... on Run { runId status jobName creationTime startTime endTime updateTime
                   tags { key value } assetSelection { path } }
      ... on PartitionBackfill { backfillStatus: status numPartitions }
    } }
    ... on PythonError { message }
  }
  runsFeedCountOrError(view: ROOTS) { __typename ... on RunsFeedCount { count } }
}"""
ASSET_PAGE = """
query AssetPage($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      id partitionStats { numMaterialized numPartitions numFailed numMaterializing }
      assetPartitionStatuses { __typename ... on TimePartitionStatuses { ranges { status startKey endKey } } }
      partitionKeysByDimension { name partitionKeys }
    }
  }
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset { assetMaterializations(limit: 1) { runId timestamp partition metadataEntries { label } } }
  }
}"""
ASSET_CHECKS = """
query AssetChecks($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode { assetChecksOrError { __typename ... on AssetChecks { checks {
      name executionForLatestMaterialization { runId status timestamp evaluation { success } } } } } }
  }
}"""
CHECK_HISTORY = """
query CheckHistory($key: AssetKeyInput!, $name: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $name, limit: 25) { runId status timestamp evaluation { success } }
}"""
LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } ... on Error { message }
  }
}"""
LOCATIONS = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name
    locationOrLoadError { __typename ... on PythonError { message } } } } } }"""

#: jobs the schedules launch: name -> (every N minutes, at minute offset)
CADENCE = {
    "refresh_reports_job": (1, 0),
    "pipeline_checks_job": (1, 0),
    "pipeline_health_checks_job": (5, 0),
    "store_retention_job": (10, 0),
    "raw_partitions_job": (60, 7),
}
#: sensor -> interval in seconds (minimum_interval_seconds)
SENSOR_INTERVAL = {"new_data_sensor": 30, "kafka_lag_sensor": 30, "freshness_sensor": 60}


def graphql(port: int, document: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql",
                                     data=json.dumps({"query": document, "variables": variables or {}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        body = json.load(response)
    if "errors" in body:
        raise RuntimeError(body["errors"])
    return body["data"]


class Templates:
    """The real runs' rows, ready to be copied with another run id, partition and time."""

    def __init__(self, instance, run_ids: dict[str, str], runless_ranges: dict[str, tuple[int, int]]):
        import sqlalchemy as db
        from dagster._core.storage.event_log.schema import AssetEventTagsTable

        self.instance = instance
        storage = instance.event_log_storage
        self.runs = {}
        for job, run_id in run_ids.items():
            run = instance.get_run_by_id(run_id)
            values = instance.run_storage._get_run_insertion_values(run, None)
            tags = run.tags_for_storage()
            records = instance.get_records_for_run(run_id).records
            t0 = records[0].timestamp
            events = []
            for r in records:
                row = storage._event_to_row(r.event_log_entry)
                events.append((r.storage_id, r.timestamp - t0, repr(r.timestamp), row))
            self.runs[job] = dict(run_id=run_id, values=values, tags=tags, events=events,
                                  partition=run.tags.get("dagster/partition"),
                                  duration=records[-1].timestamp - t0)
        self.runless = []  # (sensor, template id, timestamp repr, row)
        for r in instance.event_log_storage.get_records_for_run("", limit=100_000).records:
            for sensor, (low, high) in runless_ranges.items():
                if low < r.storage_id <= high:
                    self.runless.append((sensor, r.storage_id, repr(r.timestamp), storage._event_to_row(r.event_log_entry)))
        self.tags = {}
        all_ids = [e[1] for e in self.runless] + [e[0] for t in self.runs.values() for e in t["events"]]
        with storage.index_connection() as conn:
            for row in conn.execute(db.select(AssetEventTagsTable).where(
                    AssetEventTagsTable.c.event_id.in_(all_ids))).mappings():
                self.tags.setdefault(row["event_id"], []).append(dict(row))
        checks = {}
        with storage.index_connection() as conn:
            from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable as C
            for row in conn.execute(db.select(C).where(C.c.run_id.in_(list(run_ids.values())))).mappings():
                checks.setdefault(row["run_id"], []).append(dict(row))
        self.checks = checks

    def events_per_run(self) -> dict[str, int]:
        return {job: len(t["events"]) for job, t in self.runs.items()}


def _text(value) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def copy(cur, table: str, rows: list[dict]) -> None:
    """COPY ``rows`` (Dagster's own row dicts) into ``table``."""
    import io

    columns = list(rows[0])
    buf = io.StringIO()
    for row in rows:
        buf.write("\t".join(_text(row.get(c)) for c in columns))
        buf.write("\n")
    buf.seek(0)
    cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buf)


def seed(instance, templates: Templates, start: datetime, end: datetime, pg_conn) -> dict:
    """Copy the templates at the schedules' cadence over [start, end)."""

    counts = {"runs": 0, "events": 0, "check_executions": 0, "runless": 0}
    runs_rows, tag_rows, event_rows, event_meta = [], [], [], []  # event_meta: (template id, run id, when, job)

    def flush():
        if not runs_rows and not event_rows:
            return
        with pg_conn.cursor() as cur:
            if runs_rows:
                copy(cur, "runs", runs_rows)
                copy(cur, "run_tags", tag_rows)
            n = len(event_rows)
            cur.execute("SELECT setval('event_logs_id_seq', nextval('event_logs_id_seq') + %s - 1)", (n,))
            last = cur.fetchone()[0]
            ids = list(range(last - n + 1, last + 1))
            for new_id, row in zip(ids, event_rows):
                row["id"] = new_id
            copy(cur, "event_logs", event_rows)
            new_tags, checks = [], []
            mat_by_run: dict[tuple, int] = {}
            for new_id, (tid, run_id, when, job) in zip(ids, event_meta):
                for tag in templates.tags.get(tid, ()):
                    new_tags.append(dict(event_id=new_id, asset_key=tag["asset_key"], key=tag["key"],
                                         value=tag["value"], event_timestamp=when.replace(tzinfo=None)))
                if job and tid in templates.mat_ids:
                    mat_by_run[(run_id, templates.mat_ids[tid])] = new_id
                if job and tid in templates.check_event_ids:
                    checks.append((new_id, run_id, when, job, tid))
            if new_tags:
                copy(cur, "asset_event_tags", new_tags)
            check_rows = []
            for new_id, run_id, when, job, tid in checks:
                row = dict(templates.check_event_ids[tid])
                row.pop("id", None)
                row.update(run_id=run_id, evaluation_event_storage_id=new_id,
                           evaluation_event_timestamp=when.replace(tzinfo=None), create_timestamp=when.replace(tzinfo=None),
                           evaluation_event=row["evaluation_event"].replace(templates.runs[job]["run_id"], run_id),
                           materialization_event_storage_id=mat_by_run.get((run_id, row["asset_key"])))
                check_rows.append(row)
            if check_rows:
                copy(cur, "asset_check_executions", check_rows)
        pg_conn.commit()
        counts["check_executions"] += len(check_rows)
        counts["events"] += len(event_rows)
        counts["runs"] += len(runs_rows)
        runs_rows.clear(), tag_rows.clear(), event_rows.clear(), event_meta.clear()

    def add_run(job: str, when: datetime):
        t = templates.runs[job]
        run_id = str(uuid.uuid4())
        old_id, old_part = t["run_id"], t["partition"]
        new_part = when.strftime("%Y-%m-%d-%H:00") if old_part else None

        def sub(text):
            text = text.replace(old_id, run_id)
            return text.replace(old_part, new_part) if old_part else text

        values = dict(t["values"])
        end_time = when + timedelta(seconds=max(t["duration"], 0.5))
        values.update(run_id=run_id, run_body=sub(values["run_body"]), partition=new_part,
                      create_timestamp=when.replace(tzinfo=None), update_timestamp=end_time.replace(tzinfo=None),
                      start_time=when.timestamp(), end_time=end_time.timestamp())
        runs_rows.append(values)
        tag_rows.extend(dict(run_id=run_id, key=k, value=sub(v)) for k, v in t["tags"].items())
        for tid, offset, ts_repr, row in t["events"]:
            at = when + timedelta(seconds=offset)
            new = dict(row)
            new.update(run_id=run_id, event=sub(row["event"]).replace(ts_repr, repr(at.timestamp())),
                       timestamp=at.replace(tzinfo=None),
                       partition=new_part if row["partition"] else None)
            event_rows.append(new)
            event_meta.append((tid, run_id, at, job))

    def add_runless(when: datetime, second: int):
        for sensor, tid, ts_repr, row in templates.runless:
            if second % SENSOR_INTERVAL[sensor]:
                continue
            new = dict(row)
            new.update(event=row["event"].replace(ts_repr, repr(when.timestamp())), timestamp=when.replace(tzinfo=None))
            event_rows.append(new)
            event_meta.append((tid, "", when, None))
            counts["runless"] += 1

    # the non-unique indexes are built once after the bulk copy (what Dagster created, same definitions)
    with pg_conn.cursor() as cur:
        cur.execute("""SELECT i.indexname, i.indexdef FROM pg_indexes i JOIN pg_class c ON c.relname = i.indexname
                       JOIN pg_index x ON x.indexrelid = c.oid
                       WHERE i.schemaname = 'public' AND NOT x.indisunique AND i.tablename IN
                       ('event_logs', 'asset_event_tags', 'asset_check_executions', 'runs', 'run_tags')""")
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
    pg_conn.commit()
    minute = start
    while minute < end:
        m = int(minute.timestamp() // 60)
        for job, (every, offset) in CADENCE.items():
            if (m - offset) % every == 0 and job in templates.runs:
                add_run(job, minute + timedelta(seconds=1))
        for second in range(0, 60, 30):
            add_runless(minute + timedelta(seconds=second), second)
        if len(event_rows) > 50_000:
            flush()
        minute += timedelta(minutes=1)
    flush()
    with pg_conn.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            cur.execute(definition)
        cur.execute("ANALYZE")
    pg_conn.commit()
    return counts


def finish_asset_index(instance) -> None:
    """The asset index (asset_keys: last materialization, last event time) from each asset's latest event,
    through the storage's own update; the status caches rebuilt on the next read."""
    storage = instance.event_log_storage
    for key in instance.get_asset_keys():
        for fetch in (instance.fetch_materializations, instance.fetch_observations):
            records = fetch(key, limit=1).records
            if records:
                storage.store_asset_event(records[0].event_log_entry, records[0].storage_id)
        storage.wipe_asset_cached_status(key)


def timed(fn, repeat: int) -> tuple[float, float]:
    """(first call, median of ``repeat`` further calls) in seconds."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    walls = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
    return first, statistics.median(walls)


def measure(port: int, instance, defs, args, label: str, backfill_keys: list[str]) -> dict:
    from dagster import build_schedule_context, build_sensor_context

    key = {"path": ["ecommerce_reports"]}
    out: dict[str, float] = {}

    def runs_page():
        data = graphql(port, RUNS_PAGE, {"limit": 30})
        assert data["runsFeedOrError"]["__typename"] == "RunsFeedConnection", data

    def asset_page():
        data = graphql(port, ASSET_PAGE, {"key": key})
        assert data["assetNodeOrError"]["__typename"] == "AssetNode", data

    checks_list = []

    def asset_checks():
        data = graphql(port, ASSET_CHECKS, {"key": key})
        checks = data["assetNodeOrError"]["assetChecksOrError"]["checks"]
        checks_list[:] = [c["name"] for c in checks]

    def check_history():
        for name in checks_list[:1]:
            graphql(port, CHECK_HISTORY, {"key": key, "name": name})

    def launch_backfill():
        data = graphql(port, LAUNCH, {"params": {"partitionNames": backfill_keys, "title": f"bench {label}",
                                                 "assetSelection": [key]}})
        assert data["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", data

    for name, fn in (("runs_page", runs_page), ("asset_page", asset_page), ("asset_checks", asset_checks),
                     ("check_history", check_history), ("backfill_launch", launch_backfill)):
        first, med = timed(fn, args.repeat)
        out[f"{name}_s"] = round(med, 3)
        out[f"{name}_first_s"] = round(first, 3)
        print(f"  [{label}] {name}: first {first:.3f} s, median {med:.3f} s", flush=True)

    # the daemon's ticks: each sensor and schedule evaluated against the instance
    resources = defs.resources
    sensor_times, schedule_times = {}, {}
    for sensor in defs.sensors:
        cursor = None

        def evaluate(sensor=sensor, cursor=cursor):
            with build_sensor_context(instance=instance, cursor=cursor, resources=resources,
                                      definitions=defs) as context:
                result = sensor.evaluate_tick(context)
            return result

        walls = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            result = evaluate()
            walls.append(time.perf_counter() - t)
            cursor = result.cursor or cursor
        sensor_times[sensor.name] = round(statistics.median(walls), 3)
    repository = defs.get_repository_def()
    for schedule in defs.schedules:
        walls = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            with build_schedule_context(instance=instance, repository_def=repository,
                                        scheduled_execution_time=datetime.now(timezone.utc)) as context:
                schedule.evaluate_tick(context)
            walls.append(time.perf_counter() - t)
        schedule_times[schedule.name] = round(statistics.median(walls), 3)
    out["sensor_tick_max_s"] = max(sensor_times.values())
    out["schedule_tick_max_s"] = max(schedule_times.values())
    out["sensor_ticks_s"] = sensor_times
    out["schedule_ticks_s"] = schedule_times
    print(f"  [{label}] sensor ticks: {sensor_times}", flush=True)
    print(f"  [{label}] schedule ticks: {schedule_times}", flush=True)
    return out


def dagster_sizes(instance) -> dict:
    with instance.event_log_storage.index_connection() as conn:
        row = conn.exec_driver_sql("""SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM event_logs),
                                             (SELECT count(*) FROM asset_check_executions),
                                             pg_database_size(current_database())""").fetchone()
    return {"runs": row[0], "event_logs": row[1], "check_executions": row[2], "db_mb": round(row[3] / 2**20, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import psycopg2
    from dagster import DagsterInstance

    from seed_sql import ECOMMERCE_SEED_SQL, RESTAURANT_SEED_SQL
    from salespulse.db import migrate
    from salespulse.kafka import ensure_topics
    from salespulse.settings import Settings, get_settings
    from salespulse.stack.broker import EmbeddedBroker
    from salespulse.stack.dagster_home import prepare_dagster_home
    from salespulse.stack.postgres import EmbeddedPostgres
    from salespulse.stack.spark import SparkConnectServer
    from tests.conftest import free_port

    state = Path(tempfile.mkdtemp(prefix="bench-dagster-history-", dir="/var/tmp"))
    state.chmod(0o755)
    pg = EmbeddedPostgres(state, free_port()).start()
    broker = EmbeddedBroker(free_port(), log_file=state / "broker.log").start()
    spark = SparkConnectServer(free_port(), master="local[2]", log_dir=state / "spark")
    web = None
    figures: dict = {"days": args.days}
    try:
        spark.start()
        now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        hour = now.replace(minute=0)
        url = pg.create_database("bench")
        migrate(Settings(database_url=url))
        ensure_topics(broker.bootstrap)
        base = hour - timedelta(hours=1)
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            n = 6000
            cur.execute(ECOMMERCE_SEED_SQL + RESTAURANT_SEED_SQL + "ANALYZE;",
                        {"base": base, "n": n, "step": int(3600e6 // n), "orders": n // 10,
                         "ostep": int(3600e6 // (n // 10))})
        dagster_url = pg.create_database("dagster_bench")
        home = prepare_dagster_home(Settings(database_url=dagster_url), database="dagster_bench", home=state / "home")
        history_start = hour - timedelta(days=args.days)
        env = {"DATABASE_URL": url, "SPARK_REMOTE": spark.remote, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
               "DAGSTER_HOME": str(home),
               # the partitions cover the seeded history, as the first data would
               "REPORT_PARTITIONS_START": (history_start - timedelta(hours=1)).isoformat()}
        os.environ.update(env)
        get_settings.cache_clear()
        instance = DagsterInstance.from_config(str(home))

        # 2. the real shape: each scheduled job once, each sensor once
        from orchestration.definitions import defs

        key = base.strftime("%Y-%m-%d-%H:00")
        run_ids = {}
        for job_name in CADENCE:
            job = defs.resolve_job_def(job_name)
            t = time.perf_counter()
            result = job.execute_in_process(instance=instance, partition_key=key if job.partitions_def else None,
                                            raise_on_error=False)
            run_ids[job_name] = result.run_id
            print(f"template {job_name}: {'ok' if result.success else 'FAILED'} in {time.perf_counter() - t:.1f} s",
                  flush=True)
        from dagster import build_sensor_context

        def max_event_id():
            with instance.event_log_storage.index_connection() as conn:
                return conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM event_logs").scalar()

        runless_per_sensor, runless_ranges = {}, {}
        for sensor in defs.sensors:
            if sensor.name not in SENSOR_INTERVAL:
                continue
            low = max_event_id()
            with build_sensor_context(instance=instance, resources=defs.resources, definitions=defs) as context:
                result = sensor.evaluate_tick(context)
            for event in result.asset_events or []:
                instance.report_runless_asset_event(event)
            runless_ranges[sensor.name] = (low, max_event_id())
            runless_per_sensor[sensor.name] = runless_ranges[sensor.name][1] - low
        templates = Templates(instance, run_ids, runless_ranges)
        # which template events are materializations (asset key) and check evaluations (execution row)
        templates.mat_ids, templates.check_event_ids = {}, {}
        for job, t in templates.runs.items():
            for tid, _off, _ts, row in t["events"]:
                if row["dagster_event_type"] == "ASSET_MATERIALIZATION":
                    templates.mat_ids[tid] = row["asset_key"]
            for check_row in templates.checks.get(t["run_id"], []):
                if check_row["evaluation_event_storage_id"]:
                    templates.check_event_ids[check_row["evaluation_event_storage_id"]] = check_row
        per_run = templates.events_per_run()
        runs_per_hour = sum(60 // every for every, _ in CADENCE.values())
        events_per_hour = sum(per_run[j] * (60 // every) for j, (every, _) in CADENCE.items()) + \
            sum(runless_per_sensor[s] * (3600 // SENSOR_INTERVAL[s]) for s in runless_per_sensor)
        print(f"shape: events per run {per_run}; runless observations per tick {runless_per_sensor}; "
              f"{runs_per_hour} runs and {events_per_hour} event rows an hour", flush=True)
        figures.update(runs_per_hour=runs_per_hour, event_rows_per_hour=events_per_hour,
                       events_per_run=per_run, observations_per_tick=runless_per_sensor)

        # the webserver, on the same instance and code location
        port = free_port()
        log = open(state / "webserver.log", "wb")
        web = subprocess.Popen([str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                                "-w", "workspace.yaml"], cwd=ROOT, env={**os.environ}, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while True:
            assert web.poll() is None, (state / "webserver.log").read_text()[-3000:]
            try:
                entries = graphql(port, LOCATIONS)["workspaceOrError"]["locationEntries"]
                if any(e["locationOrLoadError"] and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
                       for e in entries):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "webserver did not load the code location"
            time.sleep(1)

        pg_conn = psycopg2.connect(dagster_url)
        with pg_conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
        backfill_keys = [(history_start + timedelta(days=1, hours=h)).strftime("%Y-%m-%d-%H:00") for h in range(24)]

        # 3./4. day 1
        t = time.perf_counter()
        counts = seed(instance, templates, history_start, history_start + timedelta(days=1), pg_conn)
        finish_asset_index(instance)
        day1_seed = time.perf_counter() - t
        print(f"seeded day 1: {counts} in {day1_seed:.0f} s; {dagster_sizes(instance)}", flush=True)
        figures["day1"] = measure(port, instance, defs, args, "day 1", backfill_keys)
        figures["day1"]["sizes"] = dagster_sizes(instance)

        # day N, no retention
        t = time.perf_counter()
        counts2 = seed(instance, templates, history_start + timedelta(days=1), now, pg_conn)
        finish_asset_index(instance)
        seed_s = day1_seed + time.perf_counter() - t
        total = {k: counts[k] + counts2[k] for k in counts}
        print(f"seeded {args.days} days: {total} in {seed_s:.0f} s; {dagster_sizes(instance)}", flush=True)
        figures["seeded"] = total
        figures["seed_s"] = round(seed_s, 1)
        figures[f"day{args.days}"] = measure(port, instance, defs, args, f"day {args.days}", backfill_keys)
        figures[f"day{args.days}"]["sizes"] = dagster_sizes(instance)

        # retention to completion (defaults), as the 10-minute job would over successive calls
        from salespulse.dagster_retention import trim_dagster_storage

        settings = Settings()
        materialized_before = {k: instance.get_materialized_partitions(k) for k in
                               (defs.resolve_assets_def("ecommerce_reports").key,
                                defs.resolve_assets_def("restaurant_reports").key)}
        calls, deleted, rerecorded, walls = 0, 0, 0, []
        while True:
            trim = trim_dagster_storage(instance, run_retention_days=settings.dagster_run_retention_days,
                                        failed_run_retention_days=settings.dagster_failed_run_retention_days,
                                        max_runs=settings.dagster_retention_max_runs)
            calls += 1
            deleted += trim.runs_deleted
            rerecorded += trim.rematerialized
            walls.append(trim.seconds)
            print(f"  retention call {calls}: {trim.runs_deleted} runs, {trim.rematerialized} re-recorded, "
                  f"{trim.observations_deleted} observations in {trim.seconds:.1f} s", flush=True)
            if not trim.more and trim.observations_deleted < 20_000:
                break
        for k, before in materialized_before.items():
            assert instance.get_materialized_partitions(k) == before, f"{k}: materialized partitions changed"
        steady = trim_dagster_storage(instance, run_retention_days=settings.dagster_run_retention_days,
                                      failed_run_retention_days=settings.dagster_failed_run_retention_days,
                                      max_runs=settings.dagster_retention_max_runs)
        figures["retention"] = {"calls": calls, "runs_deleted": deleted, "rerecorded": rerecorded,
                                "seconds_total": round(sum(walls), 1), "seconds_max_call": round(max(walls), 1),
                                "runs_per_s": round(deleted / max(sum(walls), 1e-9), 1),
                                "steady_call_s": round(steady.seconds, 2),
                                "materialized_partitions_kept": {str(k.to_user_string()): len(v)
                                                                 for k, v in materialized_before.items()}}
        instance.event_log_storage.wipe_asset_cached_status(defs.resolve_assets_def("ecommerce_reports").key)
        label = f"day{args.days}_retention"
        figures[label] = measure(port, instance, defs, args, f"day {args.days}, retention", backfill_keys)
        figures[label]["sizes"] = dagster_sizes(instance)

        # table
        names = ["runs_page_s", "asset_page_s", "asset_checks_s", "check_history_s", "backfill_launch_s",
                 "sensor_tick_max_s", "schedule_tick_max_s"]
        d1, dn, dr = figures["day1"], figures[f"day{args.days}"], figures[label]
        print(f"\n{'figure':<22}{'day 1':>10}{f'day {args.days}':>10}{'+retention':>12}{'ratio':>8}")
        ratios = {}
        for name in names:
            ratio = dr[name] / d1[name] if d1[name] else float("nan")
            ratios[name] = round(ratio, 2)
            print(f"{name:<22}{d1[name]:>10.3f}{dn[name]:>10.3f}{dr[name]:>12.3f}{ratio:>8.2f}")
        for key_ in ("runs", "event_logs", "check_executions", "db_mb"):
            print(f"{key_:<22}{d1['sizes'][key_]:>10}{dn['sizes'][key_]:>10}{dr['sizes'][key_]:>12}")
        figures["ratio_day_n_retention_vs_day1"] = ratios
        figures["ratio_day_n_no_retention_vs_day1"] = {n: round(dn[n] / d1[n], 2) if d1[n] else None for n in names}
        print(json.dumps(figures, default=str))
        return 0
    finally:
        if web is not None:
            stop_group(web)
        try:
            from orchestration.reports.common import close_sessions
            close_sessions()
        except Exception:
            pass
        spark.stop()
        broker.stop()
        pg.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

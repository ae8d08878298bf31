"""Benchmark: what Dagster adds around the Spark reports (a script, not a test).

Starts its own EmbeddedPostgres, EmbeddedBroker and Spark Connect server on free
ports (state under /var/tmp, removed at the end), seeds ``--hours`` hours of
e-commerce events and restaurant orders with ``generate_series``, then prints:

1. **Code location import**: ``import orchestration.definitions`` in a fresh
   Python process (every run worker and code server pays it).
2. **One partition, in process**: ``refresh_reports_job`` (both reports, the
   three views, the four window checks) for one hour on the warm server — wall
   time and the reports' ``spark_seconds``.
3. **Backfill of the whole range**: ``dagster asset materialize
   --partition-range`` (one run, a new process: import + Spark + checks)
   versus the same hours as one in-process run each.
4. **Under the daemon**: ``dagster-webserver`` + ``dagster-daemon`` on a
   PostgreSQL-backed DAGSTER_HOME; for ``--ticks`` runs of the minute schedule:
   queue delay (created -> started), run duration (started -> finished) and
   tick -> reports written. Also the sensors' tick durations.

Usage: ``.venv/bin/python bench/bench_orchestration.py [--hours 6] [--events-per-hour 20000] [--ticks 3]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seed_sql import ECOMMERCE_SEED_SQL, RESTAURANT_SEED_SQL  # noqa: E402 (bench/ is the script's folder)
BIN = Path(sys.executable).parent

SEED_SQL = ECOMMERCE_SEED_SQL + RESTAURANT_SEED_SQL + "ANALYZE;\n"


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=int, default=6)
    parser.add_argument("--events-per-hour", type=int, default=20_000)
    parser.add_argument("--ticks", type=int, default=3)
    args = parser.parse_args()

    import psycopg2

    from salespulse.db import migrate
    from salespulse.kafka import ensure_topics
    from salespulse.settings import Settings, get_settings
    from salespulse.stack.broker import EmbeddedBroker
    from salespulse.stack.dagster_home import prepare_dagster_home
    from salespulse.stack.postgres import EmbeddedPostgres
    from salespulse.stack.spark import SparkConnectServer
    from tests.conftest import free_port

    state = Path(tempfile.mkdtemp(prefix="bench-orch-", dir="/var/tmp"))
    state.chmod(0o755)
    pg = EmbeddedPostgres(state, free_port()).start()
    broker = EmbeddedBroker(free_port(), log_file=state / "broker.log").start()
    spark = SparkConnectServer(free_port(), master="local[2]", log_dir=state / "spark")
    procs: list[subprocess.Popen] = []
    try:
        spark.start()
        url = pg.create_database("bench")
        migrate(Settings(database_url=url))
        ensure_topics(broker.bootstrap)
        base = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=args.hours + 1)
        n = args.hours * args.events_per_hour
        orders = n // 10
        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:
            cur.execute(SEED_SQL, {"base": base, "n": n, "step": int(args.hours * 3600e6 // n),
                                   "orders": orders, "ostep": int(args.hours * 3600e6 // orders)})
        conn.close()
        keys = [(base + timedelta(hours=h)).strftime("%Y-%m-%d-%H:%M") for h in range(args.hours)]
        print(f"seeded {n} events, {orders} orders over {args.hours} h ({keys[0]} .. {keys[-1]})", flush=True)

        env = {**os.environ, "DATABASE_URL": url, "SPARK_REMOTE": spark.remote,
               "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap}
        os.environ.update({k: env[k] for k in ("DATABASE_URL", "SPARK_REMOTE", "KAFKA_BOOTSTRAP_SERVERS")})
        get_settings.cache_clear()

        # 1. import cost of the code location
        imports = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import orchestration.definitions"], cwd=ROOT, env=env, check=True)
            imports.append(time.perf_counter() - t)
        print(f"1. import orchestration.definitions (fresh process): median {median(imports):.2f} s", flush=True)

        # 2. one partition in process, warm server
        from orchestration.definitions import defs

        job = defs.resolve_job_def("refresh_reports_job")
        walls, sparks = [], []
        for i, key in enumerate(keys):
            t = time.perf_counter()
            result = job.execute_in_process(partition_key=key)
            wall = time.perf_counter() - t
            assert result.success
            if i == 0:
                print(f"2. first (warm-up) partition: {wall:.2f} s", flush=True)
                continue
            walls.append(wall)
            for ev in result.get_asset_materialization_events():
                md = ev.step_materialization_data.materialization.metadata
                if "spark_seconds" in md:
                    sparks.append(md["spark_seconds"].value)
        print(f"2. refresh_reports_job, one hour ({args.events_per_hour} events + {orders // args.hours} orders), "
              f"in process: median {median(walls):.2f} s over {len(walls)} hours; "
              f"Spark per report median {median(sparks):.2f} s", flush=True)

        # 3. the whole range: one CLI run vs one in-process run per hour
        home = prepare_dagster_home(Settings(database_url=pg.create_database("dagster_cli")),
                                    database="dagster_cli", home=state / "home_cli")
        t = time.perf_counter()
        subprocess.run([str(BIN / "dagster"), "asset", "materialize", "-m", "orchestration.definitions",
                        "--select", "ecommerce_reports,restaurant_reports",
                        "--partition-range", f"{keys[0]}...{keys[-1]}"],
                       cwd=ROOT, env={**env, "DAGSTER_HOME": str(home)}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cli = time.perf_counter() - t
        from dagster import materialize

        from orchestration.assets.reports import ecommerce_reports, restaurant_reports
        from orchestration.checks import window_checks
        from orchestration.definitions import build_resources

        t = time.perf_counter()
        for key in keys:
            assert materialize([ecommerce_reports, restaurant_reports, *window_checks], partition_key=key,
                               resources=build_resources()).success
        per_hour = time.perf_counter() - t
        print(f"3. backfill of {args.hours} h: CLI --partition-range (one run, new process) {cli:.1f} s; "
              f"{args.hours} in-process runs, one per hour {per_hour:.1f} s", flush=True)

        # sensor evaluations, in process
        from dagster import build_sensor_context, instance_for_test

        from orchestration.sensors.kafka_lag import kafka_lag_sensor
        from orchestration.sensors.new_data import new_data_sensor

        res = build_resources()
        with instance_for_test() as test_instance:
            lag_times, data_times = [], []
            cursor = None
            for _ in range(3):
                t = time.perf_counter()
                out = kafka_lag_sensor(build_sensor_context(cursor=cursor, resources={"kafka": res["kafka"], "postgres": res["postgres"]}))
                lag_times.append(time.perf_counter() - t)
                cursor = out.cursor
            cursor = None
            for _ in range(3):
                t = time.perf_counter()
                out = new_data_sensor(build_sensor_context(instance=test_instance, cursor=cursor, resources={"postgres": res["postgres"]}))
                data_times.append(time.perf_counter() - t)
                cursor = out.cursor
        print(f"   sensor evaluations: kafka_lag_sensor median {median(lag_times) * 1000:.0f} ms, "
              f"new_data_sensor median {median(data_times) * 1000:.0f} ms", flush=True)

        # 4. under the daemon
        dhome = prepare_dagster_home(Settings(database_url=pg.create_database("dagster_d")),
                                     database="dagster_d", home=state / "home_daemon")
        denv = {**env, "DAGSTER_HOME": str(dhome)}
        port = free_port()
        for name, command in (
            ("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"]),
            ("daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"]),
        ):
            procs.append(subprocess.Popen(command, cwd=ROOT, env=denv, stdout=open(state / f"{name}.log", "wb"),
                                          stderr=subprocess.STDOUT, start_new_session=True))
        from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

        instance = DagsterInstance.from_config(str(dhome))
        deadline = time.monotonic() + 120 + 90 * args.ticks
        done = []
        while time.monotonic() < deadline:
            runs = instance.get_runs(filters=RunsFilter(tags={"dagster/schedule_name": "refresh_every_minute"},
                                                        statuses=[DagsterRunStatus.SUCCESS]))
            if len(runs) >= args.ticks:
                done = runs[: args.ticks]
                break
            time.sleep(5)
        queue, duration, tick_to_done = [], [], []
        for run in done:
            record = instance.get_run_record_by_id(run.run_id)
            stats = instance.get_run_stats(run.run_id)
            # run key "minute:<partition>:<tick, minute precision>" (orchestration/schedules.py)
            tick = datetime.strptime(run.tags["dagster/run_key"].rsplit(":", 2)[-2] + ":"
                                     + run.tags["dagster/run_key"].rsplit(":", 1)[-1], "%Y-%m-%dT%H:%M")
            tick = tick.replace(tzinfo=timezone.utc)
            queue.append(stats.start_time - record.create_timestamp.timestamp())
            duration.append(stats.end_time - stats.start_time)
            tick_to_done.append(stats.end_time - tick.timestamp())
        print(f"4. minute schedule under the daemon ({len(done)} runs): queue delay median {median(queue):.1f} s, "
              f"run duration median {median(duration):.1f} s, tick -> reports written median "
              f"{median(tick_to_done):.1f} s (max {max(tick_to_done, default=float('nan')):.1f} s)", flush=True)
        instance.dispose()
    finally:
        for proc in procs:
            stop_group(proc)
        from orchestration.reports.common import close_sessions

        close_sessions()  # before the server: a live client retries a dead server for minutes
        spark.stop()
        broker.stop()
        pg.stop()
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

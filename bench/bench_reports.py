"""Benchmark: one minute's e-commerce report refresh, three ways.

Seeds 1 M e-commerce events (plus their transactions) across a few hours into
its own embedded PostgreSQL with ``generate_series`` (no Kafka involved), then
times the refresh of one minute window:

(a) through a warm Spark Connect server (after a few warm-up refreshes);
(b) through a cold classic local Spark session (``local[2]``; a new Python
    process + JVM, the cost of "a JVM per run");
(c) plain SQL doing the same aggregation (``sql_reference.sql_ecommerce_aggregates``,
    no write).

Also: the Connect server's start-up time and an hour (a Dagster partition)
through the warm server. Prints the figures (a script, not a test)::

    .venv/bin/python bench/bench_reports.py [--events 1000000] [--hours 4] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seed_sql import ECOMMERCE_SEED_SQL  # noqa: E402 (bench/ is the script's folder)

BASE = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)

SEED_SQL = ECOMMERCE_SEED_SQL + "ANALYZE;\n"


def cold_child(database_url: str, start: str, end: str) -> None:
    """Runs in a fresh process: classic local[2] session (new JVM) + one refresh."""
    t0 = time.perf_counter()
    from pyspark.sql import SparkSession

    from salespulse.settings import Settings, get_settings

    settings = Settings(database_url=database_url)
    spark = (SparkSession.builder.master("local[2]").appName("bench-cold")
             .config("spark.jars", get_settings().jdbc_jar)
             .config("spark.sql.shuffle.partitions", "4")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.driver.memory", "1g")
             .getOrCreate())
    t1 = time.perf_counter()
    from orchestration.reports import refresh_ecommerce_reports

    result = refresh_ecommerce_reports(spark, settings, datetime.fromisoformat(start), datetime.fromisoformat(end))
    t2 = time.perf_counter()
    spark.stop()
    print(json.dumps({"session_seconds": t1 - t0, "refresh_seconds": t2 - t1, "total_seconds": t2 - t0,
                      "rows": result.rows}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmups", type=int, default=3)
    parser.add_argument("--cold-child", nargs=3, metavar=("URL", "START", "END"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold_child:
        cold_child(*args.cold_child)
        return 0

    import psycopg2

    from orchestration.reports import refresh_ecommerce_reports, spark_session
    from orchestration.reports.common import close_sessions
    from orchestration.reports.sql_reference import sql_ecommerce_aggregates
    from salespulse.db import migrate
    from salespulse.settings import Settings, get_settings
    from salespulse.stack.postgres import EmbeddedPostgres
    from salespulse.stack.spark import SparkConnectServer
    from tests.conftest import free_port

    figures: dict[str, object] = {"events": args.events, "hours": args.hours}
    with tempfile.TemporaryDirectory(prefix="salespulse-bench-reports-", dir="/var/tmp") as tmp:
        state = Path(tmp)
        state.chmod(0o755)
        pg = EmbeddedPostgres(state, free_port()).start()
        server = None
        try:
            url = pg.create_database("bench_reports")
            os.environ["DATABASE_URL"] = url
            get_settings.cache_clear()
            settings = Settings(database_url=url)
            migrate(settings)

            t = time.perf_counter()
            step = int(args.hours * 3600 * 1_000_000 / args.events)
            with psycopg2.connect(url) as conn, conn.cursor() as cur:
                cur.execute(SEED_SQL, {"base": BASE, "step": step, "n": args.events})
            with psycopg2.connect(url) as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM events")
                n_events = cur.fetchone()[0]
                cur.execute("SELECT count(*) FROM transactions")
                n_tx = cur.fetchone()[0]
            figures["seed_seconds"] = round(time.perf_counter() - t, 1)
            print(f"seeded {n_events} events, {n_tx} transactions over {args.hours} h "
                  f"in {figures['seed_seconds']} s", flush=True)

            minute = lambda k: BASE + timedelta(minutes=k)  # noqa: E731
            minutes = [minute(30 + 7 * k) for k in range(args.runs)]

            # (c) plain SQL, same aggregation, no write
            sql_times = []
            with psycopg2.connect(settings.role_url("salespulse_analytics")) as conn:
                sql_ecommerce_aggregates(conn, minute(10), minute(11))  # warm the cache like (a)
                for m in minutes:
                    t = time.perf_counter()
                    sql_ecommerce_aggregates(conn, m, m + timedelta(minutes=1))
                    sql_times.append(time.perf_counter() - t)
            figures["sql_minute_seconds"] = sql_times

            # (a) warm Spark Connect server
            server = SparkConnectServer(free_port(), master="local[2]", log_dir=state / "spark")
            server.start(timeout=300)
            figures["connect_startup_seconds"] = round(server.startup_seconds, 1)
            print(f"spark connect server ready in {server.startup_seconds:.1f} s", flush=True)
            spark = spark_session(server.remote)
            t = time.perf_counter()
            warm_up = refresh_ecommerce_reports(spark, settings, minute(10), minute(11))
            figures["first_refresh_seconds"] = round(time.perf_counter() - t, 2)
            for k in range(args.warmups - 1):  # JIT: a few more before timing
                refresh_ecommerce_reports(spark, settings, minute(11 + k), minute(12 + k))
            import orchestration.reports.common as common

            warm, spark_part, source, sequential = [], [], [], []
            for m in minutes:
                common.PARALLEL_JOBS = True
                t = time.perf_counter()
                result = refresh_ecommerce_reports(spark, settings, m, m + timedelta(minutes=1))
                warm.append(time.perf_counter() - t)
                spark_part.append(result.spark_seconds)
                source.append(result.source_rows)
                common.PARALLEL_JOBS = False
                t = time.perf_counter()
                refresh_ecommerce_reports(spark, settings, m, m + timedelta(minutes=1))
                sequential.append(time.perf_counter() - t)
            common.PARALLEL_JOBS = True
            figures["warm_minute_sequential_seconds"] = sequential
            figures["warm_minute_seconds"] = warm
            figures["warm_minute_spark_seconds"] = spark_part
            figures["rows_per_minute"] = source
            figures["warm_up_rows"] = warm_up.rows
            t = time.perf_counter()
            hour = refresh_ecommerce_reports(spark, settings, minute(60), minute(120))
            figures["warm_hour_seconds"] = round(time.perf_counter() - t, 2)
            figures["warm_hour_source_rows"] = hour.source_rows
            figures["warm_hour_rows"] = hour.rows
            close_sessions()
            server.stop()
            server = None

            # (b) cold classic local session in a new process (new JVM)
            env = dict(os.environ)
            env.pop("SPARK_REMOTE", None)
            env.pop("SPARK_CONNECT_MODE_ENABLED", None)  # set by pyspark once a Connect session exists
            env.update({"JAVA_HOME": settings.java_home, "SPARK_LOCAL_IP": "127.0.0.1", "TZ": "UTC"})
            cold = []
            for m in minutes[:2]:
                t = time.perf_counter()
                out = subprocess.run([sys.executable, __file__, "--cold-child", url, m.isoformat(),
                                      (m + timedelta(minutes=1)).isoformat()],
                                     env=env, cwd=state, capture_output=True, text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"cold child failed ({out.returncode}):\n{out.stderr[-4000:]}")
                wall = time.perf_counter() - t
                child = json.loads(out.stdout.strip().splitlines()[-1])
                child["process_seconds"] = wall
                cold.append(child)
            figures["cold"] = cold
        finally:
            close_sessions()
            if server is not None:
                server.stop()
            pg.stop()

    def stats(xs):
        return f"median {statistics.median(xs):.3f} s (min {min(xs):.3f}, max {max(xs):.3f}, n={len(xs)})"

    print()
    print(f"== one minute's e-commerce report refresh, {args.events} events over {args.hours} h "
          f"(~{statistics.median(figures['rows_per_minute']):.0f} source rows per minute)")
    print(f"spark connect server start-up:  {figures['connect_startup_seconds']} s")
    print(f"first refresh on a fresh server: {figures['first_refresh_seconds']} s")
    print(f"(a) warm Spark Connect refresh:  {stats(figures['warm_minute_seconds'])}")
    print(f"      of which Spark (read+agg+collect): {stats(figures['warm_minute_spark_seconds'])}")
    print(f"    same, the two Spark jobs run one after the other: {stats(figures['warm_minute_sequential_seconds'])}")
    with open("/proc/loadavg") as f:
        print(f"load average at the end: {f.read().split()[:3]} (2 cores shared with other work)")
    print(f"(b) cold local session:          " + ", ".join(
        f"process {c['process_seconds']:.1f} s (session {c['session_seconds']:.1f} s + refresh "
        f"{c['refresh_seconds']:.1f} s)" for c in figures["cold"]))
    print(f"(c) plain SQL aggregation:       {stats(figures['sql_minute_seconds'])}")
    print(f"warm refresh of one hour ({figures['warm_hour_source_rows']} source rows, "
          f"{sum(figures['warm_hour_rows'].values())} report rows): {figures['warm_hour_seconds']} s")
    print(json.dumps({k: v for k, v in figures.items()}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""History benchmark (a script, not a test): does a minute's cost stay flat as
history grows?

For each size it builds a fresh database on its own PostgreSQL (state under
/var/tmp, removed at the end) and seeds ``size`` e-commerce events with
bench_dashboard's set-based SQL (plus their transactions, restaurant orders
at a twentieth of the events, every minute report table and pipeline
records), at a constant rate (``--events-per-hour``, default 100,000): a
bigger size is a *longer* history of the same shop, not a busier one. Rows
carry ``ingested_at`` = their event time (history ingested as it happened).
Then it measures:

0. **The reference**: the three all-time views computed as first defined
   (``sql/003_materialized_views.sql``: every event and transaction read),
   timed on the same database, to show what the per-day aggregates save.
1. **Database size per million events** (``pg_database_size`` after
   ``VACUUM ANALYZE``).
2. **One minute's refresh**, the work the minute schedule starts: one
   minute of new events, transactions and orders is inserted (ingested now),
   then, timed, the real Dagster jobs run in process on a warm Spark Connect
   server: ``refresh_reports_job`` for the current hour (both domains' Spark
   reports, the daily aggregates and the three views, the partition's window
   checks) and ``pipeline_checks_job`` (reconciliation and alerts), the jobs
   the schedules run every minute. Best of ``--refresh-runs``, after one
   unmeasured run that warms Spark and Dagster. The health checks the
   schedules run every five minutes (``pipeline_health_checks_job``) are
   timed too, apart. Their integrity checks look only at what was ingested
   since their previous evaluation (``orchestration/increments.py``); the
   reference for them is the whole-table integrity queries they ran before
   (``salespulse audit``'s), timed on the same database. The seeded history
   has an ingest ledger too: one range per partition (three) every ten
   seconds, recorded at its time.
3. **Dashboard p95 at 100 clients**: gunicorn as bench_dashboard serves it,
   wrk over bench_dashboard's paths for ``--duration`` s, twice: 100
   connections that each wait ``--think-ms`` (200) between a response and
   their next request (``dashboard_p95_ms``: 100 users, each far busier than
   the dashboard page, which polls every 5 s), and a closed loop without
   think time (``dashboard_p95_closed_ms``: saturation of the two cores).

Prints a table and, last, one JSON line: ``sizes``, ``minute_refresh_s``,
``refresh_ratio_largest_to_smallest``, ``dashboard_p95_ms``,
``db_mb_per_million_events`` (and per-step seconds, load averages).

    .venv/bin/python bench/bench_history.py --sizes 1000000,10000000,50000000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402

from bench.bench_dashboard import free_port, load_wrk, seed, start_gunicorn  # noqa: E402
from salespulse.db import migrate  # noqa: E402
from salespulse.settings import Settings, get_settings  # noqa: E402
from salespulse.stack.postgres import EmbeddedPostgres  # noqa: E402
from salespulse.stack.spark import SparkConnectServer  # noqa: E402

#: the jobs the schedules run every minute (orchestration/schedules.py), and
#: the health checks they run every five minutes (timed apart: not in the minute)
MINUTE_JOBS = ("refresh_reports_job", "pipeline_checks_job")
FIVE_MINUTE_JOBS = ("pipeline_health_checks_job",)

#: Dagster's console logger at WARNING: the figures, not every step event
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

#: one minute of new rows, ingested now, as the consumer writes them: events
#: (every 20th a purchase) with their keys and transactions, restaurant orders
#: with their keys and items
NEW_MINUTE_SQL = """
WITH new AS (
    INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, product_id)
    SELECT gen_random_uuid(), CASE WHEN i %% 20 = 0 THEN 'purchase' ELSE 'page_view' END,
           now() - (i::float8 / %(n)s) * interval '1 minute', 'U' || (i * 7919) %% 50000, 'S-new-' || (i / 20),
           'P' || lpad((i %% 200)::text, 3, '0')
    FROM generate_series(1, %(n)s) i
    RETURNING id, event_id, event_type, product_id, "timestamp"
), keys AS (
    INSERT INTO event_keys (event_id, "timestamp") SELECT event_id, "timestamp" FROM new)
INSERT INTO transactions (transaction_id, event_id, product_id, quantity, total_amount, payment_method, "timestamp")
SELECT 'T-new-' || new.id, new.event_id, new.product_id, 1, p.price, 'pix', new."timestamp"
FROM new JOIN products p USING (product_id) WHERE new.event_type = 'purchase';
WITH new AS (
    INSERT INTO orders (order_id, "timestamp", restaurant_id, table_number, channel, total_amount, payment_method,
                        item_count)
    SELECT gen_random_uuid(), now() - (i::float8 / %(orders)s) * interval '1 minute', 'R1', NULL, 'takeaway', 20,
           'cash', 1
    FROM generate_series(1, %(orders)s) i
    RETURNING order_id, "timestamp"
), keys AS (
    INSERT INTO order_keys (order_id, "timestamp") SELECT order_id, "timestamp" FROM new)
INSERT INTO order_items (order_id, line_number, item_id, name, category, quantity, unit_price, line_total, "timestamp")
SELECT order_id, 0, 'item1', 'Item 1', 'Mains', 1, 20, 20, "timestamp" FROM new"""


def all_history_views(url: str) -> float:
    """The reference: seconds to compute the three views as first defined
    (sql/003_materialized_views.sql, reading every event and transaction)."""
    text = (ROOT / "sql" / "003_materialized_views.sql").read_text()
    queries = re.findall(r"CREATE MATERIALIZED VIEW \w+ AS\s+(.*?);", text, flags=re.S)
    assert len(queries) == 3, "sql/003 no longer holds the three view definitions"
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        for query in queries:
            cur.execute(f"SELECT count(*) FROM ({query}) v")
        return time.perf_counter() - started


#: the seeded history's ingest ledger: a range per partition every ten seconds
#: (sql/130: a stream per partition, its compact ranges)
LEDGER_SQL = """
INSERT INTO ingest_streams (consumer_group, topic, topic_incarnation, "partition")
SELECT 'salespulse-ingest', 'ecommerce.events', 'bench', p FROM generate_series(0, 2) p;
INSERT INTO ingest_ledger_ranges (stream, first_offset, last_offset, stored, duplicates, dead_lettered, recorded_at)
SELECT s.id, b * 10, b * 10 + 9, 10, 0, 0, now() - interval '1 minute' - (%(batches)s - b) * interval '10 seconds'
FROM ingest_streams s, generate_series(0, %(batches)s - 1) b
WHERE s.topic_incarnation = 'bench'"""


def whole_table_integrity(url: str) -> float:
    """The reference for the health checks: seconds for the whole-table
    integrity queries (``salespulse audit``: every ledger range, every raw row),
    which the five-minute checks ran before they became incremental."""
    from salespulse.integrity import consistency_violations, ledger_gaps

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        ledger_gaps(cur)
        consistency_violations(cur)
        return time.perf_counter() - started


def minute_refresh(url: str, remote: str, events_per_minute: int) -> dict[str, float]:
    """Insert one minute of new rows, then run the minute's jobs in process; seconds per job."""
    from dagster import DagsterInstance

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(NEW_MINUTE_SQL, {"n": events_per_minute, "orders": max(1, events_per_minute // 20)})
    os.environ.update(DATABASE_URL=url, SPARK_REMOTE=remote)
    get_settings.cache_clear()
    for name in [m for m in sys.modules if m == "orchestration.definitions"]:
        del sys.modules[name]  # resources are bound from the environment at import
    from orchestration.definitions import defs

    present = {job.name for job in defs.get_repository_def().get_all_jobs()}
    hour = datetime.now(timezone.utc).strftime("%Y-%m-%d-%H:00")
    seconds: dict[str, float] = {}
    with DagsterInstance.ephemeral() as instance:
        for name in [j for j in (*MINUTE_JOBS, *FIVE_MINUTE_JOBS) if j in present]:
            job = defs.resolve_job_def(name)
            started = time.perf_counter()
            result = job.execute_in_process(instance=instance, raise_on_error=False, run_config=QUIET,
                                            partition_key=hour if job.partitions_def else None)
            seconds[name] = time.perf_counter() - started
            if not result.success:
                failed = [e.message for e in result.all_events if e.is_failure][:3]
                raise RuntimeError(f"{name} failed: {failed}")
    return seconds


def measure(pg: EmbeddedPostgres, server: SparkConnectServer, size: int, args) -> dict:
    hours = max(1, round(size / args.events_per_hour))
    url = pg.create_database(f"history_{size}")
    migrate(Settings(database_url=url))
    print(f"\n== {size:,} events over {hours} h (ending now)", flush=True)
    started = time.perf_counter()
    seed(url, size, size // 20, hours)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(LEDGER_SQL, {"batches": hours * 360})
        cur.execute("ANALYZE ingest_ledger_ranges, ingest_streams")
    seed_s = time.perf_counter() - started
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database())")
        db_bytes = cur.fetchone()[0]
    legacy_s = all_history_views(url)
    print(f"   reference: the three views as first defined (all history) computed in {legacy_s:.2f}s", flush=True)
    integrity_s = whole_table_integrity(url)
    print(f"   reference: whole-table integrity queries (salespulse audit) in {integrity_s:.2f}s", flush=True)
    if args.warm_up:  # the first Spark and Dagster run of the process pays for class loading and imports
        minute_refresh(url, server.remote, args.events_per_hour // 60)
        args.warm_up = False
    runs = [minute_refresh(url, server.remote, args.events_per_hour // 60) for _ in range(args.refresh_runs)]
    minute = lambda r: sum(v for k, v in r.items() if k in MINUTE_JOBS)  # noqa: E731
    best = min(runs, key=minute)
    five_minute = min(sum(v for k, v in r.items() if k in FIVE_MINUTE_JOBS) for r in runs)
    health = [round(sum(v for k, v in r.items() if k in FIVE_MINUTE_JOBS), 2) for r in runs]
    print(f"   minute refresh runs (s): {[round(minute(r), 2) for r in runs]}; best by job: "
          f"{ {k: round(v, 2) for k, v in best.items()} }; five-minute health checks {health} (best "
          f"{five_minute:.2f}s)", flush=True)

    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "DASHBOARD_RATE_LIMIT": "100000000/minute", "DASHBOARD_CACHE_TTL": "2",
           "DASHBOARD_POOL_SIZE": "8", "DASHBOARD_TOKEN": "", "CORS_ORIGINS": ""}
    env.pop("DASHBOARD_DATABASE_URL", None)
    gunicorn = start_gunicorn(port, env, 2, 8)
    try:
        load_wrk(port, 20, 3)  # warm-up: pools, caches, plans
        web = load_wrk(port, args.clients, args.duration, think_ms=args.think_ms)
        closed = load_wrk(port, args.clients, args.duration)
    finally:
        os.killpg(gunicorn.pid, signal.SIGTERM)
        try:
            gunicorn.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(gunicorn.pid, signal.SIGKILL)
    for name, load in (("paced", web), ("closed loop", closed)):
        print(f"   dashboard ({args.clients} clients, wrk, {name}): p50 {load['p50']:.1f} ms, p95 {load['p95']:.1f} ms, "
              f"{load['rps']:.0f} req/s, {load['errors']} errors", flush=True)
    admin = psycopg2.connect(pg.admin_url)
    admin.autocommit = True
    admin.cursor().execute(f"DROP DATABASE history_{size} WITH (FORCE)")  # the disk for the next size
    admin.close()
    return {"size": size, "hours": hours, "seed_s": seed_s, "db_mb": db_bytes / 2**20,
            "db_mb_per_million": db_bytes / 2**20 / (size / 1e6), "minute_refresh_s": minute(best),
            "five_minute_checks_s": five_minute, "minute_refresh_by_job_s": best, "all_history_views_s": legacy_s,
            "whole_table_integrity_s": integrity_s, "dashboard_p95_ms": web["p95"], "dashboard_p50_ms": web["p50"],
            "dashboard_errors": web["errors"] + closed["errors"], "dashboard_p95_closed_ms": closed["p95"],
            "dashboard_rps": web["rps"], "dashboard_rps_closed": closed["rps"], "loadavg": os.getloadavg()[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000,50000000", help="comma-separated event counts")
    ap.add_argument("--events-per-hour", type=int, default=100_000, help="the seeded shop's constant rate")
    ap.add_argument("--refresh-runs", type=int, default=3, help="minute refreshes per size (best is kept)")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--think-ms", type=int, default=200, help="each dashboard client's wait between requests")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of dashboard load per size")
    args = ap.parse_args()
    args.warm_up = True
    sizes = [int(s) for s in args.sizes.split(",") if s]

    state = Path(tempfile.mkdtemp(prefix="salespulse-bench-history-", dir="/var/tmp"))
    state.chmod(0o755)
    pg = EmbeddedPostgres(state, free_port())
    server = SparkConnectServer(free_port(), master="local[2]", log_dir=state / "spark")
    results = []
    try:
        pg.start()
        server.start(timeout=300)
        for size in sizes:
            results.append(measure(pg, server, size, args))
    finally:
        from orchestration.reports.common import close_sessions

        close_sessions()  # a cached client session left open keeps the process from exiting
        server.stop()
        pg.stop()
        shutil.rmtree(state, ignore_errors=True)

    print(f"\n{'events':>12} {'hours':>6} {'seed s':>8} {'DB MB':>9} {'MB/M ev':>8} {'minute s':>9} "
          f"{'old views s':>12} {'health s':>9} {'audit s':>8} {'dash p95 ms':>12} {'closed p95':>11} {'load':>5}")
    for r in results:
        print(f"{r['size']:>12,} {r['hours']:>6} {r['seed_s']:>8.0f} {r['db_mb']:>9.0f} {r['db_mb_per_million']:>8.0f} "
              f"{r['minute_refresh_s']:>9.2f} {r['all_history_views_s']:>12.2f} {r['five_minute_checks_s']:>9.2f} "
              f"{r['whole_table_integrity_s']:>8.2f} {r['dashboard_p95_ms']:>12.1f} {r['dashboard_p95_closed_ms']:>11.1f} "
              f"{r['loadavg']:>5.1f}")
    summary = {
        "sizes": sizes,
        "minute_refresh_s": [round(r["minute_refresh_s"], 2) for r in results],
        "refresh_ratio_largest_to_smallest": round(results[-1]["minute_refresh_s"] / results[0]["minute_refresh_s"], 2),
        "dashboard_p95_ms": [round(r["dashboard_p95_ms"], 1) for r in results],
        "dashboard_p95_closed_ms": [round(r["dashboard_p95_closed_ms"], 1) for r in results],
        "dashboard_rps": [round(r["dashboard_rps"]) for r in results],
        "dashboard_errors": [r["dashboard_errors"] for r in results],
        "db_mb_per_million_events": [round(r["db_mb_per_million"], 1) for r in results],
        "minute_refresh_by_job_s": [{k: round(v, 2) for k, v in r["minute_refresh_by_job_s"].items()} for r in results],
        "all_history_views_s": [round(r["all_history_views_s"], 2) for r in results],
        "five_minute_checks_s": [round(r["five_minute_checks_s"], 2) for r in results],
        "whole_table_integrity_s": [round(r["whole_table_integrity_s"], 2) for r in results],
        "loadavg": [round(r["loadavg"], 2) for r in results],
    }
    print(json.dumps(summary), flush=True)  # the last line: one JSON object
    return 0


if __name__ == "__main__":
    sys.exit(main())

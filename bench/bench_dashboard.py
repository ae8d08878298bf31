"""Dashboard load benchmark (a script, not a test).

Starts its own EmbeddedPostgres on a free port, seeds 5 M e-commerce events
(plus their transactions, restaurant orders, every minute report table for the
same span, pipeline records) with generate_series SQL, refreshes the
materialized views, serves the dashboard with gunicorn (gthread), then drives N
concurrent keep-alive clients on loopback across every API endpoint for a
bounded time and prints p50/p95/p99 latency and requests/s.

    .venv/bin/python bench/bench_dashboard.py                # 5 M events, 100 clients, 30 s
    .venv/bin/python bench/bench_dashboard.py --events 500000 --duration 10 --cache-ttl 0

Modes: ``closed`` (Python threads; each client sends its next request as soon
as the last one answered: saturation), ``paced`` (each client waits --think-ms
between requests, like a dashboard polling), ``wrk`` (closed loop driven by
wrk, a C load generator, so the client takes little CPU from the server; apt
package ``wrk``, in scripts/setup.sh), ``serial`` (one client: the cost of a
request without queueing). All run by default, for each --cache-ttl value.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from salespulse.daily_aggregates import rebuild_views  # noqa: E402
from salespulse.db import migrate  # noqa: E402
from salespulse.settings import Settings  # noqa: E402
from salespulse.stack.postgres import EmbeddedPostgres  # noqa: E402

PATHS = [
    # what an open e-commerce page polls every 5 s (range=1h), weighted like a page
    "/api/metrics/summary?range=1h", "/api/metrics/timeline?range=1h", "/api/metrics/top-products?range=1h&limit=10",
    "/api/metrics/by-category?range=1h", "/api/metrics/event-types?range=1h", "/api/metrics/realtime",
    "/api/restaurant/summary?range=1h", "/api/restaurant/timeline?range=1h", "/api/restaurant/top-items?range=1h&limit=10",
    "/api/restaurant/by-category?range=1h", "/api/restaurant/channels?range=1h", "/api/restaurant/peak-hours?range=7d",
    "/api/restaurant/realtime", "/api/pipeline/status?range=1h&limit=20",
    # wider windows and the all-time views
    "/api/metrics/summary?range=24h", "/api/metrics/timeline?range=24h", "/api/metrics/top-products?range=24h&limit=10",
    "/api/metrics/summary?range=all", "/api/metrics/top-products?range=all", "/api/metrics/by-category?range=all",
    "/api/restaurant/summary?range=24h", "/api/restaurant/top-items?range=6h", "/health",
]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(url: str, events: int, orders: int, hours: int) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    cur = conn.cursor()
    span = f"{hours} hours"

    def run(label, sql, params=None):
        t = time.monotonic()
        cur.execute(sql, params)
        print(f"  {label:<38} {time.monotonic() - t:6.1f} s", flush=True)

    cur.execute("SET maintenance_work_mem = '256MB'; SET work_mem = '64MB'")
    run("products (200)", """
        INSERT INTO products (product_id, product_name, category, price)
        SELECT 'P' || lpad(i::text, 3, '0'), 'Product ' || i,
               (ARRAY['Electronics','Books','Clothing','Home','Sports','Toys','Garden','Beauty'])[1 + i % 8],
               (5 + (i * 37) % 500)::numeric(12, 2)
        FROM generate_series(0, 199) i""")
    # bulk load: build the events indexes after the insert (same definitions as sql/100)
    cur.execute("DROP INDEX idx_events_timestamp; DROP INDEX idx_events_user_id")
    run(f"events ({events:,})", """
        INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, product_id, search_query,
                            ingested_at)
        SELECT md5(i::text)::uuid,
               CASE WHEN i % 20 = 0 THEN 'purchase' WHEN i % 20 IN (1, 2) THEN 'add_to_cart'
                    WHEN i % 20 = 3 THEN 'remove_from_cart' WHEN i % 20 IN (4, 5, 6) THEN 'search'
                    ELSE 'page_view' END,
               now() - (i::float8 / %(n)s) * %(span)s::interval,
               'U' || (i::bigint * 7919) %% 50000, 'S' || (i / 20),
               CASE WHEN i % 20 IN (4, 5, 6) THEN NULL ELSE 'P' || lpad(((i / 7) %% 200)::text, 3, '0') END,
               CASE WHEN i % 20 IN (4, 5, 6) THEN 'query ' || i % 97 END,
               now() - (i::float8 / %(n)s) * %(span)s::interval  -- history ingested as it happened
        FROM generate_series(1, %(n)s) i ORDER BY i DESC""".replace("i % 20", "i %% 20").replace("i % 200", "i %% 200")
        .replace("i % 97", "i %% 97"), {"n": events, "span": span})
    run("events keys and indexes", """
        INSERT INTO event_keys (event_id, "timestamp") SELECT event_id, "timestamp" FROM events;
        CREATE INDEX idx_events_timestamp ON events ("timestamp");
        CREATE INDEX idx_events_user_id ON events (user_id)""")
    run("transactions (purchases)", """
        INSERT INTO transactions (transaction_id, event_id, product_id, quantity, total_amount, payment_method, "timestamp")
        SELECT 'T' || e.id, e.event_id, e.product_id, 1 + e.id % 3, p.price * (1 + e.id % 3),
               (ARRAY['credit_card','debit_card','pix','paypal'])[1 + e.id % 4], e."timestamp"
        FROM events e JOIN products p USING (product_id) WHERE e.event_type = 'purchase'""")
    run(f"orders ({orders:,})", """
        INSERT INTO orders (order_id, "timestamp", restaurant_id, table_number, channel, total_amount, payment_method, item_count)
        SELECT md5('o' || i)::uuid, now() - (i::float8 / %(n)s) * %(span)s::interval, 'R' || i %% 5,
               CASE WHEN i %% 3 = 0 THEN 1 + i %% 30 END,
               (ARRAY['dine_in','takeaway','delivery'])[1 + i %% 3], (10 + (i * 13) %% 90)::numeric(12, 2),
               (ARRAY['cash','card','pix'])[1 + i %% 3], 1 + i %% 5
        FROM generate_series(1, %(n)s) i;
        INSERT INTO order_keys (order_id, "timestamp") SELECT order_id, "timestamp" FROM orders;
        -- one line per order that agrees with it (raw_tables_consistent holds)
        INSERT INTO order_items (order_id, line_number, item_id, name, category, quantity, unit_price, line_total,
                                 "timestamp")
        SELECT order_id, 0, 'item' || (id %% 30), 'Item ' || (id %% 30), 'Mains', item_count,
               round(total_amount / item_count, 2), total_amount, "timestamp" FROM orders""",
        {"n": orders, "span": span})
    run("report_ecommerce_overview_minute", """
        INSERT INTO report_ecommerce_overview_minute
        SELECT w, count(*), count(*) FILTER (WHERE event_type = 'page_view'), count(*) FILTER (WHERE event_type = 'search'),
               count(*) FILTER (WHERE event_type = 'add_to_cart'), count(*) FILTER (WHERE event_type = 'remove_from_cart'),
               count(*) FILTER (WHERE event_type = 'purchase'), count(DISTINCT user_id), count(DISTINCT session_id),
               count(DISTINCT session_id) FILTER (WHERE event_type = 'page_view'),
               count(DISTINCT session_id) FILTER (WHERE event_type = 'add_to_cart'),
               count(DISTINCT session_id) FILTER (WHERE event_type = 'purchase'),
               0, 0, 0, 0, 0, now()
        FROM (SELECT date_trunc('minute', "timestamp") AS w, event_type, user_id, session_id FROM events) e
        GROUP BY w""")
    run("  ... revenue, units, rates", """
        UPDATE report_ecommerce_overview_minute r SET revenue = t.revenue, units = t.units,
               avg_order_value = round(t.revenue / greatest(t.orders, 1), 2),
               conversion_rate = r.sessions_purchased::float8 / greatest(r.sessions_viewed, 1),
               cart_abandonment_rate = greatest(r.sessions_carted - r.sessions_purchased, 0)::float8 / greatest(r.sessions_carted, 1)
        FROM (SELECT date_trunc('minute', "timestamp") AS w, sum(total_amount) AS revenue, sum(quantity) AS units,
                     count(*) AS orders FROM transactions GROUP BY 1) t
        WHERE r.window_start = t.w""")
    run("report_ecommerce_category_minute", """
        INSERT INTO report_ecommerce_category_minute
        SELECT date_trunc('minute', t."timestamp"), p.category, sum(t.total_amount), sum(t.quantity), count(*)
        FROM transactions t JOIN products p USING (product_id) GROUP BY 1, 2""")
    run("report_ecommerce_product_minute", """
        INSERT INTO report_ecommerce_product_minute
        SELECT date_trunc('minute', t."timestamp"), p.product_id, p.product_name, p.category,
               sum(t.total_amount), sum(t.quantity), count(*)
        FROM transactions t JOIN products p USING (product_id) GROUP BY 1, 2, 3, 4""")
    run("report_restaurant_overview_minute", """
        INSERT INTO report_restaurant_overview_minute
        SELECT date_trunc('minute', "timestamp"), count(*), sum(item_count), sum(total_amount),
               round(sum(total_amount) / count(*), 2), now()
        FROM orders GROUP BY 1""")
    run("report_restaurant_channel_minute", """
        INSERT INTO report_restaurant_channel_minute
        SELECT date_trunc('minute', "timestamp"), channel, count(*), sum(total_amount), round(sum(total_amount) / count(*), 2)
        FROM orders GROUP BY 1, 2""")
    run("report_restaurant_item/category_minute", """
        INSERT INTO report_restaurant_item_minute
        SELECT window_start, 'item' || k, 'Item ' || k,
               (ARRAY['Mains','Starters','Drinks','Desserts','Sides'])[1 + k % 5],
               1 + (k + orders) % 7, ((1 + (k + orders) % 7) * (4 + k))::numeric(14, 2), 1 + (k + orders) % 4
        FROM report_restaurant_overview_minute, generate_series(0, 29) k;
        INSERT INTO report_restaurant_category_minute
        SELECT window_start, category, sum(quantity), sum(revenue), sum(orders)
        FROM report_restaurant_item_minute GROUP BY 1, 2""")
    run("pipeline records", """
        INSERT INTO pipeline_observations (observed_at, topic, high_watermark, committed, lag, messages_per_s)
        SELECT now() - s * interval '30 seconds', t, 1000000 - s, 1000000 - s - (s %% 50), s %% 50, 50 + s %% 20
        FROM generate_series(0, %(obs)s) s, unnest(ARRAY['ecommerce.events','restaurant.orders']) t;
        INSERT INTO dead_letters (topic, "partition", "offset", key, payload, payload_sha256, error, received_at)
        SELECT 'ecommerce.events', i %% 6, i, 'k' || i, convert_to('{"bad": ' || i || '}', 'UTF8'), md5(i::text) || md5(i::text),
               (ARRAY['invalid event_type','missing field: user_id','payload is not valid JSON'])[1 + i %% 3],
               now() - (i::float8 / 5000) * %(span)s::interval
        FROM generate_series(1, 5000) i;
        INSERT INTO pipeline_runs (run_id, job_name, status, partition, recorded_at)
        SELECT 'run-' || s, 'minute_reports', CASE WHEN s %% 50 = 0 THEN 'FAILURE' ELSE 'SUCCESS' END,
               to_char(now() - s * interval '1 minute', 'YYYY-MM-DD-HH24:MI'), now() - s * interval '1 minute'
        FROM generate_series(0, %(runs)s) s""", {"obs": hours * 120, "runs": hours * 60, "span": span})
    started = time.perf_counter()
    rebuild_views(conn)
    print(f"  daily aggregates rebuilt and views refreshed: {time.perf_counter() - started:.1f}s", flush=True)
    run("VACUUM ANALYZE", "VACUUM ANALYZE")
    cur.execute("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM transactions), (SELECT count(*) FROM orders),"
                " (SELECT count(*) FROM report_ecommerce_overview_minute), (SELECT count(*) FROM report_ecommerce_product_minute),"
                " pg_size_pretty(pg_database_size(current_database()))")
    e, t, o, ov, pm, size = cur.fetchone()
    print(f"  seeded: {e:,} events, {t:,} transactions, {o:,} orders, {ov:,} overview minutes, "
          f"{pm:,} product-minute rows; database {size}", flush=True)
    conn.close()


def start_gunicorn(port: int, env: dict, workers: int, threads: int) -> subprocess.Popen:
    cmd = [str(ROOT / ".venv/bin/gunicorn"), "-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", "gthread",
           "--threads", str(threads), "--backlog", "2048", "--keep-alive", "30", "--log-level", "warning",
           "dashboard:create_app()"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("gunicorn did not become healthy")
        time.sleep(0.2)


def load(port: int, clients: int, duration: float, think_ms: float, seed_: int = 1) -> dict:
    lat: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    stop_at = time.monotonic() + duration
    start_barrier = threading.Barrier(clients + 1)
    lock = threading.Lock()

    def client(i: int) -> None:
        rnd = random.Random(seed_ * 1000 + i)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: dict[str, list[float]] = defaultdict(list)
        bad: dict[str, int] = defaultdict(int)
        start_barrier.wait()
        if think_ms:
            time.sleep(rnd.random() * think_ms / 1000)  # spread the first requests
        while time.monotonic() < stop_at:
            path = rnd.choice(PATHS)
            t0 = time.perf_counter()
            try:
                conn.request("GET", path, headers={"Accept": "application/json"})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                status = 0
            dt = time.perf_counter() - t0
            key = path.split("?")[0]
            if status == 200:
                mine[key].append(dt)
            else:
                bad[f"{key} -> {status}"] += 1
            if think_ms:
                time.sleep(think_ms / 1000)
        conn.close()
        with lock:
            for k, v in mine.items():
                lat[k].extend(v)
            for k, v in bad.items():
                errors[k] += v

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start_barrier.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {"lat": lat, "errors": errors, "elapsed": elapsed}


WRK_LUA = """
local paths = {%s}
local counter = 0
init = function(args) counter = math.random(1, #paths) end
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1], {["Accept"] = "application/json"})
end
%s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %%d %%d %%.3f %%.3f %%.3f %%.3f %%.3f %%d %%d\\n", summary.requests, summary.duration,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    latency.mean / 1000, latency.max / 1000, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def load_wrk(port: int, clients: int, duration: float, threads: int = 2, think_ms: int = 0) -> dict:
    """Load with wrk (C, so the load generator takes little CPU from the server):
    closed loop, or with ``think_ms`` each connection waits that long between
    a response and its next request (the ``paced`` mode's 200 ms think time;
    the dashboard itself polls every 5 s)."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    delay = f"delay = function() return {int(think_ms)} end" if think_ms else ""
    script.write_text(WRK_LUA % (", ".join(f'"{p}"' for p in PATHS), delay))
    try:
        out = subprocess.run(["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{int(duration)}s",
                              "--timeout", "30s", "-s", str(script), f"http://127.0.0.1:{port}"],
                             capture_output=True, text=True, check=True).stdout
    finally:
        script.unlink()
    line = next(l for l in out.splitlines() if l.startswith("WRK "))
    n, us, p50, p95, p99, mean, mx, status_err, sock_err = line.split()[1:]
    mode = f"paced via wrk ({think_ms} ms think time)" if think_ms else "closed via wrk"
    return {"mode": f"{mode} ({clients} connections, {threads} threads)", "ok": int(n) - int(status_err),
            "errors": int(status_err) + int(sock_err), "rps": int(n) / (int(us) / 1e6), "p50": float(p50),
            "p95": float(p95), "p99": float(p99), "mean": float(mean), "max": float(mx)}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] * 1000


def report(name: str, result: dict, per_endpoint: bool) -> dict:
    allv = [v for vs in result["lat"].values() for v in vs]
    n, nerr = len(allv), sum(result["errors"].values())
    summary = {"mode": name, "ok": n, "errors": nerr, "rps": n / result["elapsed"],
               "p50": pct(allv, 50), "p95": pct(allv, 95), "p99": pct(allv, 99), "max": max(allv) * 1000 if allv else 0,
               "mean": statistics.fmean(allv) * 1000 if allv else 0}
    print(f"\n== {name}: {n:,} OK requests, {nerr} errors in {result['elapsed']:.1f} s -> {summary['rps']:.0f} req/s")
    print(f"   latency ms: p50 {summary['p50']:.1f}  p95 {summary['p95']:.1f}  p99 {summary['p99']:.1f}  "
          f"mean {summary['mean']:.1f}  max {summary['max']:.1f}")
    if result["errors"]:
        print("   errors:", dict(result["errors"]))
    if per_endpoint:
        print(f"   {'endpoint':<32} {'n':>7} {'p50':>7} {'p95':>7} {'p99':>7}")
        for k in sorted(result["lat"]):
            v = result["lat"][k]
            print(f"   {k:<32} {len(v):>7} {pct(v, 50):>7.1f} {pct(v, 95):>7.1f} {pct(v, 99):>7.1f}")
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--orders", type=int, default=500_000)
    ap.add_argument("--hours", type=int, default=24, help="span of the seeded data, ending now")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--cache-ttl", type=lambda v: [float(x) for x in v.split(",")], default=[2.0, 0.0],
                    help="DASHBOARD_CACHE_TTL values to run, comma-separated (0 = cache off); default 2,0")
    ap.add_argument("--think-ms", type=float, default=200.0, help="pause between a paced client's requests")
    ap.add_argument("--modes", default="serial,closed,paced,wrk" if shutil.which("wrk") else "serial,closed,paced",
                    help="serial (1 client), closed (Python threads, no think time), paced (Python threads, "
                         "--think-ms), wrk (closed loop with wrk, if installed)")
    args = ap.parse_args()

    state = Path(tempfile.mkdtemp(prefix="salespulse-bench-", dir="/var/tmp"))
    state.chmod(0o755)
    pg = EmbeddedPostgres(state, free_port())
    gunicorn = None
    try:
        t = time.monotonic()
        pg.start()
        url = pg.create_database("bench")
        migrate(Settings(database_url=url))
        print(f"PostgreSQL on port {pg.port}; seeding {args.events:,} events over {args.hours} h ...", flush=True)
        seed(url, args.events, args.orders, args.hours)
        print(f"setup took {time.monotonic() - t:.0f} s", flush=True)

        results = []
        for ttl in args.cache_ttl:
            port = free_port()
            env = {**os.environ, "DATABASE_URL": url, "DASHBOARD_RATE_LIMIT": "100000000/minute",
                   "DASHBOARD_CACHE_TTL": str(ttl), "DASHBOARD_POOL_SIZE": str(args.threads),
                   "DASHBOARD_TOKEN": "", "CORS_ORIGINS": ""}
            env.pop("DASHBOARD_DATABASE_URL", None)
            gunicorn = start_gunicorn(port, env, args.workers, args.threads)
            print(f"\ngunicorn: {args.workers} workers x {args.threads} threads (gthread), cache TTL {ttl} s; "
                  f"{args.clients} clients for {args.duration:.0f} s per mode; {os.cpu_count()} CPUs shared with "
                  f"PostgreSQL and the load generator; load average {os.getloadavg()[0]:.1f}", flush=True)
            load(port, 20, 3.0, 0)  # warm-up: pools, caches, plans
            for mode in args.modes.split(","):
                if mode == "wrk":
                    r = load_wrk(port, args.clients, args.duration)
                    print(f"\n== {r['mode']}: {r['ok']:,} OK requests, {r['errors']} errors -> {r['rps']:.0f} req/s")
                    print(f"   latency ms: p50 {r['p50']:.1f}  p95 {r['p95']:.1f}  p99 {r['p99']:.1f}  "
                          f"mean {r['mean']:.1f}  max {r['max']:.1f}")
                elif mode == "serial":
                    r = report("serial (1 client: per-request cost without queueing)",
                               load(port, 1, min(args.duration, 15.0), 0), per_endpoint=True)
                else:
                    think = 0.0 if mode == "closed" else args.think_ms
                    label = f"{mode} ({args.clients} clients" + (
                        f", {think:.0f} ms think time)" if think else ", no think time)")
                    r = report(label, load(port, args.clients, args.duration, think), per_endpoint=True)
                r["mode"] = f"TTL {ttl:g}s {r['mode']}"
                results.append(r)
            os.killpg(gunicorn.pid, signal.SIGTERM)
            gunicorn.wait(15)
        print("\nSUMMARY")
        for r in results:
            print(f"  {r['mode']:<52} {r['rps']:7.0f} req/s  p50 {r['p50']:6.1f} ms  p95 {r['p95']:6.1f} ms  "
                  f"p99 {r['p99']:6.1f} ms  errors {r['errors']}")
        return 0
    finally:
        if gunicorn is not None and gunicorn.poll() is None:
            os.killpg(gunicorn.pid, signal.SIGTERM)
            try:
                gunicorn.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(gunicorn.pid, signal.SIGKILL)
                gunicorn.wait()
        pg.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

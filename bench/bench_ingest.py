"""Consumer ingestion benchmark (a script, not a test).

Starts its own EmbeddedPostgres + EmbeddedBroker on free ports (state under
/var/tmp, removed at the end), then measures:

1. **Ingest throughput**: pre-loads N e-commerce events (default 200,000, with
   ``python -m services.producer --domain ecommerce --max --count N --seed 1``)
   and times the consumer (``ConsumerService`` with an ``assignment`` over every
   partition and ``stop_at_end``; no group join in the figure) draining them into
   a fresh database, for each batch size asked. Prints events/s and where the
   time goes (Kafka consume vs parse/validate vs DB transaction vs commit).
2. **Latency**: a consumer process (``python -m services.consumer``) in its own
   group; this script sends hand-made events at a steady rate (default 1,000/s),
   stamping each one's send time, then compares it with ``events.ingested_at``
   (the row's insert time inside the batch transaction; the row is visible at
   the COMMIT right after, ~1 ms later). Prints p50/p95/p99/max.

Usage: ``.venv/bin/python bench/bench_ingest.py [--events 200000] [--batch-sizes 1000,5000]
[--rate 1000] [--seconds 20] [--latency-batch-size 100] [--latency-settings 500/10,500/0]``
(``--latency-settings``: max-wait/linger in ms per latency run; linger 0 = fill
to size or max wait)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg2  # noqa: E402
from confluent_kafka import Producer, TopicPartition  # noqa: E402
from prometheus_client import REGISTRY  # noqa: E402

from salespulse.contracts import ECOMMERCE_TOPIC, TOPICS  # noqa: E402
from salespulse.db import migrate  # noqa: E402
from salespulse.kafka import ensure_topics, producer_config  # noqa: E402
from salespulse.settings import Settings  # noqa: E402
from salespulse.stack.broker import EmbeddedBroker  # noqa: E402
from salespulse.stack.postgres import EmbeddedPostgres  # noqa: E402
from services.consumer.app import ConsumerService  # noqa: E402

STAGES = ("parse", "db", "dlq", "commit", "total")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from "state" on


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its live children."""
    tck = os.sysconf("SC_CLK_TCK")
    own = _stat(pid)
    if own is None:
        return 0.0
    total = sum(int(x) for x in own[11:15]) / tck  # utime stime cutime cstime
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and int(st[1]) == pid:
                total += sum(int(x) for x in st[11:13]) / tck
    return total


def stage_sums() -> dict[str, float]:
    return {s: REGISTRY.get_sample_value("salespulse_consumer_batch_seconds_sum", {"stage": s}) or 0.0
            for s in STAGES}


def batches_written() -> float:
    return REGISTRY.get_sample_value("salespulse_consumer_batch_messages_count") or 0.0


def preload(bootstrap: str, count: int) -> tuple[float, str]:
    """Pre-load ``count`` e-commerce events with the producer service (seeded)."""
    started = time.perf_counter()
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, METRICS_PORT="0")
    proc = subprocess.run(
        [sys.executable, "-m", "services.producer", "--domain", "ecommerce", "--max", "--count", str(count),
         "--seed", "1", "--bootstrap", bootstrap, "--metrics-port", "0", "--log-level", "WARNING"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"producer failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - started, "python -m services.producer --max --seed 1"


def topic_end(bootstrap: str) -> int:
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-probe-{uuid.uuid4().hex[:6]}",
                  "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(ECOMMERCE_TOPIC.name, p, 0) for p in range(ECOMMERCE_TOPIC.partitions)])
    n, eof = 0, set()
    while len(eof) < ECOMMERCE_TOPIC.partitions:
        for m in c.consume(10_000, timeout=1.0):
            if m.error():
                eof.add(m.partition())
            else:
                n += 1
    c.close()
    return n


def cpu_split(bootstrap: str, sample: int = 20_000) -> dict:
    """CPU per event of the pure-Python steps, measured alone on a sample of the
    pre-loaded messages: contract validation, and building the COPY rows."""
    from confluent_kafka import Consumer

    from services.consumer.writer import RawMessage, _event_line, parse

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-cpu-{uuid.uuid4().hex[:6]}",
                  "enable.partition.eof": True})
    c.assign([TopicPartition(ECOMMERCE_TOPIC.name, p, 0) for p in range(ECOMMERCE_TOPIC.partitions)])
    raws, eof = [], set()
    t0 = time.process_time()
    while len(raws) < sample and len(eof) < ECOMMERCE_TOPIC.partitions:
        for m in c.consume(min(5000, sample - len(raws)) or 1, timeout=1.0):
            if m.error():
                eof.add(m.partition())
            else:
                raws.append(RawMessage.from_kafka(m))
    consume_cpu = time.process_time() - t0
    c.close()
    t0 = time.process_time()
    parsed = [parse(r) for r in raws]
    parse_cpu = time.process_time() - t0
    t0 = time.process_time()
    for m in parsed:
        _event_line(m.model)
    rows_cpu = time.process_time() - t0
    n = len(raws)
    return {"sample": n, "consume_us": 1e6 * consume_cpu / n, "parse_us": 1e6 * parse_cpu / n,
            "copy_rows_us": 1e6 * rows_cpu / n}


def throughput(pg: EmbeddedPostgres, broker: EmbeddedBroker, batch_size: int, expected: int,
               pipeline: bool = True) -> dict:
    bootstrap = broker.bootstrap
    url = pg.create_database(f"bench_{batch_size}_{uuid.uuid4().hex[:6]}")
    settings = Settings(database_url=url, kafka_bootstrap_servers=bootstrap, metrics_port=0)
    migrate(settings)
    assignment = [TopicPartition(name, p, 0) for name, t in TOPICS.items() for p in range(t.partitions)]
    svc = ConsumerService(settings, group_id=f"bench-{uuid.uuid4().hex[:8]}", assignment=assignment,
                          stop_at_end=True, batch_size=batch_size, max_wait_ms=1000, pipeline=pipeline)
    before, batches_before = stage_sums(), batches_written()
    cpu0, pg0, br0 = time.process_time(), tree_cpu(pg._proc.pid), tree_cpu(broker._proc.pid)
    t0 = time.perf_counter()
    svc.run()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    pg_cpu, broker_cpu = tree_cpu(pg._proc.pid) - pg0, tree_cpu(broker._proc.pid) - br0
    after = stage_sums()
    spent = {s: after[s] - before[s] for s in STAGES}
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM events")
        rows = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM transactions")
        tx = cur.fetchone()[0]
    conn.close()
    return {
        "batch_size": batch_size, "rows": rows, "transactions": tx, "expected": expected,
        "wall_s": wall, "events_per_s": rows / wall, "process_cpu_s": cpu, "postgres_cpu_s": pg_cpu,
        "broker_cpu_s": broker_cpu,
        # what 2 idle cores could do if CPU were the only limit (total CPU of consumer + PG + broker)
        "cpu_bound_events_per_s_2_cores": rows / ((cpu + pg_cpu + broker_cpu) / 2),
        "batches": int(batches_written() - batches_before),
        "parse_s": spent["parse"], "db_s": spent["db"], "dlq_s": spent["dlq"], "commit_s": spent["commit"],
        "consumer_us_per_event": 1e6 * cpu / rows, "postgres_us_per_event": 1e6 * pg_cpu / rows,
        "broker_us_per_event": 1e6 * broker_cpu / rows,
    }


def latency(pg: EmbeddedPostgres, bootstrap: str, state: Path, rate: int, seconds: float, batch_size: int,
            max_wait_ms: int, linger_ms: int) -> dict:
    url = pg.create_database(f"lat_{max_wait_ms}_{linger_ms}_{uuid.uuid4().hex[:6]}")
    migrate(Settings(database_url=url))
    group = f"bench-lat-{uuid.uuid4().hex[:8]}"
    log_path = state / f"consumer-lat-{max_wait_ms}-{linger_ms}.log"
    metrics_port = free_port()
    env = dict(os.environ, DATABASE_URL=url, KAFKA_BOOTSTRAP_SERVERS=bootstrap, METRICS_PORT=str(metrics_port),
               CONSUMER_GROUP=group)
    proc = subprocess.Popen([sys.executable, "-m", "services.consumer", "--batch-size", str(batch_size),
                             "--max-wait-ms", str(max_wait_ms), "--linger-ms", str(linger_ms)], cwd=REPO, env=env,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # the fresh group starts at the earliest offset: wait until it has caught up with
        # everything already in the topics (a warm-up marker event is the last one sent)
        producer = Producer(producer_config(bootstrap))
        marker = {"event_id": str(uuid.uuid4()), "event_type": "search", "timestamp": now_iso(),
                  "user_id": "bench", "session_id": "bench", "search_query": "warm-up"}
        producer.produce(ECOMMERCE_TOPIC.name, json.dumps(marker).encode(), b"bench")
        producer.flush(30)
        wait_rows(url, [marker["event_id"]], 600)
        warm = scrape(metrics_port)

        n = int(rate * seconds)
        sent_at: dict[str, float] = {}
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        start = time.time()
        i = 0
        while i < n:
            due = start + (i / rate)
            while (delay := due - time.time()) > 0:  # poll() returns early on delivery reports
                producer.poll(delay)
            for _ in range(min(per_tick, n - i)):
                eid = str(uuid.uuid4())
                ev = {"event_id": eid, "event_type": "page_view", "timestamp": now_iso(), "user_id": f"u{i % 500}",
                      "session_id": f"s{i % 900}",
                      "product": {"id": f"P{i % 50}", "name": f"Product {i % 50}", "category": "bench",
                                  "price": 9.99}}
                sent_at[eid] = time.time()
                producer.produce(ECOMMERCE_TOPIC.name, json.dumps(ev).encode(), ev["user_id"].encode())
                i += 1
            producer.poll(0)
        send_seconds = time.time() - start
        producer.flush(30)
        wait_rows(url, list(sent_at), 120)
        stages = per_batch(warm, scrape(metrics_port))
        conn = psycopg2.connect(url)
        with conn.cursor() as cur:
            cur.execute("SELECT event_id::text, extract(epoch FROM ingested_at) FROM events "
                        "WHERE event_id = ANY(%s::uuid[])", (list(sent_at),))
            lat_ms = sorted((float(ts) - sent_at[eid]) * 1000 for eid, ts in cur.fetchall())
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    q = statistics.quantiles(lat_ms, n=100)
    return {"rate": rate, "sent": len(sent_at), "achieved_rate": len(sent_at) / send_seconds,
            "batch_size": batch_size, "max_wait_ms": max_wait_ms, "linger_ms": linger_ms,
            "p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98], "max_ms": lat_ms[-1], "mean_ms": statistics.mean(lat_ms),
            **stages}


def scrape(port: int) -> dict[str, float]:
    """Sums and counts of the consumer's batch histograms from its /metrics."""
    import urllib.request

    out = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(("salespulse_consumer_batch_seconds_sum", "salespulse_consumer_batch_seconds_count",
                                "salespulse_consumer_batch_messages_sum", "salespulse_consumer_batch_messages_count")):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
    return out


def per_batch(before: dict, after: dict) -> dict:
    """Mean batch size and mean ms per batch and stage between two scrapes."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = d.get("salespulse_consumer_batch_messages_count", 0.0) or 1.0
    out = {"batches": int(batches), "mean_batch": d.get("salespulse_consumer_batch_messages_sum", 0.0) / batches}
    for stage in STAGES:
        out[f"{stage}_ms_per_batch"] = 1000 * d.get(f'salespulse_consumer_batch_seconds_sum{{stage="{stage}"}}', 0.0) / batches
    return out


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def wait_rows(url: str, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT count(*) FROM events WHERE event_id = ANY(%s::uuid[])", (ids,))
                if cur.fetchone()[0] == len(ids):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rows not visible after {timeout}s")
                time.sleep(0.2)
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description="SalesPulse consumer ingestion benchmark")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch-sizes", default="1000,5000")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--latency-batch-size", type=int, default=100)
    ap.add_argument("--latency-settings", default="500/10,500/0",
                    help="comma-separated max-wait/linger (ms) pairs to measure latency with")
    ap.add_argument("--modes", default="pipelined",
                    help="comma-separated: pipelined (default) and/or sync (write each batch before consuming the next), for A/B runs")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()

    state = Path(tempfile.mkdtemp(prefix="salespulse-bench-", dir="/var/tmp"))
    state.chmod(0o755)
    pg = EmbeddedPostgres(state, free_port())
    broker = EmbeddedBroker(free_port(), log_file=state / "broker.log")
    results: dict = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}}
    try:
        pg.start()
        broker.start()
        ensure_topics(broker.bootstrap)
        print(f"postgres 127.0.0.1:{pg.port}, broker {broker.bootstrap}, state {state}", flush=True)
        if not args.skip_throughput:
            secs, how = preload(broker.bootstrap, args.events)
            in_topic = topic_end(broker.bootstrap)
            print(f"pre-loaded {in_topic} events in {secs:.1f}s ({how})", flush=True)
            split = cpu_split(broker.bootstrap)
            results["cpu_split"] = split
            print(f"consumer CPU per event, measured alone on {split['sample']} messages: Kafka consume "
                  f"{split['consume_us']:.1f} us, parse/validate (pydantic) {split['parse_us']:.1f} us, "
                  f"COPY row building {split['copy_rows_us']:.1f} us", flush=True)
            results["throughput"] = []
            runs = [(int(x), mode) for x in args.batch_sizes.split(",") if x for mode in args.modes.split(",")]
            for bs, mode in runs:
                r = throughput(pg, broker, bs, in_topic, pipeline=mode != "sync")
                r["mode"] = mode
                results["throughput"].append(r)
                print(f"ingest batch={bs:5d} {mode:9s}: {r['rows']} rows in {r['wall_s']:.2f}s = {r['events_per_s']:,.0f} events/s "
                      f"({r['batches']} batches)\n"
                      f"   busy time (main thread parse/validate and the writer thread overlap): parse/validate "
                      f"{r['parse_s']:.2f}s, db write {r['db_s']:.2f}s, dlq {r['dlq_s']:.2f}s, offset commit "
                      f"{r['commit_s']:.2f}s\n"
                      f"   CPU per event: consumer process {r['consumer_us_per_event']:.1f} us, postgres "
                      f"{r['postgres_us_per_event']:.1f} us, broker {r['broker_us_per_event']:.1f} us -> CPU-bound "
                      f"capacity on 2 idle cores {r['cpu_bound_events_per_s_2_cores']:,.0f} events/s", flush=True)
                assert r["rows"] == in_topic, f"expected {in_topic} rows, got {r['rows']}"
        if not args.skip_latency:
            results["latency"] = []
            for pair in [x for x in args.latency_settings.split(",") if x]:
                mw, linger = (int(v) for v in pair.split("/"))
                r = latency(pg, broker.bootstrap, state, args.rate, args.seconds, args.latency_batch_size, mw, linger)
                results["latency"].append(r)
                print(f"latency at {r['achieved_rate']:.0f} events/s (batch {r['batch_size']}, max-wait {mw} ms, linger {linger} ms, "
                      f"{r['sent']} events): p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, "
                      f"p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms; {r['batches']} batches of {r['mean_batch']:.0f}, "
                      f"per batch: parse {r['parse_ms_per_batch']:.1f} ms, db {r['db_ms_per_batch']:.1f} ms, "
                      f"commit {r['commit_ms_per_batch']:.1f} ms", flush=True)
        results["machine"]["loadavg_end"] = os.getloadavg()
        print("load average (1/5/15 min) at start %.2f/%.2f/%.2f, at end %.2f/%.2f/%.2f on %d CPUs"
              % (*results["machine"]["loadavg_start"], *results["machine"]["loadavg_end"], os.cpu_count()))
        print(json.dumps(results, indent=2, default=str))
    finally:
        broker.stop()
        pg.stop()
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

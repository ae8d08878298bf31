"""Consumer ingestion benchmark (a script, not a test).

Starts its own EmbeddedPostgres + EmbeddedBroker on free ports (state under
/var/tmp, removed at the end), then measures, in one run:

1. **Raw COPY reference**: the pre-loaded events' rows (built once, outside
   the timing) ``COPY``ed in one transaction into a scratch copy of ``events``
   (``LIKE events INCLUDING ALL``: the same indexes) on the same PostgreSQL.
   This is the database's own limit for these rows; ``ratio_to_raw_copy`` is
   the pipeline's events/s over it.
2. **Ingest throughput**, one and two consumer processes: pre-loads N
   e-commerce events (default 200,000, with ``python -m services.producer
   --domain ecommerce --max --count N --seed 1``); each run drains them into a
   fresh database with ``ConsumerService`` processes that share the partitions
   by ``assignment`` (``stop_at_end``; no group join in the figure). Each
   process imports and connects first, then all start together; the figure is
   rows / (last end - first start). Prints events/s and where the time goes.
3. **Latency**: a consumer process (``python -m services.consumer``, default
   settings) in its own group; this script sends hand-made events at a steady
   rate (default 1,000/s; producer ``linger.ms`` 0), stamping each one's send
   time, then compares it with ``events.ingested_at`` (the row's insert time
   inside the batch transaction; the row is visible at the COMMIT right after).
   Prints p50/p95/p99/max.

The last line printed is one JSON object: ``events_per_s``,
``events_per_s_two_consumers``, ``raw_copy_rows_per_s``, ``ratio_to_raw_copy``
(best of the two), ``latency_p50_ms``, ``latency_p95_ms``, ``latency_p99_ms``
and the load average.

Usage: ``.venv/bin/python bench/bench_ingest.py [--events 200000] [--batch-sizes 5000]
[--processes 1,2] [--rate 1000] [--seconds 20] [--latency-batch-size 100]
[--latency-settings 500/10/10] [--producer-linger-ms 0]``
(``--latency-settings``: max-wait/linger[/fetch-wait] in ms per latency run;
linger 0 = fill to size or max wait; fetch-wait defaults to the consumer's
``CONSUMER_FETCH_WAIT_MS``)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
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
from services.consumer.__main__ import tune_garbage_collector  # noqa: E402

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
    """CPU per event of the consumer's own Python steps, measured alone on a
    sample of the pre-loaded messages: Kafka consume, the contract check
    (``parse_values`` with the window), building the COPY row (``build_row``),
    and ``parse`` as the service calls it (both, plus the message objects)."""
    from confluent_kafka import Consumer

    from salespulse.contract_fast_path import parse_values
    from services.consumer.messages import RawMessage, build_row, default_window, parse

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
    window = default_window()
    t0 = time.process_time()
    values = [parse_values(r.topic, r.value, window) for r in raws]
    check_cpu = time.process_time() - t0
    t0 = time.process_time()
    for v in values:
        build_row(0, v)
    rows_cpu = time.process_time() - t0
    t0 = time.process_time()
    for r in raws:
        parse(r, window)
    parse_cpu = time.process_time() - t0
    n = len(raws)
    return {"sample": n, "consume_us": 1e6 * consume_cpu / n, "check_us": 1e6 * check_cpu / n,
            "copy_rows_us": 1e6 * rows_cpu / n, "parse_us": 1e6 * parse_cpu / n}


def read_all(bootstrap: str) -> list:
    """Every pre-loaded e-commerce message, as RawMessages."""
    from confluent_kafka import Consumer

    from services.consumer.messages import RawMessage

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-read-{uuid.uuid4().hex[:6]}",
                  "enable.partition.eof": True})
    c.assign([TopicPartition(ECOMMERCE_TOPIC.name, p, 0) for p in range(ECOMMERCE_TOPIC.partitions)])
    raws, eof = [], set()
    while len(eof) < ECOMMERCE_TOPIC.partitions:
        for m in c.consume(10_000, timeout=1.0):
            if m.error():
                eof.add(m.partition())
            else:
                raws.append(RawMessage.from_kafka(m))
    c.close()
    return raws


def raw_copy(pg: EmbeddedPostgres, bootstrap: str) -> dict:
    """The database's own limit: one COPY of the pre-loaded events' rows (built
    beforehand, not timed) into a scratch copy of ``events`` with its indexes,
    committed (the same durable commit as the consumer's)."""
    from services.consumer.messages import parse

    url = pg.create_database(f"rawcopy_{uuid.uuid4().hex[:6]}")
    migrate(Settings(database_url=url))
    lines = []
    for raw in read_all(bootstrap):
        m = parse(raw)
        if m.row is not None:
            f = m.row.line.split(b"\t")
            # events' own columns: id, type, ts, user, session, product id, search query, hash
            lines.append(b"\t".join([*f[0:6], f[12], f[13]]))
    data = b"\n".join(lines) + b"\n"
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE events_raw_copy (LIKE events INCLUDING ALL)")
        conn.commit()
        t0 = time.perf_counter()
        cur.copy_expert('COPY events_raw_copy (event_id, event_type, "timestamp", user_id, session_id, product_id, '
                        "search_query, content_hash) FROM STDIN", io.BytesIO(data))
        conn.commit()
        wall = time.perf_counter() - t0
        cur.execute("SELECT count(*) FROM events_raw_copy")
        rows = cur.fetchone()[0]
    conn.close()
    return {"rows": rows, "wall_s": wall, "rows_per_s": rows / wall}


def worker(args) -> int:
    """One consumer process of a throughput run: build the service, say ready,
    wait for "go" on stdin, run to the end of its partitions, print a JSON result."""
    settings = Settings(database_url=args.worker_url, kafka_bootstrap_servers=args.worker_bootstrap, metrics_port=0)
    assignment = [TopicPartition(t, int(p), 0) for t, p in (x.rsplit(":", 1) for x in args.worker.split(","))]
    svc = ConsumerService(settings, group_id=args.worker_group, assignment=assignment, stop_at_end=True,
                          batch_size=args.worker_batch_size, max_wait_ms=1000)
    svc.writer._connection()  # connected before the clock starts
    if not args.worker_default_gc:
        tune_garbage_collector()  # as python -m services.consumer does
    print("ready", flush=True)
    sys.stdin.readline()
    before = stage_sums()
    cpu0, t0 = time.process_time(), time.time()
    svc.run()
    t1, cpu = time.time(), time.process_time() - cpu0
    after = stage_sums()
    print(json.dumps({"start": t0, "end": t1, "cpu_s": cpu, "batches": batches_written(),
                      "totals": svc.totals, **{f"{k}_s": after[k] - before[k] for k in STAGES}}), flush=True)
    return 0


def throughput(pg: EmbeddedPostgres, broker: EmbeddedBroker, batch_size: int, processes: int,
               profile: Path | None = None, default_gc: bool = False) -> dict:
    """Drain the topics into a fresh database with ``processes`` consumer processes
    (each sampled by py-spy into ``profile``/ if given; with CPython's default
    garbage-collector settings if ``default_gc``, else tuned as the service is)."""
    url = pg.create_database(f"bench_{processes}p_{uuid.uuid4().hex[:6]}")
    migrate(Settings(database_url=url))
    parts = [f"{name}:{p}" for name, t in TOPICS.items() for p in range(t.partitions)]
    group = f"bench-{uuid.uuid4().hex[:8]}"
    spy = [] if profile is None else [str(Path(sys.executable).with_name("py-spy")), "record", "-r", "250", "-f",
                                      "raw", "--nonblocking", "-o"]
    procs = [subprocess.Popen(
        (spy and [*spy, str(profile / f"{processes}p-{i}.txt"), "--"]) + [sys.executable, __file__, "--worker", ",".join(parts[i::processes]), "--worker-url", url,
         "--worker-bootstrap", broker.bootstrap, "--worker-group", group, "--worker-batch-size", str(batch_size)]
        + (["--worker-default-gc"] if default_gc else []),
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(processes)]
    for p in procs:
        while (line := p.stdout.readline()) and line.strip() != "ready":  # py-spy may say things first
            pass
        if not line:
            raise RuntimeError("a consumer process failed to start")
    pg0, br0 = tree_cpu(pg._proc.pid), tree_cpu(broker._proc.pid)
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out = p.stdout.read()
        if p.wait() != 0:
            raise RuntimeError(f"a consumer process failed: {out[-2000:]}")
        results.append(json.loads([x for x in out.splitlines() if x.startswith("{")][-1]))
    pg_cpu, broker_cpu = tree_cpu(pg._proc.pid) - pg0, tree_cpu(broker._proc.pid) - br0
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM events")
        rows = cur.fetchone()[0]
    conn.close()
    cpu = sum(r["cpu_s"] for r in results)
    return {
        "processes": processes, "batch_size": batch_size, "gc": "default" if default_gc else "tuned",
        "rows": rows, "wall_s": wall, "events_per_s": rows / wall,
        "consumer_cpu_s": cpu, "postgres_cpu_s": pg_cpu, "broker_cpu_s": broker_cpu,
        "batches": int(sum(r["batches"] for r in results)),
        **{f"{k}_s": sum(r[f"{k}_s"] for r in results) for k in ("parse", "db", "dlq", "commit")},
        "consumer_us_per_event": 1e6 * cpu / rows, "postgres_us_per_event": 1e6 * pg_cpu / rows,
        "broker_us_per_event": 1e6 * broker_cpu / rows,
    }


def latency(pg: EmbeddedPostgres, bootstrap: str, state: Path, rate: int, seconds: float, batch_size: int,
            max_wait_ms: int, linger_ms: int, fetch_wait_ms: int, producer_linger_ms: int) -> dict:
    url = pg.create_database(f"lat_{max_wait_ms}_{linger_ms}_{fetch_wait_ms}_{uuid.uuid4().hex[:6]}")
    migrate(Settings(database_url=url))
    group = f"bench-lat-{uuid.uuid4().hex[:8]}"
    start_at_end(bootstrap, group)
    log_path = state / f"consumer-lat-{max_wait_ms}-{linger_ms}-{fetch_wait_ms}.log"
    metrics_port = free_port()
    env = dict(os.environ, DATABASE_URL=url, KAFKA_BOOTSTRAP_SERVERS=bootstrap, METRICS_PORT=str(metrics_port),
               CONSUMER_GROUP=group)
    proc = subprocess.Popen([sys.executable, "-m", "services.consumer", "--batch-size", str(batch_size),
                             "--max-wait-ms", str(max_wait_ms), "--linger-ms", str(linger_ms),
                             "--fetch-wait-ms", str(fetch_wait_ms)], cwd=REPO, env=env,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # the group starts at the end of the topics (the throughput runs' backlog is not
        # the latency run's): a warm-up marker shows the consumer is running
        producer = Producer(producer_config(bootstrap, **{"linger.ms": producer_linger_ms}))
        marker = {"event_id": str(uuid.uuid4()), "event_type": "search", "timestamp": now_iso(),
                  "user_id": "bench", "session_id": "bench", "search_query": "warm-up"}
        producer.produce(ECOMMERCE_TOPIC.name, json.dumps(marker).encode(), b"bench")
        producer.flush(30)
        wait_rows(url, [marker["event_id"]], 600)
        warm = scrape(metrics_port)

        n = int(rate * seconds)
        sent_at: dict[str, float] = {}
        per_tick = max(1, rate // 1000)  # one event per millisecond at 1,000/s
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
            "batch_size": batch_size, "max_wait_ms": max_wait_ms, "linger_ms": linger_ms, "fetch_wait_ms": fetch_wait_ms,
            "producer_linger_ms": producer_linger_ms,
            "p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98], "max_ms": lat_ms[-1], "mean_ms": statistics.mean(lat_ms),
            **stages}


def latency_settings(spec: str | None) -> list[tuple[int, int, int]]:
    """``max-wait/linger[/fetch-wait]`` triples from ``spec``; missing parts (or no
    spec) take the consumer's settings."""
    s = Settings()
    defaults = (s.consumer_batch_max_wait_ms, s.consumer_batch_linger_ms, s.consumer_fetch_wait_ms)
    triples = []
    for item in [x for x in (spec or "").split(",") if x] or [""]:
        given = [int(v) for v in item.split("/") if v]
        triples.append(tuple(given + list(defaults[len(given):]))[:3])
    return triples


def start_at_end(bootstrap: str, group: str) -> None:
    """Commit the high watermarks as ``group``'s offsets, so it reads only what comes next."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    ends = []
    for name, t in TOPICS.items():
        for p in range(t.partitions):
            _low, high = c.get_watermark_offsets(TopicPartition(name, p), timeout=10)
            ends.append(TopicPartition(name, p, high))
    c.commit(offsets=ends, asynchronous=False)
    c.close()


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
    ap.add_argument("--batch-sizes", default="5000", help="comma-separated batch sizes of the throughput runs")
    ap.add_argument("--processes", default="1,2", help="comma-separated consumer process counts")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--latency-batch-size", type=int, default=100)
    ap.add_argument("--latency-settings", default=None,
                    help="comma-separated max-wait/linger[/fetch-wait] (ms) settings to measure latency with "
                         "(default: the consumer's settings)")
    ap.add_argument("--producer-linger-ms", type=int, default=0, help="the sending producer's linger.ms")
    ap.add_argument("--profile", type=Path, help="sample the consumer processes with py-spy (raw stacks) into DIR")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--compare-gc", action="store_true",
                    help="also run each throughput setting with CPython's default garbage-collector settings")
    ap.add_argument("--skip-latency", action="store_true")
    for hidden in ("--worker", "--worker-url", "--worker-bootstrap", "--worker-group"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--worker-batch-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-default-gc", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    state = Path(tempfile.mkdtemp(prefix="salespulse-bench-", dir="/var/tmp"))
    state.chmod(0o755)
    pg = EmbeddedPostgres(state, free_port())
    broker = EmbeddedBroker(free_port(), log_file=state / "broker.log")
    results: dict = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}}
    summary: dict = {}
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
                  f"{split['consume_us']:.1f} us, contract check {split['check_us']:.1f} us, COPY row building "
                  f"{split['copy_rows_us']:.1f} us; parse() as the service calls it (check + row) "
                  f"{split['parse_us']:.1f} us", flush=True)
            ref = raw_copy(pg, broker.bootstrap)
            results["raw_copy"] = ref
            print(f"raw COPY of the same {ref['rows']} rows into a copy of events (same indexes): "
                  f"{ref['wall_s']:.2f}s = {ref['rows_per_s']:,.0f} rows/s", flush=True)
            results["throughput"] = []
            for bs in [int(x) for x in args.batch_sizes.split(",") if x]:
                for n, default_gc in [(int(x), gc) for x in args.processes.split(",") if x
                                      for gc in ((False, True) if args.compare_gc else (False,))]:
                    r = throughput(pg, broker, bs, n, args.profile, default_gc)
                    r["ratio_to_raw_copy"] = r["events_per_s"] / ref["rows_per_s"]
                    results["throughput"].append(r)
                    print(f"ingest batch={bs:5d}, {n} consumer process(es), {r['gc']} gc: {r['rows']} rows in {r['wall_s']:.2f}s "
                          f"= {r['events_per_s']:,.0f} events/s ({r['ratio_to_raw_copy']:.2f} x raw COPY; "
                          f"{r['batches']} batches)\n"
                          f"   busy time summed over processes: parse (contract check + row) {r['parse_s']:.2f}s, db write "
                          f"{r['db_s']:.2f}s, dlq {r['dlq_s']:.2f}s, offset commit {r['commit_s']:.2f}s\n"
                          f"   CPU per event: consumer processes {r['consumer_us_per_event']:.1f} us, postgres "
                          f"{r['postgres_us_per_event']:.1f} us, broker {r['broker_us_per_event']:.1f} us", flush=True)
                    assert r["rows"] == in_topic, f"expected {in_topic} rows, got {r['rows']}"
            by_n = {}
            for r in [r for r in results["throughput"] if r["gc"] == "tuned"]:
                by_n[r["processes"]] = max(by_n.get(r["processes"], 0), r["events_per_s"])
            best = max(by_n.values())
            summary.update({"events_per_s": round(by_n.get(1, best)), "events_per_s_two_consumers":
                            round(by_n[2]) if 2 in by_n else None, "raw_copy_rows_per_s": round(ref["rows_per_s"]),
                            "ratio_to_raw_copy": round(best / ref["rows_per_s"], 3)})
        if not args.skip_latency:
            results["latency"] = []
            for mw, linger, fetch_wait in latency_settings(args.latency_settings):
                r = latency(pg, broker.bootstrap, state, args.rate, args.seconds, args.latency_batch_size, mw, linger,
                            fetch_wait, args.producer_linger_ms)
                results["latency"].append(r)
                print(f"latency at {r['achieved_rate']:.0f} events/s (batch {r['batch_size']}, max-wait {mw} ms, "
                      f"linger {linger} ms, fetch wait {fetch_wait} ms, producer linger {args.producer_linger_ms} ms, {r['sent']} events): "
                      f"p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                      f"max {r['max_ms']:.1f} ms; {r['batches']} batches of {r['mean_batch']:.0f}, "
                      f"per batch: parse {r['parse_ms_per_batch']:.1f} ms, db {r['db_ms_per_batch']:.1f} ms, "
                      f"commit {r['commit_ms_per_batch']:.1f} ms", flush=True)
            first = results["latency"][0]
            summary.update({"latency_p50_ms": round(first["p50_ms"], 1), "latency_p95_ms": round(first["p95_ms"], 1),
                            "latency_p99_ms": round(first["p99_ms"], 1)})
        results["machine"]["loadavg_end"] = os.getloadavg()
        print("load average (1/5/15 min) at start %.2f/%.2f/%.2f, at end %.2f/%.2f/%.2f on %d CPUs"
              % (*results["machine"]["loadavg_start"], *results["machine"]["loadavg_end"], os.cpu_count()))
        print(json.dumps(results, indent=2, default=str))
        summary.update({"loadavg_start": results["machine"]["loadavg_start"][0],
                        "loadavg_end": results["machine"]["loadavg_end"][0]})
        print(json.dumps(summary), flush=True)  # the last line: one JSON object
    finally:
        broker.stop()
        pg.stop()
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

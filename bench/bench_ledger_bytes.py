"""Bytes of the ingest ledger per event, against the raw data it accounts for
(a script, not a test: the figures depend on the machine's PostgreSQL).

Starts its own EmbeddedPostgres (state under /var/tmp, removed at the end).
Per batch size, in a fresh database: writes ``--events`` e-commerce events
(the producer's simulation, seed 1) with the consumer's ``BatchWriter``, one
batch at a time, spread over the topic's 6 partitions by key as the broker
would; then measures with ``pg_total_relation_size``:

* **raw**: ``events`` (every partition), ``transactions``, ``products`` and
  ``event_keys`` (the rows and keys those events became);
* **ledger**: ``ingest_ledger_ranges`` + ``ingest_streams`` (sql/130) as the
  consumer wrote it (one row per batch and partition), then after the
  roll-up (the ranges back-dated into one past hour, then
  ``salespulse_rollup_ingest_ledger``: one row per stream and hour);
* **sql/040 ledger**: the same ranges in a copy of the old table (text
  columns, BIGSERIAL id, GiST exclusion constraint, two more B-trees), for
  comparison.

Prints a table and ends with one JSON line per batch size.

Usage: ``.venv/bin/python bench/bench_ledger_bytes.py [--events 60000] [--batch-sizes 3,10,100]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg2  # noqa: E402

from salespulse.contracts import ECOMMERCE_TOPIC  # noqa: E402
from salespulse.db import migrate  # noqa: E402
from salespulse.settings import ROLE_INGEST, Settings  # noqa: E402
from salespulse.stack.postgres import EmbeddedPostgres  # noqa: E402
from services.consumer.messages import RawMessage  # noqa: E402
from services.consumer.store import BatchWriter  # noqa: E402
from services.producer.simulation import EcommerceSimulation  # noqa: E402

OLD_LEDGER = """
CREATE TABLE old_ledger (
    id BIGSERIAL PRIMARY KEY, consumer_group TEXT NOT NULL, topic TEXT NOT NULL,
    topic_incarnation TEXT NOT NULL DEFAULT '', "partition" INTEGER NOT NULL, first_offset BIGINT NOT NULL,
    last_offset BIGINT NOT NULL, messages INTEGER NOT NULL, stored INTEGER NOT NULL, duplicates INTEGER NOT NULL,
    dead_lettered INTEGER NOT NULL, recorded_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT old_ledger_no_overlap EXCLUDE USING gist (
        consumer_group WITH =, topic WITH =, topic_incarnation WITH =, "partition" WITH =,
        int8range(first_offset, last_offset, '[]') WITH &&));
CREATE INDEX ON old_ledger (recorded_at);
CREATE INDEX ON old_ledger (consumer_group, topic, topic_incarnation, "partition", first_offset);
INSERT INTO old_ledger (consumer_group, topic, topic_incarnation, "partition", first_offset, last_offset, messages,
                        stored, duplicates, dead_lettered, recorded_at)
SELECT consumer_group, topic, topic_incarnation, "partition", first_offset, last_offset, messages, stored,
       duplicates, dead_lettered, recorded_at FROM ingest_ledger ORDER BY recorded_at;
"""

RAW_BYTES = """
SELECT sum(pg_total_relation_size(relid)) FROM (
    SELECT relid FROM pg_partition_tree('events') UNION ALL SELECT relid FROM pg_partition_tree('transactions')
    UNION ALL SELECT 'event_keys'::regclass UNION ALL SELECT 'products'::regclass) t
"""
LEDGER_BYTES = "SELECT pg_total_relation_size('ingest_ledger_ranges') + pg_total_relation_size('ingest_streams')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(cur, sql: str) -> int:
    cur.execute(sql)
    return int(cur.fetchone()[0] or 0)


def measure(pg: EmbeddedPostgres, events: int, batch_size: int) -> dict:
    url = pg.create_database(f"ledger_bytes_{batch_size}")
    migrate(Settings(database_url=url))
    sim = EcommerceSimulation(seed=1)
    writer = BatchWriter(Settings(database_url=url).role_url(ROLE_INGEST))
    partitions = ECOMMERCE_TOPIC.partitions
    offsets = [0] * partitions
    try:
        sent = 0
        while sent < events:
            batch = []
            for _ in range(min(batch_size, events - sent)):
                key, value = sim.next_message(datetime.now(timezone.utc))
                p = zlib.crc32(key.encode()) % partitions
                batch.append(RawMessage(ECOMMERCE_TOPIC.name, p, offsets[p], key.encode(), value, None))
                offsets[p] += 1
            writer.write_raw(batch, incarnations={ECOMMERCE_TOPIC.name: "bench"})
            sent += len(batch)
    finally:
        writer.close()
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
        raw = one(cur, RAW_BYTES)
        ranges = one(cur, "SELECT count(*) FROM ingest_ledger_ranges")
        ledger = one(cur, LEDGER_BYTES)
        cur.execute(OLD_LEDGER)
        cur.execute("VACUUM ANALYZE old_ledger")
        old = one(cur, "SELECT pg_total_relation_size('old_ledger')")
        cur.execute("UPDATE ingest_ledger_ranges SET recorded_at = date_trunc('hour', now()) - interval '3 hours' "
                    "+ (recorded_at - (SELECT min(recorded_at) FROM ingest_ledger_ranges)) / 100")
        cur.execute("SELECT * FROM salespulse_rollup_ingest_ledger(now() - interval '2 hours', 10000000)")
        cur.execute("VACUUM FULL ingest_ledger_ranges")
        rolled = one(cur, LEDGER_BYTES)
        rolled_ranges = one(cur, "SELECT count(*) FROM ingest_ledger_ranges")
    conn.close()
    return {"batch_size": batch_size, "events": events, "ranges": ranges, "messages_per_range": round(events / ranges, 2),
            "raw_bytes_per_event": round(raw / events, 1), "ledger_bytes_per_event": round(ledger / events, 2),
            "ledger_share_of_raw": round(ledger / raw, 4), "ledger_bytes_per_range": round(ledger / ranges, 1),
            "sql040_ledger_bytes_per_event": round(old / events, 2), "sql040_share_of_raw": round(old / raw, 4),
            "rolled_up_ranges": rolled_ranges, "rolled_up_bytes_per_event": round(rolled / events, 3),
            "rolled_up_share_of_raw": round(rolled / raw, 5)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--batch-sizes", default="3,10,100")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="salespulse-ledger-bytes-", dir="/var/tmp"))
    state.chmod(0o755)
    pg = EmbeddedPostgres(state, free_port()).start()
    try:
        results = [measure(pg, args.events, int(b)) for b in args.batch_sizes.split(",")]
    finally:
        pg.stop()
        shutil.rmtree(state, ignore_errors=True)
    print(f"{'batch':>6} {'ranges':>7} {'msg/range':>9} {'raw B/ev':>9} {'ledger B/ev':>11} {'share':>7} "
          f"{'sql040 B/ev':>11} {'sql040 share':>12} {'rolled B/ev':>11} {'rolled share':>12}")
    for r in results:
        print(f"{r['batch_size']:>6} {r['ranges']:>7} {r['messages_per_range']:>9} {r['raw_bytes_per_event']:>9} "
              f"{r['ledger_bytes_per_event']:>11} {r['ledger_share_of_raw']:>7.2%} "
              f"{r['sql040_ledger_bytes_per_event']:>11} {r['sql040_share_of_raw']:>12.2%} "
              f"{r['rolled_up_bytes_per_event']:>11} {r['rolled_up_share_of_raw']:>12.3%}")
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

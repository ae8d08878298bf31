"""Operations commands against a real PostgreSQL and a real broker (conftest fixtures):
backup/restore round trip, consumer lag, replay (offset and time), reset-db, health probe."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg2
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition

from salespulse import cli
from salespulse.contracts import parse_message
from salespulse.kafka import admin_client, committed_offsets, producer_config
from salespulse.ops import healthcheck
from services.consumer import replay as replay_mod
from salespulse.lag import partition_lag, position_lag
from salespulse.ops.lag import consumer_lag
from salespulse.ops.pg import split_password
from salespulse.settings import ROLE_PASSWORD_VARIABLES, get_settings
from tests.support.db import query as rows

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- helpers


def execute(url: str, query: str, params=()) -> None:
    rows(url, query, params)


def ecommerce_event(ts: datetime | None = None) -> bytes:
    event = {
        "event_id": str(uuid.uuid4()),
        "event_type": "page_view",
        "timestamp": (ts or datetime.now(timezone.utc)).isoformat(),
        "user_id": "user-ops",
        "session_id": "session-ops",
        "product": {"id": "P-OPS-1", "name": "Ops widget", "category": "tools", "price": 12.5},
    }
    raw = json.dumps(event).encode()
    parse_message("ecommerce.events", raw)  # the helper only makes valid events
    return raw


def produce(bootstrap: str, topic: str, partition: int, values: list[bytes],
            timestamps_ms: list[int] | None = None) -> list[int]:
    """Produce ``values`` to one partition; return their offsets (in order)."""
    producer = Producer(producer_config(bootstrap))
    offsets: list[int] = []
    errors: list = []

    def delivered(err, msg):
        if err is not None:
            errors.append(err)
        else:
            offsets.append(msg.offset())

    for i, value in enumerate(values):
        kwargs = {"timestamp": timestamps_ms[i]} if timestamps_ms else {}
        producer.produce(topic, value=value, key=b"user-ops", partition=partition, on_delivery=delivered, **kwargs)
    assert producer.flush(30) == 0
    assert not errors, errors
    assert len(offsets) == len(values)
    return offsets


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def stored_event_ids(url: str) -> list[str]:
    return sorted(str(r[0]) for r in rows(url, "SELECT event_id FROM events"))


# ---------------------------------------------------------------- backup / restore
def _seed(url: str, n: int) -> None:
    execute(url, "INSERT INTO products (product_id, product_name, category, price) VALUES "
                 "('P1', 'Lamp', 'home', 19.90), ('P2', 'Mug', 'kitchen', 7.00)")
    for i in range(n):
        execute(url, "INSERT INTO events (event_id, event_type, \"timestamp\", user_id, session_id, product_id) "
                     "VALUES (%s, 'page_view', now() - %s * interval '1 minute', %s, 's', 'P1')",
                (str(uuid.uuid4()), i, f"u{i}"))


def _snapshot(url: str) -> dict:
    return {
        "events": rows(url, "SELECT event_id::text, event_type, \"timestamp\", user_id, product_id FROM events ORDER BY event_id"),
        "products": rows(url, "SELECT product_id, product_name, category, price FROM products ORDER BY product_id"),
        "migrations": rows(url, "SELECT version, checksum FROM schema_migrations ORDER BY version"),
    }


def test_backup_then_restore_round_trips_the_rows(settings, postgres, tmp_path, capsys, monkeypatch):
    url = settings.database_url
    _seed(url, 25)
    before = _snapshot(url)
    assert len(before["events"]) == 25

    dump = tmp_path / "backups" / "salespulse.dump"
    code, out, _ = run_cli(["backup", "--out", str(dump)], capsys)
    assert code == 0 and "written to" in out
    assert dump.read_bytes()[:5] == b"PGDMP"  # pg_dump custom format
    assert not dump.with_name(dump.name + ".partial").exists()

    # damage the database: delete some rows, change one, add one
    execute(url, "DELETE FROM events WHERE user_id IN ('u0', 'u1', 'u2')")
    execute(url, "UPDATE products SET price = 1 WHERE product_id = 'P2'")
    execute(url, "INSERT INTO products (product_id, product_name, category, price) VALUES ('P3', 'X', 'y', 1)")
    assert _snapshot(url) != before

    code, out, _ = run_cli(["restore", str(dump)], capsys)
    assert code == 0 and "restored" in out
    assert _snapshot(url) == before

    # the roles' grants come back with the tables: the ingest role can still insert
    ingest_url = settings.role_url("salespulse_ingest")
    execute(ingest_url, "INSERT INTO products (product_id, product_name, category, price) VALUES ('P9', 'n', 'c', 2)")

    # and into a brand-new database of the same cluster
    fresh = postgres.create_database(f"restore_{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("DATABASE_URL", fresh)
    get_settings.cache_clear()
    code, _, _ = run_cli(["restore", str(dump)], capsys)
    assert code == 0
    assert _snapshot(fresh) == before


def test_backup_and_restore_stream_through_stdout_and_stdin(settings, postgres):
    url = settings.database_url
    _seed(url, 5)
    before = _snapshot(url)
    target = postgres.create_database(f"stream_{uuid.uuid4().hex[:8]}")
    env = dict(os.environ, DATABASE_URL=url)
    dump = subprocess.run([sys.executable, "-m", "salespulse.cli", "backup", "--out", "-"], env=env,
                          capture_output=True, check=True, timeout=120)
    assert dump.stdout[:5] == b"PGDMP"
    restored = subprocess.run([sys.executable, "-m", "salespulse.cli", "restore", "-"], input=dump.stdout,
                              env=dict(env, DATABASE_URL=target), capture_output=True, timeout=120)
    assert restored.returncode == 0, restored.stderr.decode()
    assert _snapshot(target) == before


def test_restore_of_a_missing_file_is_a_clear_error(settings, tmp_path, capsys):
    code, _, err = run_cli(["restore", str(tmp_path / "nope.dump")], capsys)
    assert code == 2
    assert "no such dump file" in err


def test_restore_of_a_broken_dump_changes_nothing(settings, tmp_path, capsys):
    url = settings.database_url
    _seed(url, 3)
    before = _snapshot(url)
    bad = tmp_path / "bad.dump"
    bad.write_bytes(b"PGDMP" + b"\x00" * 64)
    code, _, err = run_cli(["restore", str(bad)], capsys)
    assert code == 2 and "pg_restore failed" in err
    assert _snapshot(url) == before


def test_password_goes_to_the_environment_not_the_command_line():
    url, env = split_password("postgresql://admin:s%40cret@db.example:5433/sales?sslmode=require")
    assert url == "postgresql://admin@db.example:5433/sales?sslmode=require"
    assert env["PGPASSWORD"] == "s@cret"


# ---------------------------------------------------------------- lag
def test_lag_compares_known_commits_with_the_high_watermark(settings, capsys):
    bootstrap = settings.kafka_bootstrap_servers
    topic = "restaurant.orders"
    offsets = produce(bootstrap, topic, 2, [b"lag-%d" % i for i in range(12)])
    high = offsets[-1] + 1
    committed_at = offsets[0] + 4
    group = f"ops-lag-{uuid.uuid4().hex[:8]}"
    admin = admin_client(bootstrap)
    admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 2, committed_at)])])[group].result()

    result = {(r.topic, r.partition): r for r in consumer_lag(bootstrap, group, [topic])}
    assert set(result) == {(topic, 0), (topic, 1), (topic, 2)}
    p2 = result[(topic, 2)]
    assert (p2.committed, p2.high, p2.lag) == (committed_at, high, high - committed_at)
    for p in (0, 1):  # no commit: lag = everything retained
        assert result[(topic, p)].committed is None
        assert result[(topic, p)].lag == result[(topic, p)].high - (result[(topic, p)].low or 0)

    code, out, _ = run_cli(["lag", "--group", group, "--topic", topic, "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["group"] == group
    by_partition = {p["partition"]: p for p in doc["partitions"]}
    assert by_partition[2]["lag"] == high - committed_at
    assert doc["total_lag"] == sum(p["lag"] for p in doc["partitions"])

    code, out, _ = run_cli(["lag", "--group", group, "--topic", topic], capsys)
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith(topic) and l.split()[1] == "2")
    assert line.split()[2:] == [str(committed_at), str(high), str(high - committed_at)]
    assert f"total lag: {doc['total_lag']}" in out


def test_lag_of_an_unknown_topic_is_a_clear_error(settings, capsys):
    code, _, err = run_cli(["lag", "--topic", "no.such.topic"], capsys)
    assert code == 2 and "unknown topic" in err


class FakeWatermarks:
    """A consumer with a position and cached watermarks per partition (None: not known yet)."""

    def __init__(self, positions: dict[int, int], highs: dict[int, int | None], committed: dict[int, int] | None = None):
        self.positions, self.highs, self.commits = positions, highs, committed or {}

    def committed(self, partitions, timeout):
        return [TopicPartition(tp.topic, tp.partition, self.commits.get(tp.partition, -1001)) for tp in partitions]

    def position(self, partitions):
        return [TopicPartition(tp.topic, tp.partition, self.positions[tp.partition]) for tp in partitions]

    def get_watermark_offsets(self, tp, cached):
        assert cached, "a fresh watermark query can be answered wrongly"
        high = self.highs[tp.partition]
        if high is None:
            raise KafkaException("unknown")
        return 0, high


def test_lag_counts_from_the_next_offset_or_from_the_retained_start_without_one():
    assert partition_lag(100, 40) == 60
    assert partition_lag(100, 120) == 0  # never below 0
    assert partition_lag(100, None) == 100
    assert partition_lag(100, None, low=30) == 70


def test_a_consumer_s_own_lag_leaves_out_partitions_whose_watermark_is_unknown():
    consumer = FakeWatermarks({0: 5, 1: -1001, 2: 0}, {0: 9, 1: 4, 2: None})
    assert position_lag(consumer, [TopicPartition("t", p) for p in range(3)]) == {("t", 0): 4, ("t", 1): 4}


def test_a_partition_read_nothing_from_since_its_assignment_lags_from_the_group_s_commit():
    """A restarted consumer with nothing new on a partition has no position there yet:
    its lag is from the committed offset, not the partition's whole history."""
    consumer = FakeWatermarks({0: -1001, 1: -1001}, {0: 9, 1: 4}, committed={0: 9})
    assert position_lag(consumer, [TopicPartition("t", p) for p in range(2)]) == {("t", 0): 0, ("t", 1): 4}


# ---------------------------------------------------------------- replay
def test_replay_from_an_offset_stores_each_message_exactly_once(settings, capsys):
    bootstrap = settings.kafka_bootstrap_servers
    url = settings.database_url
    partition = 4
    skipped = [ecommerce_event() for _ in range(5)]
    wanted = [ecommerce_event() for _ in range(30)]
    bad = [b'{"event_id": "not-a-uuid"}']
    offsets = produce(bootstrap, "ecommerce.events", partition, skipped + wanted + bad)
    first = offsets[len(skipped)]
    want_ids = sorted(json.loads(v)["event_id"] for v in wanted)
    argv = ["replay", "--topic", "ecommerce.events", "--partition", str(partition), "--from-offset", str(first)]

    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    assert "30 stored" in out and "1 dead letters" in out
    assert stored_event_ids(url) == want_ids
    assert rows(url, "SELECT count(*) FROM dead_letters WHERE topic = 'ecommerce.events'")[0][0] == 1

    code, out, _ = run_cli(argv, capsys)  # again: nothing new
    assert code == 0
    assert "0 stored, 30 already stored" in out
    assert stored_event_ids(url) == want_ids
    assert rows(url, "SELECT count(*), count(DISTINCT event_id) FROM events")[0] == (30, 30)
    assert rows(url, "SELECT count(*) FROM dead_letters WHERE topic = 'ecommerce.events'")[0][0] == 1

    # the same through the API: the throwaway group leaves no committed offsets behind
    summary = replay_mod.replay(settings, "ecommerce.events", partitions=[partition], from_offset=first)
    assert (summary["stored"], summary["duplicate"], summary["dead_letter"]) == (0, 30, 1)
    assert summary["partitions"][partition] == {"from": first, "to": offsets[-1] + 1}
    leftover = committed_offsets(bootstrap, summary["group"], {"ecommerce.events": 6})
    assert all(tp.offset < 0 for tp in leftover)
    assert stored_event_ids(url) == want_ids


def test_replay_from_a_timestamp_starts_at_the_first_message_at_or_after_it(settings, capsys):
    bootstrap = settings.kafka_bootstrap_servers
    url = settings.database_url
    partition = 1
    base = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=1)  # later than anything else
    before = [ecommerce_event() for _ in range(8)]
    after = [ecommerce_event() for _ in range(6)]
    stamps = [int((base + timedelta(seconds=i)).timestamp() * 1000) for i in range(len(before))]
    cut = base + timedelta(minutes=10)
    stamps += [int((cut + timedelta(seconds=i)).timestamp() * 1000) for i in range(len(after))]
    produce(bootstrap, "ecommerce.events", partition, before + after, timestamps_ms=stamps)

    code, out, err = run_cli(["replay", "--topic", "ecommerce.events", "--partition", str(partition),
                              "--from-timestamp", cut.isoformat()], capsys)
    assert code == 0, err
    assert "6 stored" in out
    assert stored_event_ids(url) == sorted(json.loads(v)["event_id"] for v in after)

    # naive time = UTC, and a time after every message replays nothing
    later = (cut + timedelta(hours=1)).replace(tzinfo=None).isoformat()
    code, out, _ = run_cli(["replay", "--topic", "ecommerce.events", "--partition", str(partition),
                            "--from-timestamp", later], capsys)
    assert code == 0 and "replayed 0 message(s)" in out
    assert len(stored_event_ids(url)) == 6


def test_replay_reports_a_broker_that_fails_the_time_lookup(settings, monkeypatch):
    class FailingConsumer(replay_mod.Consumer):
        def offsets_for_times(self, *args, **kwargs):
            raise KafkaException("ListOffsets by timestamp not supported")

    monkeypatch.setattr(replay_mod, "Consumer", FailingConsumer)
    with pytest.raises(replay_mod.OpsError, match="failed the time lookup.*--from-offset"):
        replay_mod.replay(settings, "ecommerce.events", partitions=[0], from_timestamp_ms=0)


@pytest.mark.parametrize("argv, message", [
    (["--topic", "ecommerce.events.dlq"], "cannot replay"),
    (["--topic", "restaurant.orders", "--partition", "7"], "no partition 7"),
    (["--topic", "restaurant.orders", "--from-timestamp", "yesterday"], "not an ISO-8601 time"),
    (["--topic", "restaurant.orders", "--from-offset", "-3"], "must be >= 0"),
])
def test_replay_rejects_bad_arguments_clearly(settings, capsys, argv, message):
    code, _, err = run_cli(["replay", *argv], capsys)
    assert code == 2
    assert message in err


def test_replay_past_the_end_replays_nothing(settings, capsys):
    code, out, _ = run_cli(["replay", "--topic", "restaurant.orders", "--from-offset", "1000000000"], capsys)
    assert code == 0
    assert "replayed 0 message(s)" in out
    assert rows(settings.database_url, "SELECT count(*) FROM orders")[0][0] == 0


# ---------------------------------------------------------------- reset-db
def test_reset_db_needs_confirmation_then_recreates_the_schema(settings, capsys, monkeypatch):
    url = settings.database_url
    _seed(url, 4)
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # no terminal to ask on
    code, _, err = run_cli(["reset-db"], capsys)
    assert code == 2 and "--yes" in err
    assert rows(url, "SELECT count(*) FROM events")[0][0] == 4

    code, out, _ = run_cli(["reset-db", "--yes"], capsys)
    assert code == 0 and "re-created" in out
    assert rows(url, "SELECT count(*) FROM events")[0][0] == 0
    migrations = [r[0] for r in rows(url, "SELECT name FROM schema_migrations ORDER BY version")]
    assert migrations == sorted(p.stem for p in (REPO / "sql").glob("[0-9][0-9][0-9]_*.sql"))
    # the service roles work again on the new database
    execute(settings.role_url("salespulse_ingest"),
            "INSERT INTO products (product_id, product_name, category, price) VALUES ('P1', 'n', 'c', 1)")


# ---------------------------------------------------------------- health probe
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_healthcheck_probe_http_and_tcp():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_port
        assert healthcheck.main([f"http://127.0.0.1:{port}/health", f"tcp://127.0.0.1:{port}"]) == 0
        assert healthcheck.main([f"http://127.0.0.1:{port}/broken"]) == 1
        assert healthcheck.check(f"http://127.0.0.1:{port}/broken") == f"http://127.0.0.1:{port}/broken: HTTP 503"
    finally:
        server.shutdown()
        server.server_close()
    assert healthcheck.main([f"tcp://127.0.0.1:{port}"]) == 1  # closed now
    assert healthcheck.main(["ftp://x"]) == 1
    # as the containers run it
    probe = subprocess.run([sys.executable, "-m", "salespulse.ops.healthcheck", f"tcp://127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 1 and "unhealthy" in probe.stderr


def test_unreachable_services_give_one_clear_line(capsys, monkeypatch):
    from tests.conftest import free_port

    closed = free_port()  # nothing listens there
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{closed}")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://u:p@127.0.0.1:{closed}/nowhere")
    for variable in ROLE_PASSWORD_VARIABLES.values():  # not the local stack: its role passwords must be given
        monkeypatch.setenv(variable, f"{variable.lower()}-not-a-published-value")
    get_settings.cache_clear()
    try:
        code, _, err = run_cli(["lag"], capsys)
        assert code == 2 and err.startswith("salespulse lag: Kafka error:")
        code, _, err = run_cli(["reset-db", "--yes"], capsys)
        assert code == 2 and err.startswith("salespulse reset-db: database error:")
        code, _, err = run_cli(["backup", "--out", "-"], capsys)
        assert code == 2 and "pg_dump failed" in err
    finally:
        get_settings.cache_clear()

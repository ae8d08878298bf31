"""The consumer loop under faults: oversized dead letters, failures inside the
loop, unreadable messages, a drain on stop, a re-created topic, an offset
commit that fails after the write.

Real broker and PostgreSQL (tests/conftest.py); unit tests where noted."""

from __future__ import annotations

import hashlib
import json
import uuid

import psycopg2
import pytest
from confluent_kafka import Consumer, TopicPartition

from salespulse.contracts import ECOMMERCE_TOPIC, TimestampWindow
from salespulse.integrity import ledger_gaps
from salespulse.kafka import committed_offsets, consumer_config, ensure_topics
from salespulse.stack.broker import EmbeddedBroker
from services.consumer import metrics
from services.consumer.app import ConsumerService
from services.consumer.dead_letters import MESSAGE_BUDGET, DeadLetterPublisher, build_record
from services.consumer.messages import ParsedMessage, RawMessage, read_message
from tests.conftest import free_port
from tests.support.consumer import (
    GatedBroker,
    ServiceThread,
    count_events,
    ecommerce_event,
    end_offsets,
    group_at_end,
    produce,
    query,
    unique_group,
    wait_until,
)


def dead(value: bytes | None, *, key: bytes | None = b"k", headers=None, error: str = "bad",
         topic: str = ECOMMERCE_TOPIC.name, offset: int = 7) -> ParsedMessage:
    return ParsedMessage(RawMessage(topic, 0, offset, key, value, headers), error=error)


def record_size(record) -> int:
    return len(record.key or b"") + len(record.value or b"") + sum(len(k) + len(v) for k, v in record.headers)


# ---------------------------------------------------------------- unit: the DLQ record
def test_small_dead_letter_is_published_whole_with_its_reason():
    record = build_record(dead(b"{}", headers=[("trace", b"t\x00-1")], error="event_id: missing"))
    assert record.value == b"{}" and record.key == b"k" and not record.truncated
    headers = dict(record.headers)
    assert headers["trace"] == b"t\x00-1"
    assert headers["dlq.error"] == b"event_id: missing"
    assert headers["dlq.source.offset"] == b"7"


def test_dead_letter_near_the_size_limit_is_cut_to_fit_and_says_so():
    message = dead(b"x" * 999_000, error="e" * 10_000, headers=[("h", b"v" * 100_000)])
    record = build_record(message)
    assert record.truncated
    assert record_size(record) <= MESSAGE_BUDGET
    assert len(dict(record.headers)["dlq.error"]) <= 4000
    assert b"value=999000" in dict(record.headers)["dlq.truncated"]
    assert "h" not in dict(record.headers)  # 100 KB of original headers left out, and said so
    assert b"headers=" in dict(record.headers)["dlq.truncated"]
    assert message.raw.value == b"x" * 999_000  # the stored dead letter keeps everything


def test_zero_budget_still_yields_a_publishable_record():
    record = build_record(dead(b"x" * 2_000_000, key=b"k" * 50_000), budget=0)
    assert record.value == b"" and record.key == b""
    assert record_size(record) < 10_000


class _BadHeaders:
    """A message whose headers cannot be decoded (a header name that is not UTF-8)."""

    def topic(self): return ECOMMERCE_TOPIC.name
    def partition(self): return 1
    def offset(self): return 42
    def key(self): return b"k\x00"
    def value(self): return b'{"a": 1}'
    def error(self): return None

    def headers(self):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")


def test_message_with_unreadable_headers_becomes_a_dead_letter_not_a_crash():
    parsed = read_message(_BadHeaders(), "topic-id", TimestampWindow())
    assert not parsed.valid and "unreadable message headers" in parsed.error
    assert parsed.raw.key == b"k\x00" and parsed.raw.offset == 42


# ---------------------------------------------------------------- real broker
def test_oversized_dead_letter_is_published_truncated(broker):
    ensure_topics(broker.bootstrap)
    run = uuid.uuid4().hex[:8]
    big = dead(b"{" + b"x" * 998_000, key=run.encode(), error="not JSON: " + "y" * 4000, offset=10**9)
    publisher = DeadLetterPublisher(broker.bootstrap)
    try:
        assert publisher.publish([big]) == []
    finally:
        publisher.close(5)
    reader = Consumer(consumer_config(broker.bootstrap, unique_group("dlq-read")))
    reader.assign([TopicPartition(ECOMMERCE_TOPIC.dlq, 0, 0)])
    found = None
    try:
        for _ in range(200):
            msg = reader.poll(0.5)
            if msg is None or msg.error():
                if found is None:
                    continue
                break
            if msg.key() == run.encode():
                found = msg
                break
    finally:
        reader.close()
    assert found is not None, "the oversized dead letter never reached the DLQ topic"
    headers = dict(found.headers())
    assert b"value=998001" in headers["dlq.truncated"]
    assert headers["dlq.source.offset"] == str(10**9).encode()
    assert found.value() == big.raw.value[: len(found.value())]


def test_a_bad_message_near_the_size_limit_does_not_stall_its_partition(settings, database_url, broker):
    """Before: the DLQ copy (payload + 4 KB of dlq.* headers) was refused on every
    attempt, the batch retried without end and no offset moved."""
    run = uuid.uuid4().hex[:8]
    payload = b"[" + b"9" * 990_000  # not JSON, 0.99 MB
    good = ecommerce_event(0, run=run)
    group = group_at_end(broker.bootstrap, "near-limit")
    produce(broker.bootstrap, ECOMMERCE_TOPIC.name,
            [(run.encode(), payload), (good["user_id"].encode(), json.dumps(good).encode())])
    svc = ConsumerService(service_settings(settings), group_id=group, stop_at_end=True)
    ServiceThread(svc).start().join(150)
    assert count_events(database_url, [good["event_id"]]) == 1
    stored = query(database_url, "SELECT length(payload), payload_bytes, payload_sha256 FROM dead_letters "
                                 "WHERE key = %s", (run,))
    # the table keeps its size and hash, and its payload up to DEAD_LETTER_PAYLOAD_MAX_BYTES
    assert stored == [(settings.dead_letter_payload_max_bytes, len(payload), hashlib.sha256(payload).hexdigest())]


def service_settings(settings, **update):
    return settings.model_copy(update={"metrics_port": 0, **update})


def test_a_failure_inside_the_loop_commits_nothing_past_the_failed_batch(settings, database_url, broker):
    """Before: the failed batch was dropped from memory and shutdown committed the
    *next* one, moving the offset past messages neither stored nor dead-lettered."""
    user = f"u-{uuid.uuid4().hex[:8]}"  # one key: one partition, in order
    events = [ecommerce_event(i, run=user, user_id=user) for i in range(60)]
    msgs = [(user.encode(), json.dumps(e).encode()) for e in events[:30]]
    msgs.append((user.encode(), b"not json"))
    msgs += [(user.encode(), json.dumps(e).encode()) for e in events[30:]]
    group = group_at_end(broker.bootstrap, "loop-failure")  # it starts where these messages start
    start = end_offsets(broker.bootstrap)
    produce(broker.bootstrap, ECOMMERCE_TOPIC.name, msgs)
    grown = {k: end - start[k] for k, end in end_offsets(broker.bootstrap).items() if end != start[k]}
    ((topic, partition), count), = grown.items()  # one key: one partition
    assert (topic, count) == (ECOMMERCE_TOPIC.name, 61)
    bad_offset = start[(topic, partition)] + 30

    svc = ConsumerService(service_settings(settings), group_id=group, stop_at_end=True, batch_size=10,
                          linger_ms=0)

    def broken_publish(dead, max_attempts):
        raise RuntimeError("bug in the dead-letter path")

    svc.publish_dead_letters = broken_publish
    with pytest.raises(RuntimeError):
        ServiceThread(svc).start().join(120)
    stored_before = count_events(database_url, [e["event_id"] for e in events])
    assert stored_before < 60
    # whatever was stored, the committed offset never passes a message that is not: the
    # stored ones are a prefix of the partition (one key, batches in order), the bad one
    # (not dead-lettered: that path is broken here) at most where the offset stops
    committed = {(tp.topic, tp.partition): tp.offset for tp in committed_offsets(broker.bootstrap, group)}
    first = start[(topic, partition)]
    assert first <= committed[(topic, partition)] <= first + min(stored_before, 30) <= bad_offset, (
        committed[(topic, partition)], first, stored_before)
    assert {k: committed[k] for k in start if k != (topic, partition)} == {
        k: v for k, v in start.items() if k != (topic, partition)}  # the other partitions did not move
    # a healthy consumer of the same group then stores everything, the bad one dead-lettered
    svc = ConsumerService(service_settings(settings), group_id=group, stop_at_end=True, batch_size=10)
    ServiceThread(svc).start().join(120)
    assert count_events(database_url, [e["event_id"] for e in events]) == 60
    assert query(database_url, "SELECT count(*) FROM dead_letters WHERE key = %s AND payload = %s",
                 (user, b"not json"))[0][0] == 1


def test_an_unexpected_write_error_holds_the_batch_and_retries(settings, database_url, broker):
    run = uuid.uuid4().hex[:8]
    events = [ecommerce_event(i, run=run) for i in range(40)]
    group = group_at_end(broker.bootstrap, "write-error")
    produce(broker.bootstrap, ECOMMERCE_TOPIC.name, [(e["user_id"].encode(), json.dumps(e).encode()) for e in events])
    svc = ConsumerService(service_settings(settings), group_id=group, stop_at_end=True,
                          batch_size=500)
    real_write, calls = svc.writer.write, []

    def flaky_write(batch, **kwargs):
        calls.append(len(batch))
        if len(calls) <= 2:
            raise ValueError("unexpected")
        return real_write(batch, **kwargs)

    svc.writer.write = flaky_write
    ServiceThread(svc).start().join(120)  # no crash
    assert len(calls) >= 3
    assert count_events(database_url, [e["event_id"] for e in events]) == 40


def test_stop_with_a_drain_stores_what_the_broker_still_holds(settings, database_url, broker):
    run = uuid.uuid4().hex[:8]
    events = [ecommerce_event(i, run=run) for i in range(3000)]
    # a fresh group from earliest, not group_at_end: a partition the group has a commit on
    # but reads nothing from has no position, and the drain counts its whole high
    # watermark as lag (salespulse.lag.partition_lag), so it would run its full 120 s
    group = unique_group("drain")
    produce(broker.bootstrap, ECOMMERCE_TOPIC.name, [(e["user_id"].encode(), json.dumps(e).encode()) for e in events])
    svc = ConsumerService(service_settings(settings, consumer_drain_on_stop_s=120.0),
                          group_id=group, batch_size=50, linger_ms=0)
    thread = ServiceThread(svc).start()
    assert svc.ready.wait(60)
    svc.stop()  # at once: the drain keeps it consuming until caught up
    thread.join(180)
    assert count_events(database_url, [e["event_id"] for e in events]) == 3000


def test_a_re_created_topic_gets_new_dead_letters_at_the_same_offsets(settings, database_url, state_dir):
    """The in-memory broker restarts its offsets at 0: a new bad message with the same
    payload at the same offset is a new dead letter, not 'already stored'."""
    own = EmbeddedBroker(free_port(), log_file=state_dir / "broker-recreate.log").start()
    try:
        local = service_settings(settings, kafka_bootstrap_servers=own.bootstrap)
        for _ in range(2):
            ensure_topics(own.bootstrap)
            produce(own.bootstrap, ECOMMERCE_TOPIC.name, [(b"same-key", b"")] * 3)
            ServiceThread(ConsumerService(local, group_id="recreate", stop_at_end=True)).start().join(120)
            own.restart()
        rows = query(database_url, "SELECT count(*), count(DISTINCT topic_incarnation) FROM dead_letters "
                                   "WHERE key = 'same-key'")[0]
        assert rows == (6, 2)
    finally:
        own.stop()


def test_an_offset_commit_that_fails_after_the_write_loses_and_duplicates_nothing(settings, database_url, state_dir,
                                                                                  caplog):
    """The broker goes away between a batch's database commit and its offset
    commit. Fault injected through real paths: the batch's write is held at its
    ledger insert (before its COMMIT) by a table lock a third session holds;
    meanwhile every connection to the broker is cut (GatedBroker: the group's
    coordinator is gone, its data kept); the lock is released, the rows are
    committed, the offset commit fails. The failure is counted and logged, and
    a consumer of the same group started afterwards re-reads the batch and
    recognises every message as already stored (ledger), storing nothing twice."""
    gate = GatedBroker(log_file=state_dir / "broker-gated.log").start()
    blocker = psycopg2.connect(database_url)
    try:
        local = service_settings(settings, kafka_bootstrap_servers=gate.bootstrap)
        ensure_topics(gate.bootstrap)
        run = uuid.uuid4().hex[:8]
        events = [ecommerce_event(i, run=run, user_id=run) for i in range(40)]  # one key: one partition
        group = unique_group("commit-failure")
        svc = ConsumerService(local, group_id=group, batch_size=500)
        runner = ServiceThread(svc).start()
        wait_until(lambda: svc.partitions.assigned, 60, what="partitions assigned")
        with blocker.cursor() as cur:  # reads of the ledger pass, its inserts wait for the rollback below
            cur.execute("LOCK TABLE ingest_ledger_ranges IN EXCLUSIVE MODE")
        failures_before = metrics.COMMIT_FAILURES._value.get()
        produce(gate.bootstrap, ECOMMERCE_TOPIC.name, [(run.encode(), json.dumps(e).encode()) for e in events])
        (key, end), = [(k, n) for k, n in end_offsets(gate.bootstrap).items() if n]
        wait_until(lambda: query(database_url, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                               "current_database() AND application_name = 'salespulse-consumer' "
                                               "AND wait_event_type = 'Lock'")[0][0] == 1,
                   60, what="the batch's write waits before its COMMIT")
        gate.cut()  # the broker (and the group's coordinator) goes away
        blocker.rollback()  # the write goes on and commits
        wait_until(lambda: metrics.COMMIT_FAILURES._value.get() > failures_before, 120,
                   what="the offset commit failed")
        assert count_events(database_url, [e["event_id"] for e in events]) == 40
        gate.restore()
        runner.stop(120)
        committed = {(tp.topic, tp.partition): tp.offset for tp in committed_offsets(gate.bootstrap, group)}
        assert committed[key] < end  # the commit did not land
        failed = [r for r in caplog.records if getattr(r, "event", None) == "commit_failed"]
        assert failed and failed[0].offsets == [f"{key[0]}[{key[1]}]@{end}"]

        again = ConsumerService(local, group_id=group, stop_at_end=True, batch_size=500)
        ServiceThread(again).start().join(120)
        assert again.totals == {"skipped": 40}  # re-read, recognised as stored, written nowhere
        assert count_events(database_url, [e["event_id"] for e in events]) == 40
        conn = psycopg2.connect(database_url)
        try:
            with conn, conn.cursor() as cur:
                assert ledger_gaps(cur) == []
                cur.execute("SELECT count(*), sum(stored) FROM ingest_ledger_ranges")
                assert cur.fetchone() == (1, 40)
        finally:
            conn.close()
        committed = {(tp.topic, tp.partition): tp.offset for tp in committed_offsets(gate.bootstrap, group)}
        assert committed[key] == end
    finally:
        blocker.close()
        gate.stop()

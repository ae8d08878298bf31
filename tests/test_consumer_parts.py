"""Unit tests of the consumer's parts, no broker and no database: batching,
outage backoff, rebalance handling, batch recording, row building, replay's
time lookup. Fakes stand in for the Kafka consumer and the broker."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import TopicPartition

from salespulse.contracts import ECOMMERCE_TOPIC
from salespulse.settings import DEFAULT_METRICS_PORTS, Settings
from services.consumer import backoff, batching
from services.consumer.backoff import DeadLettersUndelivered, Outage, backoff_delay, retry
from services.consumer.batching import BatchPolicy
from services.consumer.messages import ParsedMessage, RawMessage, parse
from services.consumer.metrics import BatchRecorder
from services.consumer.rebalance import Partitions, RebalanceListener
from services.consumer.replay import _offset_for_time, parse_timestamp
from services.consumer.results import WriteResult
from services.consumer.rows import build_row

EC = ECOMMERCE_TOPIC.name


def msg(partition: int = 0, offset: int = 0, topic: str = EC) -> ParsedMessage:
    return ParsedMessage(RawMessage(topic, partition, offset, b"k", b"{}"))


# ---------------------------------------------------------------- batching
class FakeConsume:
    """consume(num_messages, timeout): hands out the scripted bursts, one per call."""

    def __init__(self, bursts):
        self.bursts = list(bursts)
        self.calls: list[tuple[int, float]] = []

    def __call__(self, num_messages, timeout):
        self.calls.append((num_messages, timeout))
        burst = self.bursts.pop(0) if self.bursts else 0
        return [object()] * min(burst, num_messages)


def fill(policy: BatchPolicy, consume: FakeConsume, **kw) -> list:
    held: list = []
    policy.fill(consume, held.extend, lambda: len(held), lambda: False, **kw)
    return held


def test_a_batch_ends_when_a_call_returns_less_than_asked_within_the_linger():
    consume = FakeConsume([1, 30, 100])
    held = fill(BatchPolicy(100, 1.0, 0.01), consume)
    assert len(held) == 31  # the call asking for 99 got 30: the burst is over
    assert [n for n, _ in consume.calls] == [1, 99]
    assert consume.calls[1][1] <= 0.01


def test_a_backlog_fills_whole_batches():
    held = fill(BatchPolicy(50, 1.0, 0.01), FakeConsume([1, 1000]))
    assert len(held) == 50


def test_without_linger_the_first_call_asks_for_the_whole_batch():
    consume = FakeConsume([10, 10, 10, 10, 10])
    held = fill(BatchPolicy(30, 5.0, 0.0), consume)
    assert len(held) == 30 and consume.calls[0][0] == 30


def test_an_idle_stream_returns_an_empty_batch_after_one_short_wait():
    consume = FakeConsume([])
    assert fill(BatchPolicy(10, 5.0, 0.01), consume) == []
    assert consume.calls == [(1, batching.IDLE_POLL_S)]


def test_a_batch_ends_once_every_partition_is_at_its_end():
    held = fill(BatchPolicy(100, 5.0, 0.0), FakeConsume([3, 3, 3]), complete=lambda: True)
    assert len(held) == 3


def test_a_batch_policy_refuses_nonsense():
    with pytest.raises(ValueError):
        BatchPolicy(0, 1.0, 0.0)
    with pytest.raises(ValueError):
        BatchPolicy(10, 1.0, -1.0)


# ---------------------------------------------------------------- backoff
def test_backoff_doubles_from_half_a_second_up_to_fifteen():
    assert [backoff_delay(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [0.5, 1, 2, 4, 8, 15, 15]


def test_retry_waits_between_attempts_until_the_step_succeeds():
    outcomes = [RuntimeError("down"), RuntimeError("down"), "written"]
    waits, failures = [], []

    def step():
        result = outcomes.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    ok, value = retry(step, wait=waits.append, give_up=lambda n: False,
                      on_failure=lambda e, n: failures.append((str(e), n)))
    assert (ok, value) == (True, "written")
    assert failures == [("down", 1), ("down", 2)] and waits == [0.5, 1.0]


def test_retry_with_a_first_error_waits_before_trying_again_and_gives_up_when_told():
    calls = []

    def step():
        calls.append(1)
        raise RuntimeError("still down")

    ok, value = retry(step, wait=lambda s: None, give_up=lambda n: n >= 3, on_failure=lambda e, n: None,
                      first_error=RuntimeError("down"))
    assert (ok, value) == (False, None) and len(calls) == 2  # attempts 2 and 3; 1 was the first error


def test_retry_lets_errors_it_was_not_asked_to_retry_through():
    def step():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        retry(step, wait=lambda s: None, give_up=lambda n: False, on_failure=lambda e, n: None,
              retry_on=(DeadLettersUndelivered,))


def test_an_outage_shows_in_health_until_a_write_succeeds():
    outage = Outage()
    assert outage.ok and outage.health()["database"] == "up"
    outage.write_failed(RuntimeError("connection refused"), 1, 10, expected=True)
    assert not outage.ok
    assert outage.health()["database"] == "down" and outage.health()["last_error"] == "connection refused"
    assert backoff.DB_UP._value.get() == 0
    outage.write_succeeded()
    assert outage.ok and outage.health()["last_error"] is None and backoff.DB_UP._value.get() == 1
    outage.dlq_failed(DeadLettersUndelivered(["x"]), 1)
    assert not outage.ok and outage.health()["dead_letter_queue"] == "down"
    outage.dlq_succeeded()
    assert outage.ok


# ---------------------------------------------------------------- rebalances
class FakeIncarnations:
    def __init__(self):
        self.refreshed = 0

    def refresh(self):
        self.refreshed += 1


def test_offsets_are_committed_only_for_partitions_still_owned():
    parts = Partitions()
    parts.add({(EC, 0), (EC, 1)})
    batch = [msg(0, 5), msg(0, 7), msg(1, 3), msg(2, 9)]
    assert [(tp.partition, tp.offset) for tp in parts.commit_offsets(batch)] == [(0, 8), (1, 4)]
    parts.remove({(EC, 1)})
    assert [(tp.partition, tp.offset) for tp in parts.commit_offsets(batch)] == [(0, 8)]
    assert [m.raw.partition for m in parts.keep_owned(batch)] == [0, 0]


def test_a_fixed_assignment_owns_its_partitions_from_the_start():
    parts = Partitions([TopicPartition(EC, 3, 0)])
    assert parts.ever_assigned and parts.owns((EC, 3)) and not parts.stale((EC, 3))
    parts.eof.add((EC, 3))
    assert parts.at_end()


def test_offsets_going_back_are_noticed_and_reading_clears_the_end_mark():
    parts = Partitions()
    parts.add({(EC, 0)})
    parts.eof.add((EC, 0))
    assert not parts.went_back((EC, 0), 10) and not parts.at_end()
    assert not parts.went_back((EC, 0), 11)
    assert parts.went_back((EC, 0), 0)


def test_revoke_finishes_the_held_batches_before_dropping_the_partitions():
    parts, events = Partitions(), []
    pending = [msg(0, 1), msg(1, 1)]

    def forget(gone):
        events.append(("forget", gone))
        pending[:] = [m for m in pending if (m.raw.topic, m.raw.partition) not in gone]

    listener = RebalanceListener(parts, FakeIncarnations(), lambda: events.append(("finish", set(parts.assigned))),
                                 forget)
    listener.on_assign(None, [TopicPartition(EC, 0), TopicPartition(EC, 1)])
    assert listener.incarnations.refreshed == 1 and parts.ever_assigned
    listener.on_revoke(None, [TopicPartition(EC, 1)])
    assert events[0] == ("finish", {(EC, 0), (EC, 1)})  # finished while both were still ours
    assert parts.assigned == {(EC, 0)} and [m.raw.partition for m in pending] == [0]
    assert parts.stale((EC, 1))


def test_lost_partitions_are_dropped_without_finishing_anything():
    parts, finished = Partitions(), []
    listener = RebalanceListener(parts, FakeIncarnations(), lambda: finished.append(1), lambda gone: None)
    listener.on_assign(None, [TopicPartition(EC, 0)])
    listener.on_lost(None, [TopicPartition(EC, 0)])
    assert not finished and parts.assigned == set()


# ---------------------------------------------------------------- recording
def test_a_recorded_batch_adds_to_the_totals():
    result = WriteResult()
    counts = result.counts(EC)
    counts.stored, counts.duplicates, counts.dead_letters = 5, 2, 1
    result.skipped.append(msg(0, 1))
    recorder = BatchRecorder()
    recorder.record([msg()] * 9, result, parse_s=0.001, db_s=0.002, dlq_s=0, commit_s=0.001, total_s=0.004)
    recorder.record([msg()] * 9, result, parse_s=0.001, db_s=0.002, dlq_s=0, commit_s=0.001, total_s=0.004)
    assert recorder.totals == {"stored": 10, "duplicate": 4, "dead_letter": 2, "skipped": 2}
    assert recorder.last_batch_at is not None


# ---------------------------------------------------------------- rows
def event(**over) -> dict:
    base = {"event_id": str(uuid.uuid4()), "event_type": "purchase", "timestamp": "2026-01-01T10:00:00+00:00",
            "user_id": "u1", "session_id": "s1", "quantity": 2, "total_amount": 19.98, "payment_method": "card",
            "product": {"id": "P1", "name": "Tea\tpot", "category": "kitchen", "price": 9.99}}
    base.update(over)
    return base


def model(payload: dict):
    parsed = parse(RawMessage(EC, 0, 0, b"k", json.dumps(payload).encode()))
    assert parsed.valid, parsed.error
    return parsed.model


def test_the_same_content_written_differently_has_the_same_hash():
    e = event()
    same = dict(e, timestamp="2026-01-01T11:00:00+01:00")  # the same instant, another offset
    assert build_row(0, model(e)).digest == build_row(1, model(same)).digest
    other = dict(e, quantity=3, total_amount=29.97)
    assert build_row(0, model(e)).digest != build_row(1, model(other)).digest


# ---------------------------------------------------------------- replay's time lookup
class FakeReader:
    """Message timestamps by offset, as a broker would serve them."""

    def __init__(self, stamps: list[int]):
        self.stamps = stamps

    def timestamp_at(self, topic, partition, offset):
        return self.stamps[offset]

    def timestamps(self, topic, partition, start, end):
        yield from ((o, self.stamps[o]) for o in range(start, end))


def test_a_right_time_index_answer_is_used_and_a_wrong_one_is_replaced_by_a_scan():
    reader = FakeReader([100, 200, 300, 400])
    assert _offset_for_time(reader, EC, 0, 2, 0, 4, 250) == (2, True)
    assert _offset_for_time(reader, EC, 0, 0, 0, 4, 250) == (2, False)  # "offset 0 for any time"
    assert _offset_for_time(reader, EC, 0, -1, 0, 4, 999) == (4, True)  # after every message


def test_replay_times_are_iso_8601_and_naive_means_utc():
    assert parse_timestamp("1970-01-01T00:00:01") == 1000
    assert parse_timestamp("1970-01-01T01:00:01+01:00") == 1000


def test_nothing_in_salespulse_imports_the_services():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "salespulse"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "services"]
    assert offenders == []


def test_the_replay_command_is_registered_from_the_consumer_package():
    from salespulse.cli import build_parser

    args = build_parser().parse_args(["replay", "--topic", EC])
    assert args.func.__qualname__.startswith("command")
    assert args.topic == EC


def test_the_metrics_ports_are_settings_of_each_service_and_metrics_port_wins(monkeypatch):
    for name in ("METRICS_PORT", "PRODUCER_ECOMMERCE_METRICS_PORT", "PRODUCER_RESTAURANT_METRICS_PORT",
                 "CONSUMER_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    assert {s: defaults.service_metrics_port(s) for s in DEFAULT_METRICS_PORTS} == {
        "producer-ecommerce": 9101, "producer-restaurant": 9102, "consumer": 9103}
    monkeypatch.setenv("CONSUMER_METRICS_PORT", "9203")
    assert Settings().service_metrics_port("consumer") == 9203
    monkeypatch.setenv("METRICS_PORT", "0")  # one process, any free port
    assert Settings().service_metrics_port("consumer") == 0
    assert Settings().service_metrics_port("producer-restaurant") == 0

"""Unit tests of the consumer's parts, no broker and no database: batching,
the intake, outage backoff and holding, the write pipeline, rebalance
handling, the drain on stop, lag and progress, closing, batch recording, row
building, replay's time lookup. Fakes stand in for the Kafka consumer, the
broker, the writer and the dead-letter publisher."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC, TimestampWindow
from salespulse.settings import DEFAULT_METRICS_PORTS, Settings
from services.consumer import app, metrics
from services.consumer.app import BatchPolicy, ConsumerService, Drain, backoff_delay, retry
from services.consumer.dead_letters import DeadLettersUndelivered
from services.consumer.messages import Intake, ParsedMessage, RawMessage, build_row, parse
from services.consumer.metrics import LAG, BatchRecorder, Outage
from services.consumer.partitions import Partitions, Progress, assigned_lag
from services.consumer.replay import _offset_for_time, parse_timestamp
from services.consumer.store import DatabaseUnavailable, WriteResult

EC = ECOMMERCE_TOPIC.name
RO = RESTAURANT_TOPIC.name


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


class Held(list):
    """The batch being filled, as ``BatchPolicy.fill`` uses it."""

    bytes = 0

    def accept(self, msgs):
        self.extend(msgs)

    def largest_recent(self):
        return 0


def fill(policy: BatchPolicy, consume: FakeConsume, **kw) -> list:
    held = Held()
    policy.fill(consume, held, lambda: False, **kw)
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
    assert consume.calls == [(1, app.IDLE_POLL_S)]


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
    assert metrics.DB_UP._value.get() == 0
    outage.write_succeeded()
    assert outage.ok and outage.health()["last_error"] is None and metrics.DB_UP._value.get() == 1
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


def listening_service(finish, forget) -> ConsumerService:
    """A service whose rebalance callbacks are under test: ``finish`` stands for
    writing and committing what is held, ``forget`` for dropping pending messages."""
    svc = ConsumerService(Settings(), pipeline=False)
    svc.incarnations = FakeIncarnations()
    svc.flush = lambda max_attempts=None: finish()
    svc.intake.forget = forget
    return svc


def test_revoke_finishes_the_held_batches_before_dropping_the_partitions():
    events = []
    pending = [msg(0, 1), msg(1, 1)]

    def forget(gone):
        events.append(("forget", gone))
        pending[:] = [m for m in pending if (m.raw.topic, m.raw.partition) not in gone]

    listener = listening_service(lambda: events.append(("finish", set(parts.assigned))), forget)
    parts = listener.partitions
    listener.on_assign(None, [TopicPartition(EC, 0), TopicPartition(EC, 1)])
    assert listener.incarnations.refreshed == 1 and parts.ever_assigned
    listener.on_revoke(None, [TopicPartition(EC, 1)])
    assert events[0] == ("finish", {(EC, 0), (EC, 1)})  # finished while both were still ours
    assert parts.assigned == {(EC, 0)} and [m.raw.partition for m in pending] == [0]
    assert parts.stale((EC, 1))


def test_lost_partitions_are_dropped_without_finishing_anything():
    finished = []
    listener = listening_service(lambda: finished.append(1), lambda gone: None)
    parts = listener.partitions
    listener.on_assign(None, [TopicPartition(EC, 0)])
    listener.on_lost(None, [TopicPartition(EC, 0)])
    assert not finished and parts.assigned == set()


# ---------------------------------------------------------------- intake
class FakeError:
    def __init__(self, code: int, fatal: bool = False):
        self._code, self._fatal = code, fatal

    def code(self):
        return self._code

    def fatal(self):
        return self._fatal

    def __str__(self):
        return f"error {self._code}"


class FakeKafkaMessage:
    def __init__(self, partition: int, offset: int = 0, value: bytes | None = None, error: FakeError | None = None,
                 topic: str = EC):
        """``value`` None: a valid event."""
        value = json.dumps(event()).encode() if value is None else value
        self._topic, self._partition, self._offset, self._value, self._error = topic, partition, offset, value, error

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def key(self):
        return b"k"

    def value(self):
        return self._value

    def headers(self):
        return None

    def error(self):
        return self._error


class NamedIncarnations(FakeIncarnations):
    def get(self, topic):
        return f"{topic}#{self.refreshed}"


def intake(*assigned: int) -> Intake:
    parts = Partitions()
    parts.add({(EC, p) for p in assigned})
    return Intake(parts, NamedIncarnations(), TimestampWindow())


def test_the_intake_reads_messages_against_their_contract_with_their_incarnation():
    held = intake(0)
    held.accept([FakeKafkaMessage(0, 0, b"not json"), FakeKafkaMessage(0, 1, b"")])
    assert len(held) == 2 and all(not m.valid for m in held.messages)
    assert {m.raw.incarnation for m in held.messages} == {f"{EC}#0"}
    held.accept([FakeKafkaMessage(0, 0)])  # offsets went back: a re-delivery or a re-created topic
    assert held.messages[-1].raw.incarnation == f"{EC}#1"


def test_the_intake_marks_ends_skips_errors_and_revoked_partitions_and_raises_on_fatal_errors():
    held = intake(0)
    held.partitions.add({(EC, 1)})
    held.partitions.remove({(EC, 1)})
    held.accept([FakeKafkaMessage(0, error=FakeError(KafkaError._PARTITION_EOF)),
                 FakeKafkaMessage(0, error=FakeError(KafkaError._TRANSPORT)),
                 FakeKafkaMessage(1, 5)])  # revoked meanwhile
    assert len(held) == 0 and held.partitions.eof == {(EC, 0)}
    with pytest.raises(KafkaException):
        held.accept([FakeKafkaMessage(0, error=FakeError(KafkaError._FATAL, fatal=True))])


def test_a_batch_taken_from_the_intake_can_go_back_in_front_and_revoked_partitions_are_forgotten():
    held = intake(0, 1)
    held.accept([FakeKafkaMessage(0, 0), FakeKafkaMessage(1, 0)])
    batch, seconds = held.take()
    assert len(batch) == 2 and seconds >= 0 and len(held) == 0 and held.parse_seconds == 0
    held.accept([FakeKafkaMessage(0, 1)])
    held.put_back(batch)
    assert [(m.raw.partition, m.raw.offset) for m in held.messages] == [(0, 0), (1, 0), (0, 1)]
    held.forget({(EC, 1)})
    assert [(m.raw.partition, m.raw.offset) for m in held.messages] == [(0, 0), (0, 1)]


# ---------------------------------------------------------------- holding and the write pipeline
class FakeConsumer:
    """The Kafka consumer as the parts use it; records what is done to it."""

    def __init__(self, arrivals=(), partitions=(0,)):
        self.arrivals = list(arrivals)
        self.partitions = [TopicPartition(EC, p) for p in partitions]
        self.events: list = []
        self.on_poll = lambda: None  # what else a poll does (e.g. a rebalance callback)

    def consume(self, num_messages, timeout):
        self.on_poll()
        self.events.append("poll")
        return [self.arrivals.pop(0)] if self.arrivals else []

    def assignment(self):
        return self.partitions

    def pause(self, parts):
        self.events.append("pause")

    def resume(self, parts):
        self.events.append("resume")

    def commit(self, offsets, asynchronous):
        assert asynchronous is False
        self.events.append(("commit", [(tp.partition, tp.offset) for tp in offsets]))

    def close(self):
        self.events.append("close")


def test_a_hold_pauses_the_partitions_keeps_polling_and_resumes_on_release():
    consumer = FakeConsumer([FakeKafkaMessage(0, 7)])
    hold = service(FakeWriter(), consumer)
    consumer.on_poll = hold.stop
    held = hold.intake
    hold.hold(60)  # ends when stopped (here: after the first poll)
    assert consumer.events == ["pause", "poll"] and hold.paused
    assert [m.raw.offset for m in held.messages] == [7]  # an arrival joins the batch being filled
    hold.resume()
    hold.resume()
    assert consumer.events[-1] == "resume" and consumer.events.count("resume") == 1 and not hold.paused


class FakeWriter:
    def __init__(self, failures: int = 0, error: Exception | None = None):
        self.failures, self.error, self.calls = failures, error, []

    def write(self, batch):
        self.calls.append(len(batch))
        if self.failures:
            self.failures -= 1
            raise self.error or DatabaseUnavailable("connection refused")
        result = WriteResult()
        result.counts(EC).stored = sum(1 for m in batch if m.valid)
        result.counts(EC).dead_letters = sum(1 for m in batch if not m.valid)
        result.dead_letters = [m for m in batch if not m.valid]
        return result


class FakeDeadLetters:
    def __init__(self, consumer: FakeConsumer, failures: int = 0):
        self.consumer, self.failures = consumer, failures

    def publish(self, dead):
        self.consumer.events.append(("dlq", len(dead)))
        if self.failures:
            self.failures -= 1
            return ["broker down"]
        return []


def service(writer, consumer: FakeConsumer, dlq_failures: int = 0) -> ConsumerService:
    """A service as its loop leaves it once running: fakes for the Kafka
    consumer, the writer and the dead-letter publisher; partition 0 assigned."""
    svc = ConsumerService(Settings(), batch_size=10)
    svc.consumer, svc.writer = consumer, writer
    svc.dead_letters = FakeDeadLetters(consumer, dlq_failures)
    svc.incarnations = NamedIncarnations()
    svc.intake = Intake(svc.partitions, svc.incarnations, TimestampWindow())
    svc.drain.filling = svc.intake
    svc.partitions.add({(EC, 0)})
    return svc


pipeline = service


@pytest.fixture
def quick_backoff(monkeypatch):
    monkeypatch.setattr(app, "BACKOFF_INITIAL_S", 0.001)


def test_a_batch_is_written_then_its_dead_letters_published_then_its_offsets_committed(quick_backoff):
    consumer = FakeConsumer()
    p = pipeline(FakeWriter(), consumer)
    p.intake.accept([FakeKafkaMessage(0, 0), FakeKafkaMessage(0, 1, b"not json"), FakeKafkaMessage(0, 2)])
    p.submit()
    assert p.held == 3 and len(p.intake) == 0
    assert p.complete()
    assert consumer.events == [("dlq", 1), ("commit", [(0, 3)])]
    assert p.recorder.totals == {"stored": 2, "dead_letter": 1} and p.held == 0
    p.close_writer()


def test_a_failed_write_is_retried_holding_the_partitions_then_they_resume(quick_backoff):
    consumer = FakeConsumer()
    p = pipeline(FakeWriter(failures=2), consumer)
    p.intake.accept([FakeKafkaMessage(0, 0)])
    p.submit()
    assert p.complete()
    assert p.writer.calls == [1, 1, 1] and p.outage.ok
    assert consumer.events[0] == "pause" and consumer.events[-2:] == [("commit", [(0, 1)]), "resume"]
    p.close_writer()


def test_a_batch_given_up_goes_back_in_front_of_the_next_one_uncommitted(quick_backoff):
    consumer = FakeConsumer()
    p = pipeline(FakeWriter(failures=99, error=ValueError("a bug")), consumer)
    p.intake.accept([FakeKafkaMessage(0, 0), FakeKafkaMessage(0, 1)])
    p.submit()
    p.intake.accept([FakeKafkaMessage(0, 2)])
    assert not p.complete(max_attempts=2)
    assert p.inflight is None and [m.raw.offset for m in p.intake.messages] == [0, 1, 2]
    assert not [e for e in consumer.events if e[0] == "commit"] and not p.outage.ok
    p.close_writer()


def test_undelivered_dead_letters_hold_the_offsets_until_they_are_delivered(quick_backoff):
    consumer = FakeConsumer()
    p = pipeline(FakeWriter(), consumer, dlq_failures=1)
    p.intake.accept([FakeKafkaMessage(0, 0, b"")])
    assert p.flush()  # the batch being filled is written too
    steps = [e for e in consumer.events if e not in ("poll", "pause", "resume")]
    assert steps == [("dlq", 1), ("dlq", 1), ("commit", [(0, 1)])] and p.outage.ok
    p.close_writer()


def test_after_a_loop_failure_nothing_more_is_committed(quick_backoff):
    consumer = FakeConsumer()
    p = pipeline(FakeWriter(), consumer)
    p.intake.accept([FakeKafkaMessage(0, 0)])
    p.submit()
    p.failed = True
    assert not p.complete() and not p.flush()
    p.close_writer()
    assert consumer.events == [] and p.inflight is None


# ---------------------------------------------------------------- drain on stop, lag, progress
def drain(seconds: float, lag):
    parts = Partitions()
    parts.add({(EC, 0), (EC, 1)})
    filling: list = []
    return Drain(seconds, parts, lambda: lag, filling), filling


def test_without_a_drain_a_stop_is_at_once():
    d, _ = drain(0.0, None)
    assert not d.stopped()
    d.request()
    assert d.stopped() and d.requested.is_set()


def test_a_drain_stops_once_every_assigned_partition_is_caught_up():
    lag = {(EC, 0): 0, (EC, 1): 4}
    d, filling = drain(120.0, lag)
    d.check()
    assert not d.stopped()  # no stop requested
    d.request()
    d.check()
    assert not d.stopped()
    lag[(EC, 1)] = 0
    filling.append(msg())
    d.check()
    assert not d.stopped()  # a batch is still being filled
    filling.clear()
    d.check()
    assert d.stopped()


def test_a_drain_stops_when_its_time_is_over_or_the_partitions_are_gone():
    d, _ = drain(120.0, None)
    d.request()
    d.check()
    d.deadline -= 121
    d.check()
    assert d.stopped()
    d, _ = drain(120.0, {(EC, 0): 5})
    d.request()
    d.partitions.remove({(EC, 0), (EC, 1)})
    d.check()
    assert d.stopped()


def test_the_lag_is_summed_per_topic_for_the_gauge_and_health():
    parts = Partitions()
    parts.add({(EC, 0), (EC, 1)})
    progress = Progress([EC, RO], parts, BatchRecorder(), lambda: {(EC, 0): 3, (EC, 1): 4})
    progress.tick()
    assert progress.lag == {EC: 7, RO: 0}
    assert LAG.labels(EC)._value.get() == 7 and LAG.labels(RO)._value.get() == 0


def test_a_consumer_s_lag_is_unknown_before_an_assignment_or_when_the_client_fails():
    parts = Partitions()
    assert assigned_lag(FakeConsumer(), parts) is None
    parts.add({(EC, 0)})
    assert assigned_lag(None, parts) is None

    class Failing:
        def position(self, partitions):
            raise KafkaException("client failed")

    assert assigned_lag(Failing(), parts) is None


# ---------------------------------------------------------------- closing the consumer
def close(parts: Partitions, consumer: FakeConsumer, *, failed=False, assign_on_poll=False, holding=False):
    flushed = []
    svc = ConsumerService(Settings(), assignment=None)
    svc.consumer, svc.partitions, svc.failed = consumer, parts, failed
    svc.intake = Intake(parts, NamedIncarnations(), TimestampWindow())
    svc.flush = lambda max_attempts=None: flushed.append(1)
    if assign_on_poll:
        consumer.on_poll = lambda: parts.add({(EC, 0)})
    if holding:
        svc.intake.messages.append(msg())
    closed = svc._close_consumer()
    return closed, len(flushed)


def test_a_consumer_that_got_its_partitions_is_flushed_then_closed():
    consumer = FakeConsumer()
    assert close(Partitions([TopicPartition(EC, 0)]), consumer) == (True, 1)
    assert consumer.events == ["close"]
    consumer = FakeConsumer()
    # joined during the grace: what it read is written, then whatever is left, then it closes
    assert close(Partitions(), consumer, assign_on_poll=True, holding=True) == (True, 2)
    assert consumer.events == ["poll", "close"]


def test_a_consumer_stopped_before_its_first_assignment_is_left_unclosed(monkeypatch):
    monkeypatch.setattr(app, "JOIN_GRACE_S", 0.0)
    consumer = FakeConsumer()
    assert close(Partitions(), consumer) == (False, 0)
    assert "close" not in consumer.events and consumer in app._ABANDONED
    consumer = FakeConsumer()
    assert close(Partitions(), consumer, failed=True) == (False, 0)  # after a failure: no wait
    assert consumer.events == []


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
                 "CONSUMER_METRICS_PORT", "BROKER_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    assert {s: defaults.service_metrics_port(s) for s in DEFAULT_METRICS_PORTS} == {
        "producer-ecommerce": 9101, "producer-restaurant": 9102, "consumer": 9103, "broker": 9104}
    monkeypatch.setenv("CONSUMER_METRICS_PORT", "9203")
    assert Settings().service_metrics_port("consumer") == 9203
    monkeypatch.setenv("METRICS_PORT", "0")  # one process, any free port
    assert Settings().service_metrics_port("consumer") == 0
    assert Settings().service_metrics_port("producer-restaurant") == 0


def test_the_command_line_refuses_a_fetch_wait_below_one_millisecond(capsys):
    from services.consumer.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["--fetch-wait-ms", "0"])
    assert exited.value.code == 2
    assert "--fetch-wait-ms" in capsys.readouterr().err


def test_the_fetch_wait_setting_reaches_the_kafka_consumer_config():
    service = ConsumerService(Settings(consumer_fetch_wait_ms=7), pipeline=False)
    assert service.fetch_wait_ms == 7
    assert ConsumerService(Settings(), fetch_wait_ms=3, pipeline=False).fetch_wait_ms == 3


def test_garbage_collector_tuning_freezes_the_startup_heap_and_raises_the_young_threshold():
    import gc

    from services.consumer.__main__ import THRESHOLDS, tune_garbage_collector

    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

"""The consumer's memory is bounded in bytes, whatever the message sizes: a
batch is written once it holds CONSUMER_BATCH_MAX_BYTES (key + value bytes),
and librdkafka's prefetch is bounded (salespulse.kafka.prefetch_config)."""

from __future__ import annotations

import json
import uuid

from confluent_kafka import Consumer

from salespulse.contracts import ECOMMERCE_TOPIC
from salespulse.kafka import consumer_config, prefetch_config
from services.consumer.app import ConsumerService
from services.consumer.app import BatchPolicy
from services.consumer.messages import message_bytes
from tests.support.consumer import (
    ServiceThread,
    count_events,
    ecommerce_event,
    group_at_end,
    produce,
    query,
    unique_group,
)

EC = ECOMMERCE_TOPIC.name


class Sized:
    def __init__(self, n: int):
        self.n = n


class Held(list):
    """The batch being filled, as ``BatchPolicy.fill`` uses it (messages of ``n`` bytes)."""

    def accept(self, msgs):
        self.extend(msgs)

    @property
    def bytes(self):
        return sum(m.n for m in self)

    def largest_recent(self):
        return max((m.n for m in self), default=0)


def test_a_batch_of_big_messages_ends_at_the_byte_bound():
    """Count bound 500, byte bound 1,000: messages of 300 bytes make batches
    of 4 (the 4th crosses the bound): the first call takes one message, later
    ones no more than the bytes left allow at the batch's average size."""
    queue = [Sized(300)] * 50
    asked = []

    def consume(num_messages, timeout):
        asked.append(num_messages)
        out = queue[:num_messages]
        del queue[:num_messages]
        return out

    held = Held()
    policy = BatchPolicy(500, 5.0, 0.0, max_bytes=1000)
    policy.fill(consume, held, lambda: False)
    assert len(held) == 4 and sum(m.n for m in held) == 1200
    assert asked == [1, 2, 1]  # one message first, then what fits at the average size
    # without a byte bound the same backlog is one batch of every message
    queue[:] = [Sized(300)] * 50
    held = Held()
    BatchPolicy(500, 5.0, 0.0).fill(consume, held, lambda: False)
    assert len(held) == 50


def test_after_big_messages_a_small_first_message_does_not_open_the_batch_wide():
    """The first message of a batch is small, but the previous batch's were
    big: the next call asks for what fits at the big size, not the small one."""
    policy = BatchPolicy(500, 5.0, 0.0, max_bytes=1000)
    assert policy.room(1, 10) == min(499, 990 // 10)  # the average size alone: 99
    assert policy.room(1, 10, largest=300) == 3  # 990 bytes left at 300 each
    assert policy.room(3, 990, largest=300) == 1  # at least one while bytes are left
    assert policy.room(4, 1000, largest=300) == 0
    assert BatchPolicy(500, 5.0, 0.0).room(1, 10, largest=300) == 499  # no byte bound


def test_the_prefetch_bounds_are_accepted_by_librdkafka(broker):
    for queue in (1 << 20, 16 << 20, 256 << 20):
        cfg = prefetch_config(queue)
        assert cfg["queued.max.messages.kbytes"] * 1024 <= max(queue, 1 << 20)
        assert cfg["fetch.max.bytes"] >= 1_000_000  # one message of the default message.max.bytes
        Consumer(consumer_config(broker.bootstrap, unique_group("prefetch"), **cfg)).close()
    assert consumer_config(broker.bootstrap, "g")["queued.max.messages.kbytes"] == 16 * 1024


def test_the_consumer_splits_a_backlog_of_big_messages_by_bytes(settings, database_url, broker, monkeypatch):
    """24 bad messages of 300 KB and 20 valid events on one partition, read from
    the real broker by the real consumer loop with batches of up to 500
    messages and 5 s: the 1 MiB byte bound splits them into batches of at most
    1 MiB + one message, and every message still ends in exactly one place."""
    run = uuid.uuid4().hex[:8]
    key = run.encode()  # one key: one partition, in order
    big = [b"[" + bytes([48 + i % 10]) * 300_000 for i in range(24)]
    events = [ecommerce_event(i, run=run, user_id=run) for i in range(20)]
    messages = []
    for i, value in enumerate(big):
        messages.append((key, value))
        if i < len(events):
            messages.append((key, json.dumps(events[i]).encode()))
    # the group starts where these messages start: earlier tests' messages on the
    # session-wide broker (some of them near 1 MB) would make other batches
    group = group_at_end(broker.bootstrap, "batch-bytes")
    produce(broker.bootstrap, EC, messages)

    bound = 1 << 20
    svc = ConsumerService(settings.model_copy(update={"metrics_port": 0, "consumer_batch_max_bytes": bound}),
                          group_id=group, stop_at_end=True, batch_size=500,
                          max_wait_ms=5000, linger_ms=0)
    batches: list[tuple[int, int, int]] = []  # (messages, bytes, largest message)
    write = svc.writer.write

    def recording_write(batch, **kw):
        sizes = [message_bytes(m) for m in batch]
        batches.append((len(batch), sum(sizes), max(sizes)))
        return write(batch, **kw)

    monkeypatch.setattr(svc.writer, "write", recording_write)
    ServiceThread(svc).start().join(180)

    assert count_events(database_url, [e["event_id"] for e in events]) == 20
    assert query(database_url, "SELECT count(*), sum(payload_bytes) FROM dead_letters WHERE key = %s",
                 (run,)) == [(24, 24 * 300_001)]
    assert all(size - largest < bound for _n, size, largest in batches), batches
    mine = sum(n for n, *_ in batches)
    assert mine >= len(messages)
    # 7.2 MB of payloads at most 1 MiB + one message a batch: at least 6 batches
    # (without the bound: one, filled for up to 5 s or 500 messages)
    assert sum(1 for _n, size, _l in batches if size > 250_000) >= -(-24 * 300_001 // (bound + 300_009)), batches

"""``salespulse replay``: re-ingest a topic into the database, idempotently.

Part of the consumer package, which registers the command with ``salespulse``
(``register``, listed in ``salespulse.cli.COMMAND_MODULES``). The consumer's
own code path does the work (``ConsumerService`` with an explicit
``assignment`` and ``stop_at_end=True``):
the same validation, dead letters and idempotent writes (natural keys
``event_id``/``order_id``), so replaying messages that are already stored is a
no-op, and replaying twice stores nothing the second time. It runs under a
throwaway group id (deleted afterwards), so the live group's offsets are never
touched and the running consumers go on undisturbed.

Start positions (per partition, clamped to what the broker still retains):

* ``--from-offset N``: offset N (a partition whose end is <= N has nothing
  to replay; one whose retained start is > N starts there);
* ``--from-timestamp ISO``: the first message whose timestamp is >= that time.
  The broker's time index is asked first (``Consumer.offsets_for_times``);
  its answer is then checked against the messages' own timestamps, and when
  it is wrong (the embedded broker answers offset 0 for any time) the
  partition is scanned instead. A broker that fails the request is reported
  as a clear error (use ``--from-offset``);
* neither: the earliest retained offset.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
import uuid
from datetime import datetime, timezone

from confluent_kafka import (OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException,
                             TopicPartition)

from salespulse.contracts import TOPICS
from salespulse.kafka import admin_client, consumer_config, existing_topics
from salespulse.lag import observed_watermarks
from salespulse.ops import OpsError, command
from salespulse.settings import Settings, get_settings

log = logging.getLogger(__name__)


def parse_timestamp(text: str) -> int:
    """ISO-8601 (naive = UTC) -> milliseconds since the epoch."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise OpsError(f"not an ISO-8601 time: {text!r} (e.g. 2026-11-23T18:00:00Z)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


class _Reader:
    """Reads single messages by offset (assign-only consumer, never joins a group)."""

    def __init__(self, bootstrap: str):
        self.consumer = Consumer(consumer_config(bootstrap, f"salespulse-replay-probe-{uuid.uuid4().hex}",
                                                 **{"enable.partition.eof": True, "statistics.interval.ms": 0}))

    def timestamps(self, topic: str, partition: int, start: int, end: int, timeout: float = 30.0):
        """Yield (offset, timestamp_ms) for offsets start..end-1, in order."""
        self.consumer.assign([TopicPartition(topic, partition, start)])
        expected = start
        deadline = time.monotonic() + timeout
        while expected < end:
            msg = self.consumer.poll(0.5)
            if msg is None:
                if time.monotonic() > deadline:
                    raise OpsError(f"{topic}[{partition}]: no message at offset {expected} within {timeout}s")
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    if expected < end and time.monotonic() > deadline:
                        raise OpsError(f"{topic}[{partition}]: end of partition before offset {end}")
                    continue
                raise OpsError(f"{topic}[{partition}]: {msg.error()}")
            if msg.offset() < expected:
                continue
            kind, ts = msg.timestamp()
            if kind == TIMESTAMP_NOT_AVAILABLE:
                raise OpsError(f"{topic}[{partition}] offset {msg.offset()} has no timestamp: use --from-offset")
            deadline = time.monotonic() + timeout
            expected = msg.offset() + 1
            yield msg.offset(), ts

    def timestamp_at(self, topic: str, partition: int, offset: int) -> int:
        for _offset, ts in self.timestamps(topic, partition, offset, offset + 1):
            return ts
        raise OpsError(f"{topic}[{partition}]: no message at offset {offset}")

    def close(self) -> None:
        self.consumer.close()


def _offset_for_time(reader: _Reader, topic: str, partition: int, answer: int, low: int, high: int,
                     ts_ms: int) -> tuple[int, bool]:
    """The first offset in [low, high) whose timestamp is >= ts_ms (high if none);
    ``answer`` is the broker's; returns (offset, broker_was_right)."""
    if high <= low:
        return high, True
    at_end = answer < 0 or answer >= high
    if at_end:
        if reader.timestamp_at(topic, partition, high - 1) < ts_ms:
            return high, True
    elif answer >= low:
        ok = reader.timestamp_at(topic, partition, answer) >= ts_ms
        if ok and answer > low:
            ok = reader.timestamp_at(topic, partition, answer - 1) < ts_ms
        if ok:
            return answer, True
    for offset, ts in reader.timestamps(topic, partition, low, high):
        if ts >= ts_ms:
            return offset, False
    return high, False


def start_offsets(bootstrap: str, topic: str, partitions: list[int], *, from_offset: int | None = None,
                  from_timestamp_ms: int | None = None, timeout: float = 15.0
                  ) -> tuple[dict[int, int], dict[int, int], list[str]]:
    """(start offset per partition, end (high watermark) per partition, notes)."""
    marks = observed_watermarks(bootstrap, [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions], timeout)
    notes: list[str] = []
    lows, highs = {}, {}
    for p in partitions:
        low, high = marks[(topic, p)]
        if high is None:
            raise OpsError(f"{topic}[{p}]: high watermark unknown after {timeout}s (is the broker up?)")
        lows[p], highs[p] = (low or 0), high
    starts: dict[int, int] = {}
    if from_timestamp_ms is not None:
        probe = Consumer(consumer_config(bootstrap, f"salespulse-replay-probe-{uuid.uuid4().hex}",
                                         **{"statistics.interval.ms": 0}))
        try:
            answers = probe.offsets_for_times([TopicPartition(topic, p, from_timestamp_ms) for p in partitions],
                                              timeout=timeout)
        except KafkaException as exc:
            raise OpsError(f"the broker failed the time lookup (offsets_for_times): {exc}; "
                           "replay with --from-offset instead") from None
        finally:
            probe.close()
        bad = [a for a in answers if a.error is not None]
        if bad:
            raise OpsError(f"the broker failed the time lookup (offsets_for_times) for {topic}: "
                           f"{bad[0].error}; replay with --from-offset instead")
        reader = _Reader(bootstrap)
        try:
            for answer in answers:
                p = answer.partition
                starts[p], right = _offset_for_time(reader, topic, p, answer.offset, lows[p], highs[p],
                                                    from_timestamp_ms)
                if not right:
                    notes.append(f"{topic}[{p}]: the broker's time index answered offset {answer.offset}, "
                                 f"which does not match the message timestamps; found {starts[p]} by scanning")
        finally:
            reader.close()
        return starts, highs, notes
    for p in partitions:
        want = lows[p] if from_offset is None else from_offset
        if want < lows[p]:
            notes.append(f"{topic}[{p}]: offset {want} is no longer retained; starting at {lows[p]}")
            want = lows[p]
        starts[p] = min(want, highs[p])
    return starts, highs, notes


def replay(settings: Settings, topic: str, *, partitions: list[int] | None = None, from_offset: int | None = None,
           from_timestamp_ms: int | None = None, batch_size: int | None = None) -> dict:
    """Replay ``topic`` into the database; return a summary (offsets and counts)."""
    if topic not in TOPICS:
        raise OpsError(f"cannot replay {topic!r}: replay one of the data topics ({', '.join(TOPICS)})")
    if from_offset is not None and from_offset < 0:
        raise OpsError("--from-offset must be >= 0")
    bootstrap = settings.kafka_bootstrap_servers
    count = existing_topics(admin_client(bootstrap)).get(topic)
    if count is None:
        raise OpsError(f"topic {topic} does not exist on {bootstrap}")
    chosen = sorted(set(partitions)) if partitions else list(range(count))
    wrong = [p for p in chosen if not 0 <= p < count]
    if wrong:
        raise OpsError(f"{topic} has partitions 0..{count - 1}; no partition {wrong[0]}")
    starts, ends, notes = start_offsets(bootstrap, topic, chosen, from_offset=from_offset,
                                        from_timestamp_ms=from_timestamp_ms)
    assignment = [TopicPartition(topic, p, starts[p]) for p in chosen if starts[p] < ends[p]]
    summary = {"topic": topic, "partitions": {p: {"from": starts[p], "to": ends[p]} for p in chosen},
               "messages": sum(ends[p] - starts[p] for p in chosen), "notes": notes,
               "stored": 0, "duplicate": 0, "dead_letter": 0, "group": None}
    if not assignment:
        return summary

    from .app import ConsumerService  # the consumer's own write path (imported when a replay runs)

    group = f"salespulse-replay-{uuid.uuid4().hex[:12]}"
    summary["group"] = group
    service = ConsumerService(settings.model_copy(update={"metrics_port": 0}), group_id=group,
                              assignment=assignment, stop_at_end=True, batch_size=batch_size)
    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: service.stop())
    except ValueError:  # not the main thread (tests): no signal handling
        pass
    try:
        service.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    totals = service.totals
    summary.update({k: totals.get(k, 0) for k in ("stored", "duplicate", "dead_letter")})
    summary["interrupted"] = service.stopping
    try:  # the throwaway group's offsets are of no further use
        admin = admin_client(bootstrap)
        admin.list_topics(timeout=10)  # connected first: a cold admin's DeleteGroups can hang (embedded broker)
        admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    except Exception as exc:  # noqa: BLE001 - best effort clean-up
        log.warning("could not delete replay group %s: %r", group, exc)
    return summary


def cmd_replay(args) -> int:
    settings = get_settings()
    ts = parse_timestamp(args.from_timestamp) if args.from_timestamp else None
    summary = replay(settings, args.topic, partitions=args.partition, from_offset=args.from_offset,
                     from_timestamp_ms=ts, batch_size=args.batch_size)
    for note in summary["notes"]:
        print(f"note: {note}", file=sys.stderr)
    ranges = ", ".join(f"[{p}] {r['from']}..{r['to']}" for p, r in summary["partitions"].items())
    print(f"replayed {summary['messages']} message(s) of {summary['topic']} ({ranges}): "
          f"{summary['stored']} stored, {summary['duplicate']} already stored, "
          f"{summary['dead_letter']} dead letters")
    return 130 if summary.get("interrupted") else 0


def register(subparsers) -> None:
    """Add ``salespulse replay`` (called by ``salespulse.cli``)."""
    replay_cmd = subparsers.add_parser("replay", help="re-ingest a topic into the database (idempotent)")
    replay_cmd.add_argument("--topic", required=True, help="data topic (ecommerce.events, restaurant.orders)")
    start = replay_cmd.add_mutually_exclusive_group()
    start.add_argument("--from-offset", type=int, help="first offset to replay (default: the earliest)")
    start.add_argument("--from-timestamp", help="ISO-8601 time: replay messages from this time on (naive = UTC)")
    replay_cmd.add_argument("--partition", type=int, action="append",
                            help="partition to replay (repeatable; default: every partition)")
    replay_cmd.add_argument("--batch-size", type=int, default=None, help="messages per database transaction")
    replay_cmd.set_defaults(func=command(__name__, "cmd_replay"))

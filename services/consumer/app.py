"""The consumer service: Kafka -> validate -> PostgreSQL, offsets after the DB commit.

Loop (one thread): ``consume(num_messages=batch_size, timeout=...)`` until the
batch is full, ``max_wait_ms`` has passed since it started, or no message came
for ``linger_ms`` (so a slow stream is written at once, a fast one in full
batches); parse every
message against its contract; write the batch in ONE transaction (valid rows +
dead letters, idempotent); publish the dead letters to ``<topic>.dlq`` and
flush; only then commit the batch's offsets synchronously.

A database outage holds the batch: the assigned partitions are paused, the
consumer keeps being polled (so ``max.poll.interval.ms`` is never exceeded and
the group keeps its members), and the write is retried with capped
exponential backoff until it succeeds; /health says "unhealthy" meanwhile.
Nothing is skipped and no offset moves until the rows are committed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from salespulse.contracts import TOPICS
from salespulse.kafka import cached_lag, consumer_config, ensure_topics, producer_config
from salespulse.observability import serve_health_and_metrics
from salespulse.settings import ROLE_INGEST, Settings

from .writer import BatchWriter, DatabaseUnavailable, ParsedMessage, RawMessage, WriteResult, parse

log = logging.getLogger("services.consumer")

DEFAULT_METRICS_PORT = 9103
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 15.0
REVOKE_WRITE_ATTEMPTS = 3
JOIN_GRACE_S = 20.0
# librdkafka's default (500 ms) is a latency floor with a broker that holds a
# fetch for its full max wait when no data is there at first (tansu does);
# Apache Kafka answers as soon as data arrives, so 100 ms only costs idle polls.
FETCH_WAIT_MAX_MS = 100  # on stop before the first assignment: wait this long for it (defect 4)

# -- metrics (process-wide registry; shared by every service instance) ---------
MESSAGES = Counter("salespulse_consumer_messages_total",
                   "Messages processed, by topic and outcome (stored, duplicate, dead_letter)",
                   ["topic", "outcome"])
DEAD_LETTERS = Counter("salespulse_consumer_dead_letters_total", "Messages sent to the dead-letter queue", ["topic"])
BATCH_SECONDS = Histogram("salespulse_consumer_batch_seconds",
                          "Time per batch and stage (parse, db, dlq, commit, total)", ["stage"],
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
BATCH_SIZE = Histogram("salespulse_consumer_batch_messages", "Messages per written batch",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000))
LAG = Gauge("salespulse_consumer_lag", "Messages behind the high watermark (cached), by topic", ["topic"])
DB_RETRIES = Counter("salespulse_consumer_db_retries_total", "Failed batch writes that were retried")
DB_UP = Gauge("salespulse_consumer_db_up", "1 while the database accepts writes, 0 during an outage")
DLQ_RETRIES = Counter("salespulse_consumer_dlq_retries_total", "Failed dead-letter publications that were retried")
REBALANCES = Counter("salespulse_consumer_rebalances_total", "Partition assignment changes", ["kind"])
ASSIGNED = Gauge("salespulse_consumer_assigned_partitions", "Partitions assigned to this process")
COMMIT_FAILURES = Counter("salespulse_consumer_commit_failures_total", "Offset commits that failed")

# Consumers that must not be closed (stopped before their first assignment,
# tansu defect 4): referenced here so they are never destroyed (destroy = close).
_ABANDONED: list[Consumer] = []


def _tp(tp) -> tuple[str, int]:
    return tp.topic, tp.partition


@dataclass
class _InFlight:
    """A batch being written by the background writer thread."""

    batch: list[ParsedMessage]
    parse_seconds: float
    started: float
    future: Future


class ConsumerService:
    """The ingestion consumer. ``run()`` blocks; ``stop()`` is thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str | None = None,
        assignment: list[TopicPartition] | None = None,
        stop_at_end: bool = False,
        batch_size: int | None = None,
        max_wait_ms: int | None = None,
        linger_ms: int | None = None,
    ):
        self.settings = settings
        # assign() mode (replays) commits under its own group by default, so a replay
        # never moves the live group's offsets
        default_group = settings.consumer_group if assignment is None else f"{settings.consumer_group}-replay"
        self.group_id = group_id or default_group
        self.assignment = list(assignment) if assignment is not None else None
        self.stop_at_end = stop_at_end
        self.batch_size = int(batch_size or settings.consumer_batch_size)
        self.max_wait = (max_wait_ms if max_wait_ms is not None else settings.consumer_batch_max_wait_ms) / 1000.0
        self.linger = (linger_ms if linger_ms is not None else settings.consumer_batch_linger_ms) / 1000.0
        if self.batch_size < 1 or self.max_wait <= 0 or self.linger < 0:
            raise ValueError("batch size and max wait must be positive, linger not negative")
        self.topics = list(TOPICS)
        self.writer = BatchWriter(settings.role_url(ROLE_INGEST))
        # CONSUMER_PIPELINE=0: write each batch before consuming the next (for A/B benchmarks)
        self.pipeline = os.environ.get("CONSUMER_PIPELINE", "1") != "0"

        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._server = None
        self.metrics_port: int | None = None

        self._pending: list[ParsedMessage] = []  # the batch being filled
        self._inflight: _InFlight | None = None  # the batch being written meanwhile
        self._executor: ThreadPoolExecutor | None = None
        self._batch_started = 0.0
        self._parse_seconds = 0.0
        self._assigned: set[tuple[str, int]] = set()
        self._ever_assigned = False
        self._eof: set[tuple[str, int]] = set()
        self._paused = False
        self._flushing = False
        self._db_ok = True
        self._dlq_ok = True
        self._outage_since: float | None = None
        self._last_error: str | None = None
        self._last_batch_at: float | None = None
        self._lag: dict[str, int] = {}
        self._last_lag_update = 0.0
        self._totals = defaultdict(int)
        self._last_progress_log = time.monotonic()
        self.abandoned = False  # True if the consumer was left unclosed (defect 4)
        self.ready = threading.Event()  # set once the consumer is subscribed/assigned

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask the loop to finish the current batch, commit and close (thread-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def health(self) -> tuple[bool, dict]:
        ok = self._db_ok and self._dlq_ok
        detail = {
            "group": self.group_id,
            "database": "up" if self._db_ok else "down",
            "dead_letter_queue": "up" if self._dlq_ok else "down",
            "outage_seconds": round(time.monotonic() - self._outage_since, 1) if self._outage_since else 0,
            "last_error": self._last_error,
            "assigned_partitions": len(self._assigned),
            "pending_messages": len(self._pending) + (len(self._inflight.batch) if self._inflight else 0),
            "last_batch_at": self._last_batch_at,
            "lag": dict(self._lag),
            "totals": dict(self._totals),
        }
        return ok, detail

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        port = self.settings.metrics_port
        if port is None:
            port = getattr(self.settings, "consumer_metrics_port", None)
        if port is None:
            port = DEFAULT_METRICS_PORT
        self._server = serve_health_and_metrics(port, self.health)
        self.metrics_port = self._server.server_port
        DB_UP.set(1)
        bootstrap = self.settings.kafka_bootstrap_servers
        log.info("consumer starting", extra={
            "event": "start", "group": self.group_id, "metrics_port": self.metrics_port,
            "batch_size": self.batch_size, "max_wait_ms": int(self.max_wait * 1000),
            "linger_ms": int(self.linger * 1000),
            "mode": "assign" if self.assignment is not None else "subscribe", "bootstrap": bootstrap})
        try:
            # an unknown topic would auto-create with the wrong partition count (defect 6)
            ensure_topics(bootstrap)
            extra = {"fetch.wait.max.ms": FETCH_WAIT_MAX_MS}
            if self.stop_at_end:
                extra["enable.partition.eof"] = True
            self._consumer = Consumer(consumer_config(bootstrap, self.group_id, **extra))
            if self.assignment is not None:
                self._consumer.assign(self.assignment)
                self._assigned = {_tp(tp) for tp in self.assignment}
                self._ever_assigned = True
                ASSIGNED.set(len(self._assigned))
            else:
                self._consumer.subscribe(self.topics, on_assign=self._on_assign,
                                         on_revoke=self._on_revoke, on_lost=self._on_lost)
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="batch-writer")
            self.ready.set()
            while not self._stop.is_set():
                # one-deep pipeline: the next batch is consumed and parsed while the
                # previous one is written; offsets are committed in batch order, each
                # only after its own database commit
                self._fill_batch()
                self._complete()
                if self._pending and not self._stop.is_set():
                    self._submit()
                    if not self.pipeline:
                        self._complete()
                self._housekeeping()
                if self.stop_at_end and self._at_end():
                    log.info("reached the end of every assigned partition", extra={"event": "end_reached"})
                    break
            self._flush()  # stop requested: finish the batch in flight and the one being filled
        finally:
            self._shutdown()

    def _fill_batch(self) -> None:
        """Consume until the batch is full, max_wait has passed since it started, or
        (with a linger) a ``consume`` call got fewer messages than it asked for
        within the linger: the local queue is drained and the stream paused."""
        consumer = self._consumer
        deadline = None
        while not self._stop.is_set():
            room = self.batch_size - len(self._pending)
            if room <= 0:
                return
            if deadline is None:
                # consume() blocks until num_messages or the timeout: with a linger,
                # return on the first message, then gather the rest of the burst
                wanted, timeout = (1 if self.linger else room), min(0.5, self.max_wait)
            else:
                wanted, timeout = room, deadline - time.monotonic()
                if timeout <= 0:
                    return
                if self.linger:
                    timeout = min(timeout, self.linger)
            started = time.monotonic()
            msgs = consumer.consume(num_messages=wanted, timeout=timeout)
            self._accept(msgs)
            if not self._pending:
                return  # idle: back to the main loop (stop, end and lag checks)
            if deadline is None:
                self._batch_started = started
                deadline = started + self.max_wait
            elif self.linger and len(msgs) < wanted:
                return  # nothing more within the linger: write what we have
            if self.stop_at_end and self._eof and self._at_end(ignore_pending=True):
                return

    def _accept(self, msgs) -> None:
        t0 = time.perf_counter()
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof.add((msg.topic(), msg.partition()))
                elif err.fatal():
                    raise KafkaException(err)
                else:
                    log.warning("consumer error", extra={"event": "kafka_error", "error": str(err)})
                continue
            key = (msg.topic(), msg.partition())
            if key not in self._assigned and self.assignment is None and self._ever_assigned:
                continue  # stale message of a partition revoked meanwhile
            self._eof.discard(key)
            self._pending.append(parse(RawMessage.from_kafka(msg)))
        self._parse_seconds += time.perf_counter() - t0

    def _at_end(self, ignore_pending: bool = False) -> bool:
        if not self._ever_assigned or ((self._pending or self._inflight) and not ignore_pending):
            return False
        return bool(self._assigned) and self._assigned <= self._eof

    # ------------------------------------------------------------------ batches
    def _submit(self) -> None:
        """Hand the filled batch to the writer thread."""
        batch, self._pending = self._pending, []
        parse_seconds, self._parse_seconds = self._parse_seconds, 0.0
        self._inflight = _InFlight(batch, parse_seconds, time.perf_counter(),
                                   self._executor.submit(self.writer.write, batch))

    def _flush(self, max_attempts: int | None = None) -> bool:
        """Synchronously finish the batch in flight and the pending one."""
        if self._flushing:
            return True
        if not self._complete(max_attempts):
            return False
        if self._pending:
            self._submit()
            return self._complete(max_attempts)
        return True

    def _complete(self, max_attempts: int | None = None) -> bool:
        """Finish the batch in flight: wait for its write (retrying a failing
        database with capped exponential backoff: forever, unless
        ``max_attempts`` or a stop request), publish its dead letters, then
        commit its offsets. Returns False if it was given up: its messages go
        back in front of the pending batch, offsets uncommitted."""
        inflight = self._inflight
        if inflight is None or self._flushing:
            return True
        self._flushing = True
        self._inflight = None
        try:
            batch = inflight.batch
            try:
                result = inflight.future.result()
            except DatabaseUnavailable as exc:
                result = self._write_with_retry(batch, str(exc), max_attempts)
                if result is None:
                    self._give_back(batch)
                    return False
            self._db_up()
            t_db = time.perf_counter()
            if not self._publish_dead_letters(result.dead_letters, max_attempts):
                self._give_back(batch)
                return False
            t_dlq = time.perf_counter()
            self._commit(batch)
            t_end = time.perf_counter()
            self._record(batch, result, inflight.parse_seconds, inflight.started, t_db, t_dlq, t_end)
            if self._paused:
                self._resume()
            return True
        finally:
            self._flushing = False

    def _write_with_retry(self, batch: list[ParsedMessage], error: str,
                          max_attempts: int | None) -> WriteResult | None:
        attempt = 1
        DB_RETRIES.inc()
        self._db_down(error, attempt, len(batch))
        while True:
            if self._stop.is_set() or (max_attempts is not None and attempt >= max_attempts):
                log.warning("batch not written; its offsets stay uncommitted (it will be re-delivered)",
                            extra={"event": "batch_abandoned", "messages": len(batch), "attempts": attempt})
                return None
            self._wait(min(BACKOFF_INITIAL_S * 2 ** (attempt - 1), BACKOFF_MAX_S))
            try:
                return self.writer.write(batch)
            except DatabaseUnavailable as exc:
                attempt += 1
                DB_RETRIES.inc()
                self._db_down(str(exc), attempt, len(batch))

    def _give_back(self, batch: list[ParsedMessage]) -> None:
        owned = self._assigned if self.assignment is None else None
        keep = [m for m in batch if owned is None or (m.raw.topic, m.raw.partition) in owned]
        self._pending = keep + self._pending

    def _record(self, batch, result: WriteResult, parse_seconds, t_start, t_db, t_dlq, t_end) -> None:
        BATCH_SECONDS.labels("parse").observe(parse_seconds)
        BATCH_SECONDS.labels("db").observe(result.db_seconds)  # the write itself (writer thread)
        BATCH_SECONDS.labels("dlq").observe(t_dlq - t_db)
        BATCH_SECONDS.labels("commit").observe(t_end - t_dlq)
        BATCH_SECONDS.labels("total").observe(t_end - t_start + parse_seconds)
        BATCH_SIZE.observe(len(batch))
        for topic, c in result.topics.items():
            for outcome, n in (("stored", c.stored), ("duplicate", c.duplicates), ("dead_letter", c.dead_letters)):
                if n:
                    MESSAGES.labels(topic, outcome).inc(n)
                    self._totals[outcome] += n
            if c.dead_letters:
                DEAD_LETTERS.labels(topic).inc(c.dead_letters)
        self._last_batch_at = time.time()
        if result.dead_letters:
            log.warning("dead letters in batch", extra={
                "event": "dead_letters", "count": len(result.dead_letters), "batch_size": len(batch),
                "examples": [{"topic": m.raw.topic, "partition": m.raw.partition, "offset": m.raw.offset,
                              "error": (m.error or "")[:300]} for m in result.dead_letters[:3]]})

    def _commit(self, batch: Sequence[ParsedMessage]) -> None:
        nxt: dict[tuple[str, int], int] = {}
        owned = self._assigned if self.assignment is None else None
        for m in batch:
            k = (m.raw.topic, m.raw.partition)
            if owned is not None and k not in owned:
                continue  # revoked meanwhile: its new owner commits it
            if m.raw.offset + 1 > nxt.get(k, -1):
                nxt[k] = m.raw.offset + 1
        if not nxt:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(nxt.items())]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # rows are committed; a re-delivery of these messages is a no-op
            COMMIT_FAILURES.inc()
            log.warning("offset commit failed (rows are stored; re-delivery will be a no-op)",
                        extra={"event": "commit_failed", "error": str(exc)})

    # ------------------------------------------------------------------ outages
    def _db_down(self, error: str, attempt: int, size: int) -> None:
        self._last_error = error
        if self._db_ok:
            self._db_ok = False
            self._outage_since = time.monotonic()
            DB_UP.set(0)
            log.error("database unavailable; holding the batch and retrying",
                      extra={"event": "db_outage", "error": error, "messages": size})
        else:
            log.warning("batch write retry failed", extra={"event": "db_retry_failed", "attempt": attempt,
                                                          "error": error, "messages": size})

    def _db_up(self) -> None:
        if not self._db_ok:
            log.info("database back; batch written", extra={
                "event": "db_recovered", "outage_seconds": round(time.monotonic() - (self._outage_since or 0), 2)})
            self._db_ok = True
            self._outage_since = None
            self._last_error = None
            DB_UP.set(1)

    def _wait(self, seconds: float) -> None:
        """Wait while keeping the consumer polled, with every partition paused.
        Messages that still arrive (e.g. from a partition assigned meanwhile)
        join the held batch."""
        end = time.monotonic() + seconds
        while not self._stop.is_set():
            self._pause()
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            self._accept(self._consumer.consume(num_messages=self.batch_size, timeout=min(remaining, 0.5)))

    def _pause(self) -> None:
        parts = self._consumer.assignment()
        if parts:
            self._consumer.pause(parts)
        self._paused = True

    def _resume(self) -> None:
        parts = self._consumer.assignment()
        if parts:
            self._consumer.resume(parts)
        self._paused = False

    # ------------------------------------------------------------------ dead letters
    def _dlq_producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(producer_config(self.settings.kafka_bootstrap_servers,
                                                      **{"linger.ms": 0, "message.timeout.ms": 10_000}))
        return self._producer

    def _publish_dead_letters(self, dead: list[ParsedMessage], max_attempts: int | None) -> bool:
        """Produce every dead letter to its topic's DLQ and flush (before offsets move)."""
        if not dead:
            return True
        attempt = 0
        while True:
            failures: list[str] = []

            def delivered(err, _msg):
                if err is not None:
                    failures.append(str(err))

            producer = self._dlq_producer()
            try:
                for m in dead:
                    topic = TOPICS[m.raw.topic].dlq if m.raw.topic in TOPICS else f"{m.raw.topic}.dlq"
                    headers = list(m.raw.headers or []) + [
                        ("dlq.error", (m.error or "invalid").encode("utf-8", "backslashreplace")[:4000]),
                        ("dlq.source.topic", m.raw.topic.encode()),
                        ("dlq.source.partition", str(m.raw.partition).encode()),
                        ("dlq.source.offset", str(m.raw.offset).encode()),
                    ]
                    producer.produce(topic, value=m.raw.value, key=m.raw.key, headers=headers, on_delivery=delivered)
                    producer.poll(0)
                left = producer.flush(15)
            except (BufferError, KafkaException) as exc:
                failures.append(str(exc))
                left = -1
            if left == 0 and not failures:
                if not self._dlq_ok:
                    log.info("dead-letter queue reachable again", extra={"event": "dlq_recovered"})
                self._dlq_ok = True
                return True
            attempt += 1
            DLQ_RETRIES.inc()
            self._dlq_ok = False
            log.error("dead letters not delivered; rebuilding the producer and retrying", extra={
                "event": "dlq_failed", "attempt": attempt, "undelivered": left,
                "errors": failures[:3]})
            # an idempotent producer never recovers from a broker restart (defect 2)
            self._producer = None
            if self._stop.is_set() or (max_attempts is not None and attempt >= max_attempts):
                return False
            self._wait(min(BACKOFF_INITIAL_S * 2 ** (attempt - 1), BACKOFF_MAX_S))

    # ------------------------------------------------------------------ rebalances
    def _on_assign(self, consumer, partitions) -> None:
        self._ever_assigned = True
        new = {_tp(tp) for tp in partitions}
        self._assigned |= new
        self._eof -= new
        ASSIGNED.set(len(self._assigned))
        REBALANCES.labels("assign").inc()
        log.info("partitions assigned", extra={"event": "assigned", "partitions": sorted(f"{t}[{p}]" for t, p in new),
                                               "total_assigned": len(self._assigned)})

    def _on_revoke(self, consumer, partitions) -> None:
        gone = {_tp(tp) for tp in partitions}
        REBALANCES.labels("revoke").inc()
        if (self._pending or self._inflight) and not self._flushing:
            # finish and commit the in-flight batches while we still own their partitions
            self._flush(max_attempts=REVOKE_WRITE_ATTEMPTS)
        self._drop(gone)
        log.info("partitions revoked", extra={"event": "revoked", "partitions": sorted(f"{t}[{p}]" for t, p in gone),
                                              "total_assigned": len(self._assigned)})

    def _on_lost(self, consumer, partitions) -> None:
        gone = {_tp(tp) for tp in partitions}
        REBALANCES.labels("lost").inc()
        self._drop(gone)  # someone else owns them now: they will re-deliver what we did not commit
        log.warning("partitions lost", extra={"event": "lost", "partitions": sorted(f"{t}[{p}]" for t, p in gone)})

    def _drop(self, gone: set[tuple[str, int]]) -> None:
        if self._pending:
            self._pending = [m for m in self._pending if (m.raw.topic, m.raw.partition) not in gone]
        self._assigned -= gone
        self._eof -= gone
        ASSIGNED.set(len(self._assigned))

    # ------------------------------------------------------------------ housekeeping
    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_update >= 1.0 and self._assigned:
            self._last_lag_update = now
            try:
                lag = cached_lag(self._consumer, [TopicPartition(t, p) for t, p in self._assigned])
            except KafkaException:
                lag = None
            if lag is not None:
                per_topic: dict[str, int] = {t: 0 for t in self.topics}
                for (t, _p), n in lag.items():
                    per_topic[t] = per_topic.get(t, 0) + n
                self._lag = per_topic
                for t, n in per_topic.items():
                    LAG.labels(t).set(n)
        if now - self._last_progress_log >= 60:
            self._last_progress_log = now
            log.info("progress", extra={"event": "progress", "totals": dict(self._totals), "lag": dict(self._lag),
                                        "assigned_partitions": len(self._assigned)})

    def _shutdown(self) -> None:
        consumer = self._consumer
        try:
            if consumer is not None:
                if self.assignment is None and not self._ever_assigned:
                    self._await_first_assignment(consumer)
                if self.assignment is None and not self._ever_assigned:
                    # closing while joining a group with no other live member can
                    # wedge the group for good (defect 4): exit without close()
                    _ABANDONED.append(consumer)
                    self.abandoned = True
                    log.warning("stopping before the first assignment: consumer left unclosed",
                                extra={"event": "exit_without_close"})
                else:
                    self._flush(max_attempts=REVOKE_WRITE_ATTEMPTS)
                    consumer.close()  # on_revoke runs here; leaves the group
            if self._producer is not None:
                self._producer.flush(10)
                self._producer = None  # destroyed: its broker connections close now
        finally:
            if self._inflight is not None:  # given up (e.g. stop during an outage): let the write end
                try:
                    self._inflight.future.result(timeout=60)
                except Exception:
                    pass
                self._inflight = None
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            self._consumer = None
            self.writer.close()
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
            log.info("consumer stopped", extra={"event": "stop", "totals": dict(self._totals)})

    def _await_first_assignment(self, consumer: Consumer) -> None:
        deadline = time.monotonic() + JOIN_GRACE_S
        while not self._ever_assigned and time.monotonic() < deadline:
            self._accept(consumer.consume(num_messages=self.batch_size, timeout=0.2))
        if self._pending:
            self._flush(max_attempts=REVOKE_WRITE_ATTEMPTS)


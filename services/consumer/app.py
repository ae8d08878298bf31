"""The consumer service: Kafka -> validate -> PostgreSQL, offsets after the DB commit.

Loop (one thread): ``consume(num_messages=batch_size, timeout=...)`` until the
batch is full, ``max_wait_ms`` has passed since it started, or no message came
for ``linger_ms`` (so a slow stream is written at once, a fast one in full
batches); parse every message against its contract; write the batch in ONE
transaction (valid rows, dead letters and the ingest ledger; see writer.py);
publish the dead letters to ``<topic>.dlq`` (dead_letters.py); only then
commit the batch's offsets synchronously.

A failing write holds the batch: the assigned partitions are paused, the
consumer keeps being polled (so ``max.poll.interval.ms`` is never exceeded and
the group keeps its members), and the write is retried with capped
exponential backoff until it succeeds; /health says "unhealthy" meanwhile.
Nothing is skipped and no offset moves until the rows are committed. If the
loop itself fails, no offset is committed any more: what was not written is
re-delivered to the next consumer.

Each message is labelled with the incarnation (topic id) of the topic it was
read from, so offsets of a re-created topic never collide with old ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from salespulse.contracts import TOPICS, TimestampWindow
from salespulse.kafka import cached_lag, consumer_config, ensure_topics
from salespulse.observability import serve_health_and_metrics
from salespulse.settings import ROLE_INGEST, Settings

from .dead_letters import DeadLetterPublisher
from .incarnations import TopicIncarnations
from .metrics import (
    ASSIGNED,
    BATCH_SECONDS,
    BATCH_SIZE,
    COMMIT_FAILURES,
    DB_RETRIES,
    DB_UP,
    DEAD_LETTERS,
    DLQ_RETRIES,
    LAG,
    MESSAGES,
    REBALANCES,
)
from .writer import BatchWriter, DatabaseUnavailable, ParsedMessage, RawMessage, WriteResult, parse

log = logging.getLogger("services.consumer")

DEFAULT_METRICS_PORT = 9103
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 15.0
REVOKE_WRITE_ATTEMPTS = 3
JOIN_GRACE_S = 20.0
# librdkafka's default (500 ms) is a latency floor with a broker that holds a
# fetch for its full max wait when no data is there at first (the embedded
# broker does); Apache Kafka answers as soon as data arrives.
FETCH_WAIT_MAX_MS = 100

# Consumers that must not be closed (stopped before their first assignment: a
# close while joining a group with no other live member can wedge the group on
# the embedded broker): referenced here so they are never destroyed (destroy = close).
_ABANDONED: list[Consumer] = []


def _tp(tp) -> tuple[str, int]:
    return tp.topic, tp.partition


def read_message(msg, incarnation: str, window: TimestampWindow) -> ParsedMessage:
    """A Kafka message as a parsed message; never raises, whatever the message holds
    (e.g. header names that are not UTF-8 make ``msg.headers()`` raise)."""
    try:
        raw = RawMessage.from_kafka(msg, incarnation=incarnation)
    except Exception as exc:  # unreadable metadata: keep key and value, dead-letter it
        raw = RawMessage(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), None, incarnation)
        return ParsedMessage(raw, error=f"unreadable message headers: {type(exc).__name__}: {exc}")
    return parse(raw, window=window)


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
        pipeline: bool = True,
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
        self.drain_seconds = 0.0 if stop_at_end else settings.consumer_drain_on_stop_s
        self.window = TimestampWindow(max_future_seconds=settings.event_max_future_seconds,
                                      earliest=settings.event_earliest)
        self.topics = list(TOPICS)
        self.writer = BatchWriter(settings.role_url(ROLE_INGEST), group=self.group_id)
        self.dead_letters = DeadLetterPublisher(settings.kafka_bootstrap_servers)
        self.incarnations = TopicIncarnations(settings.kafka_bootstrap_servers, self.topics)
        # pipeline=False: write each batch before consuming the next (for A/B benchmarks)
        self.pipeline = pipeline

        self._stop = threading.Event()  # stop consuming now
        self._stop_requested = threading.Event()  # stop once drained (or at once without a drain)
        self._drain_deadline: float | None = None
        self._failed = False  # the loop failed: commit nothing more
        self._consumer: Consumer | None = None
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
        self._last_offset: dict[tuple[str, int], int] = {}
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
        self.abandoned = False  # True if the consumer was left unclosed (see _shutdown)
        self.ready = threading.Event()  # set once the consumer is subscribed/assigned

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask the loop to stop (thread-safe): with a drain, once the assigned
        partitions are caught up or the drain time is over; then finish the
        current batch, commit and close."""
        self._stop_requested.set()
        if self.drain_seconds <= 0:
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

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
            port = self.settings.consumer_metrics_port or DEFAULT_METRICS_PORT
        self._server = serve_health_and_metrics(port, self.health)
        self.metrics_port = self._server.server_port
        DB_UP.set(1)
        bootstrap = self.settings.kafka_bootstrap_servers
        log.info("consumer starting", extra={
            "event": "start", "group": self.group_id, "metrics_port": self.metrics_port,
            "batch_size": self.batch_size, "max_wait_ms": int(self.max_wait * 1000),
            "linger_ms": int(self.linger * 1000), "drain_on_stop_s": self.drain_seconds,
            "mode": "assign" if self.assignment is not None else "subscribe", "bootstrap": bootstrap})
        try:
            # an unknown topic would auto-create with the broker's default partition count
            ensure_topics(bootstrap)
            self.incarnations.refresh()
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
                self._check_drained()
                if self.stop_at_end and self._at_end():
                    log.info("reached the end of every assigned partition", extra={"event": "end_reached"})
                    break
            self._flush()  # stop requested: finish the batch in flight and the one being filled
        except BaseException:
            self._failed = True  # from here on nothing is committed: the rest is re-delivered
            log.exception("consumer loop failed; uncommitted batches will be re-delivered",
                          extra={"event": "loop_failed"})
            raise
        finally:
            self._shutdown()

    def _check_drained(self) -> None:
        """After a stop request with a drain: stop once caught up or out of time."""
        if not self._stop_requested.is_set() or self._stop.is_set():
            return
        now = time.monotonic()
        if self._drain_deadline is None:
            self._drain_deadline = now + self.drain_seconds
            log.info("stop requested: draining the assigned partitions", extra={
                "event": "drain_started", "max_seconds": self.drain_seconds})
        lag = self._current_lag()
        # caught up: a known watermark for every assigned partition, none ahead of us
        caught_up = (lag is not None and len(lag) == len(self._assigned) and sum(lag.values()) == 0
                     and not self._pending)
        if caught_up or now >= self._drain_deadline or (self._ever_assigned and not self._assigned):
            log.info("drain finished", extra={"event": "drain_finished", "caught_up": caught_up,
                                              "lag": sum(lag.values()) if lag else None})
            self._stop.set()

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
            offset = msg.offset()
            if offset <= self._last_offset.get(key, -1):
                self.incarnations.refresh()  # offsets went back: re-delivery, or a re-created topic
            self._last_offset[key] = offset
            self._pending.append(read_message(msg, self.incarnations.get(key[0]), self.window))
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
        if self._flushing or self._failed:
            return not self._failed
        if not self._complete(max_attempts):
            return False
        if self._pending:
            self._submit()
            return self._complete(max_attempts)
        return True

    def _complete(self, max_attempts: int | None = None) -> bool:
        """Finish the batch in flight: wait for its write (retrying with capped
        exponential backoff: forever, unless ``max_attempts`` or a stop), publish
        its dead letters, then commit its offsets. Returns False if it was given
        up: its messages go back in front of the pending batch, offsets
        uncommitted. The batch stays in ``_inflight`` until its offsets are
        committed, so nothing after it can be committed if this fails."""
        inflight = self._inflight
        if inflight is None or self._flushing or self._failed:
            return inflight is None
        self._flushing = True
        try:
            batch = inflight.batch
            try:
                result = inflight.future.result()
            except Exception as exc:
                result = self._write_with_retry(batch, exc, max_attempts)
                if result is None:
                    return self._give_back(inflight)
            self._db_up()
            t_db = time.perf_counter()
            if not self._publish_dead_letters(result.dead_letters, max_attempts):
                return self._give_back(inflight)
            t_dlq = time.perf_counter()
            self._commit(batch)
            self._inflight = None
            t_end = time.perf_counter()
            self._record(batch, result, inflight.parse_seconds, inflight.started, t_db, t_dlq, t_end)
            if self._paused:
                self._resume()
            return True
        finally:
            self._flushing = False

    def _write_with_retry(self, batch: list[ParsedMessage], error: Exception,
                          max_attempts: int | None) -> WriteResult | None:
        attempt = 1
        self._write_failed(error, attempt, len(batch))
        while True:
            if self._stop.is_set() or (max_attempts is not None and attempt >= max_attempts):
                log.warning("batch not written; its offsets stay uncommitted (it will be re-delivered)",
                            extra={"event": "batch_abandoned", "messages": len(batch), "attempts": attempt})
                return None
            self._wait(min(BACKOFF_INITIAL_S * 2 ** (attempt - 1), BACKOFF_MAX_S))
            try:
                return self.writer.write(batch)
            except Exception as exc:
                attempt += 1
                self._write_failed(exc, attempt, len(batch))

    def _give_back(self, inflight: _InFlight) -> bool:
        """An unfinished batch goes back in front of the pending one (partitions still ours)."""
        self._inflight = None
        owned = self._assigned if self.assignment is None else None
        keep = [m for m in inflight.batch if owned is None or (m.raw.topic, m.raw.partition) in owned]
        self._pending = keep + self._pending
        return False

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
        for m in result.skipped:
            MESSAGES.labels(m.raw.topic, "skipped").inc()
            self._totals["skipped"] += 1
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
            # rows and ledger are committed; a re-delivery of these messages is skipped
            COMMIT_FAILURES.inc()
            log.warning("offset commit failed (rows are stored; re-delivery will be skipped)",
                        extra={"event": "commit_failed", "error": str(exc)})

    # ------------------------------------------------------------------ outages
    def _write_failed(self, error: Exception, attempt: int, size: int) -> None:
        DB_RETRIES.inc()
        text = str(error).strip() or type(error).__name__
        self._last_error = text
        if not isinstance(error, DatabaseUnavailable):
            # the writer isolates bad messages itself; anything else is a bug: keep the
            # batch (never drop it, never commit past it) and say so loudly
            log.error("unexpected error writing a batch; holding it and retrying", exc_info=error,
                      extra={"event": "write_error", "attempt": attempt, "messages": size})
        if self._db_ok:
            self._db_ok = False
            self._outage_since = time.monotonic()
            DB_UP.set(0)
            log.error("database unavailable; holding the batch and retrying",
                      extra={"event": "db_outage", "error": text, "messages": size})
        else:
            log.warning("batch write retry failed", extra={"event": "db_retry_failed", "attempt": attempt,
                                                          "error": text, "messages": size})

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
            self._check_drained()

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
    def _publish_dead_letters(self, dead: list[ParsedMessage], max_attempts: int | None) -> bool:
        """Produce every dead letter to its topic's DLQ and flush (before offsets move)."""
        attempt = 0
        while dead:
            failures = self.dead_letters.publish(dead)
            if not failures:
                if not self._dlq_ok:
                    log.info("dead-letter queue reachable again", extra={"event": "dlq_recovered"})
                self._dlq_ok = True
                return True
            attempt += 1
            DLQ_RETRIES.inc()
            self._dlq_ok = False
            log.error("dead letters not delivered; retrying", extra={
                "event": "dlq_failed", "attempt": attempt, "errors": failures[:3]})
            if self._stop.is_set() or (max_attempts is not None and attempt >= max_attempts):
                return False
            self._wait(min(BACKOFF_INITIAL_S * 2 ** (attempt - 1), BACKOFF_MAX_S))
        return True

    # ------------------------------------------------------------------ rebalances
    def _on_assign(self, consumer, partitions) -> None:
        self._ever_assigned = True
        new = {_tp(tp) for tp in partitions}
        self._assigned |= new
        self._eof -= new
        for key in new:
            self._last_offset.pop(key, None)
        self.incarnations.refresh()
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
    def _current_lag(self) -> dict[tuple[str, int], int] | None:
        if not self._assigned or self._consumer is None:
            return None
        try:
            return cached_lag(self._consumer, [TopicPartition(t, p) for t, p in self._assigned])
        except KafkaException:
            return None

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_update >= 1.0 and self._assigned:
            self._last_lag_update = now
            lag = self._current_lag()
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
                if self.assignment is None and not self._ever_assigned and not self._failed:
                    self._await_first_assignment(consumer)
                if self.assignment is None and not self._ever_assigned:
                    # closing while joining a group with no other live member can
                    # wedge the group on the embedded broker: exit without close()
                    _ABANDONED.append(consumer)
                    self.abandoned = True
                    log.warning("stopping before the first assignment: consumer left unclosed",
                                extra={"event": "exit_without_close"})
                else:
                    self._flush(max_attempts=REVOKE_WRITE_ATTEMPTS)  # a no-op after a failure
                    consumer.close()  # on_revoke runs here; leaves the group
            self.dead_letters.close(timeout=10)
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
            log.info("consumer stopped", extra={"event": "stop", "totals": dict(self._totals),
                                                "uncommitted": len(self._pending), "failed": self._failed})

    def _await_first_assignment(self, consumer: Consumer) -> None:
        deadline = time.monotonic() + JOIN_GRACE_S
        while not self._ever_assigned and time.monotonic() < deadline:
            self._accept(consumer.consume(num_messages=self.batch_size, timeout=0.2))
        if self._pending:
            self._flush(max_attempts=REVOKE_WRITE_ATTEMPTS)

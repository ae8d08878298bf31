"""The consumer service: Kafka -> validate -> PostgreSQL, offsets after the DB commit.

The loop (one thread), with its parts in their own modules:

1. fill a batch (``batching.BatchPolicy``: full, ``max_wait`` old, or the
   stream paused for ``linger``), reading each message against its contract
   and labelling it with its topic's incarnation (``incarnations.py``);
2. hand it to the writer thread, which writes it in ONE transaction (valid
   rows, dead letters and the ingest ledger: ``writer.py``), while the next
   batch is filled (a one-deep pipeline);
3. complete the previous batch in order: wait for its write, publish its dead
   letters to ``<topic>.dlq`` (``dead_letters.py``), only then commit its
   offsets synchronously, and record it (``metrics.py``).

A failing write or publication holds the batch (``backoff.py``): the
partitions are paused, the consumer keeps being polled (so the group keeps
its members) and the step is retried with capped exponential backoff; no
offset moves until the rows are committed. If the loop itself fails, no
offset is committed any more: what was not written is re-delivered.
Rebalances (``rebalance.py``) commit what is held before partitions go.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from salespulse.contracts import TOPICS, TimestampWindow
from salespulse.kafka import consumer_config, ensure_topics
from salespulse.lag import position_lag
from salespulse.observability import serve_health_and_metrics
from salespulse.settings import ROLE_INGEST, Settings

from .backoff import DeadLettersUndelivered, Outage, retry
from .batching import BatchPolicy
from .dead_letters import DeadLetterPublisher
from .incarnations import TopicIncarnations
from .messages import ParsedMessage, RawMessage, parse
from .metrics import COMMIT_FAILURES, DB_UP, LAG, BatchRecorder
from .rebalance import Key, Partitions, RebalanceListener
from .writer import BatchWriter, DatabaseUnavailable

log = logging.getLogger("services.consumer")

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

    def __init__(self, settings: Settings, *, group_id: str | None = None,
                 assignment: list[TopicPartition] | None = None, stop_at_end: bool = False,
                 batch_size: int | None = None, max_wait_ms: int | None = None, linger_ms: int | None = None,
                 pipeline: bool = True):
        self.settings = settings
        # assign() mode (replays) commits under its own group by default, so a replay
        # never moves the live group's offsets
        default_group = settings.consumer_group if assignment is None else f"{settings.consumer_group}-replay"
        self.group_id = group_id or default_group
        self.assignment = list(assignment) if assignment is not None else None
        self.stop_at_end = stop_at_end
        self.policy = BatchPolicy(
            int(batch_size or settings.consumer_batch_size),
            (max_wait_ms if max_wait_ms is not None else settings.consumer_batch_max_wait_ms) / 1000.0,
            (linger_ms if linger_ms is not None else settings.consumer_batch_linger_ms) / 1000.0)
        self.batch_size = self.policy.size
        self.drain_seconds = 0.0 if stop_at_end else settings.consumer_drain_on_stop_s
        self.window = TimestampWindow(max_future_seconds=settings.event_max_future_seconds,
                                      earliest=settings.event_earliest)
        self.topics = list(TOPICS)
        self.writer = BatchWriter(settings.role_url(ROLE_INGEST), group=self.group_id)
        self.dead_letters = DeadLetterPublisher(settings.kafka_bootstrap_servers)
        self.incarnations = TopicIncarnations(settings.kafka_bootstrap_servers, self.topics)
        self.partitions = Partitions(self.assignment)
        self.rebalances = RebalanceListener(self.partitions, self.incarnations, self._finish_before_revoke,
                                            self._forget)
        self.outage = Outage()
        self.recorder = BatchRecorder()
        self.pipeline = pipeline  # False: write each batch before consuming the next (A/B benchmarks)

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
        self._parse_seconds = 0.0
        self._paused = False
        self._flushing = False
        self._lag: dict[str, int] = {}
        self._last_lag_update = 0.0
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

    @property
    def totals(self) -> dict[str, int]:
        """Messages by outcome (stored, duplicate, dead_letter, skipped) since start."""
        return dict(self.recorder.totals)

    def health(self) -> tuple[bool, dict]:
        return self.outage.ok, {
            "group": self.group_id, **self.outage.health(),
            "assigned_partitions": len(self.partitions.assigned),
            "pending_messages": len(self._pending) + (len(self._inflight.batch) if self._inflight else 0),
            "last_batch_at": self.recorder.last_batch_at, "lag": dict(self._lag), "totals": self.totals,
        }

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        self._server = serve_health_and_metrics(self.settings.service_metrics_port("consumer"), self.health)
        self.metrics_port = self._server.server_port
        DB_UP.set(1)
        bootstrap = self.settings.kafka_bootstrap_servers
        log.info("consumer starting", extra={
            "event": "start", "group": self.group_id, "metrics_port": self.metrics_port,
            "batch_size": self.policy.size, "max_wait_ms": int(self.policy.max_wait * 1000),
            "linger_ms": int(self.policy.linger * 1000), "drain_on_stop_s": self.drain_seconds,
            "mode": "assign" if self.assignment is not None else "subscribe", "bootstrap": bootstrap})
        try:
            self._start_consumer(bootstrap)
            while not self._stop.is_set():
                # one-deep pipeline: the next batch is consumed and parsed while the
                # previous one is written; offsets are committed in batch order, each
                # only after its own database commit
                self.policy.fill(self._consumer.consume, self._accept, lambda: len(self._pending),
                                 self._stop.is_set, self._end_reached_while_filling)
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

    def _start_consumer(self, bootstrap: str) -> None:
        # an unknown topic would auto-create with the broker's default partition count
        ensure_topics(bootstrap)
        self.incarnations.refresh()
        extra = {"fetch.wait.max.ms": FETCH_WAIT_MAX_MS}
        if self.stop_at_end:
            extra["enable.partition.eof"] = True
        self._consumer = Consumer(consumer_config(bootstrap, self.group_id, **extra))
        if self.assignment is not None:
            self._consumer.assign(self.assignment)
        else:
            r = self.rebalances
            self._consumer.subscribe(self.topics, on_assign=r.on_assign, on_revoke=r.on_revoke, on_lost=r.on_lost)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="batch-writer")
        self.ready.set()

    def _check_drained(self) -> None:
        """After a stop request with a drain: stop once caught up or out of time."""
        if not self._stop_requested.is_set() or self._stop.is_set():
            return
        now = time.monotonic()
        if self._drain_deadline is None:
            self._drain_deadline = now + self.drain_seconds
            log.info("stop requested: draining the assigned partitions", extra={
                "event": "drain_started", "max_seconds": self.drain_seconds})
        lag, assigned = self._current_lag(), self.partitions.assigned
        # caught up: a known watermark for every assigned partition, none ahead of us
        caught_up = (lag is not None and len(lag) == len(assigned) and sum(lag.values()) == 0
                     and not self._pending)
        if caught_up or now >= self._drain_deadline or (self.partitions.ever_assigned and not assigned):
            log.info("drain finished", extra={"event": "drain_finished", "caught_up": caught_up,
                                              "lag": sum(lag.values()) if lag else None})
            self._stop.set()

    def _accept(self, msgs) -> None:
        t0 = time.perf_counter()
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.partitions.eof.add((msg.topic(), msg.partition()))
                elif err.fatal():
                    raise KafkaException(err)
                else:
                    log.warning("consumer error", extra={"event": "kafka_error", "error": str(err)})
                continue
            key = (msg.topic(), msg.partition())
            if self.partitions.stale(key):
                continue
            if self.partitions.went_back(key, msg.offset()):
                self.incarnations.refresh()  # a re-delivery, or a re-created topic
            self._pending.append(read_message(msg, self.incarnations.get(key[0]), self.window))
        self._parse_seconds += time.perf_counter() - t0

    def _end_reached_while_filling(self) -> bool:
        return self.stop_at_end and bool(self.partitions.eof) and self.partitions.at_end()

    def _at_end(self) -> bool:
        return not self._pending and not self._inflight and self.partitions.at_end()

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
        """Finish the batch in flight: wait for its write (retried with backoff:
        forever, unless ``max_attempts`` or a stop), publish its dead letters,
        then commit its offsets. Returns False if it was given up: its messages
        go back in front of the pending batch, offsets uncommitted. The batch
        stays in ``_inflight`` until its offsets are committed, so nothing after
        it can be committed if this fails."""
        inflight = self._inflight
        if inflight is None or self._flushing or self._failed:
            return inflight is None
        self._flushing = True
        try:
            batch = inflight.batch
            try:
                written, result = True, inflight.future.result()
            except Exception as exc:
                written, result = self._retry(lambda: self.writer.write(batch), max_attempts, first_error=exc,
                                              on_failure=lambda e, n: self.outage.write_failed(
                                                  e, n, len(batch), expected=isinstance(e, DatabaseUnavailable)))
                if not written:
                    log.warning("batch not written; its offsets stay uncommitted (it will be re-delivered)",
                                extra={"event": "batch_abandoned", "messages": len(batch)})
                    return self._give_back(inflight)
            self.outage.write_succeeded()
            t_db = time.perf_counter()
            if not self._publish_dead_letters(result.dead_letters + result.republish, max_attempts):
                return self._give_back(inflight)
            t_dlq = time.perf_counter()
            self._commit(batch)
            self._inflight = None
            t_end = time.perf_counter()
            self.recorder.record(batch, result, parse_s=inflight.parse_seconds, db_s=result.db_seconds,
                                 dlq_s=t_dlq - t_db, commit_s=t_end - t_dlq,
                                 total_s=t_end - inflight.started + inflight.parse_seconds)
            if self._paused:
                self._resume()
            return True
        finally:
            self._flushing = False

    def _publish_dead_letters(self, dead: list[ParsedMessage], max_attempts: int | None) -> bool:
        """Produce every dead letter to its topic's DLQ and flush (before offsets move)."""
        if not dead:
            return True

        def publish() -> None:
            failures = self.dead_letters.publish(dead)
            if failures:
                raise DeadLettersUndelivered(failures)

        delivered, _ = self._retry(publish, max_attempts, on_failure=self.outage.dlq_failed,
                                   retry_on=(DeadLettersUndelivered,))
        if delivered:
            self.outage.dlq_succeeded()
        return delivered

    def _retry(self, step, max_attempts: int | None, **how):
        """Retry ``step`` with backoff while polling paused partitions; give up on a stop or after max_attempts."""
        return retry(step, wait=self._wait, **how,
                     give_up=lambda n: self._stop.is_set() or (max_attempts is not None and n >= max_attempts))

    def _give_back(self, inflight: _InFlight) -> bool:
        """An unfinished batch goes back in front of the pending one (partitions still ours)."""
        self._inflight = None
        self._pending = self.partitions.keep_owned(inflight.batch) + self._pending
        return False

    def _commit(self, batch: list[ParsedMessage]) -> None:
        offsets = self.partitions.commit_offsets(batch)  # revoked meanwhile: its new owner commits it
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # rows and ledger are committed; a re-delivery of these messages is skipped
            COMMIT_FAILURES.inc()
            log.warning("offset commit failed (rows are stored; re-delivery will be skipped)",
                        extra={"event": "commit_failed", "error": str(exc)})

    def _wait(self, seconds: float) -> None:
        """Wait while keeping the consumer polled, with every partition paused.
        Messages that still arrive (e.g. from a partition assigned meanwhile)
        join the held batch."""
        end = time.monotonic() + seconds
        while not self._stop.is_set():
            self._set_paused(True)
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            self._accept(self._consumer.consume(num_messages=self.policy.size, timeout=min(remaining, 0.5)))
            self._check_drained()

    def _set_paused(self, paused: bool) -> None:
        parts = self._consumer.assignment()
        if parts:
            (self._consumer.pause if paused else self._consumer.resume)(parts)
        self._paused = paused

    def _resume(self) -> None:
        self._set_paused(False)

    # ------------------------------------------------------------------ rebalances
    def _finish_before_revoke(self) -> None:
        if (self._pending or self._inflight) and not self._flushing:
            self._flush(max_attempts=REVOKE_WRITE_ATTEMPTS)

    def _forget(self, gone: set[Key]) -> None:
        if self._pending:
            self._pending = [m for m in self._pending if (m.raw.topic, m.raw.partition) not in gone]

    # ------------------------------------------------------------------ housekeeping
    def _current_lag(self) -> dict[Key, int] | None:
        if not self.partitions.assigned or self._consumer is None:
            return None
        try:
            return position_lag(self._consumer, [TopicPartition(t, p) for t, p in self.partitions.assigned])
        except KafkaException:
            return None

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_update >= 1.0 and self.partitions.assigned:
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
            log.info("progress", extra={"event": "progress", "totals": self.totals, "lag": dict(self._lag),
                                        "assigned_partitions": len(self.partitions.assigned)})

    def _shutdown(self) -> None:
        consumer = self._consumer
        try:
            if consumer is not None:
                joining = self.assignment is None and not self.partitions.ever_assigned
                if joining and not self._failed:
                    self._await_first_assignment(consumer)
                if self.assignment is None and not self.partitions.ever_assigned:
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
            log.info("consumer stopped", extra={"event": "stop", "totals": self.totals,
                                                "uncommitted": len(self._pending), "failed": self._failed})

    def _await_first_assignment(self, consumer: Consumer) -> None:
        deadline = time.monotonic() + JOIN_GRACE_S
        while not self.partitions.ever_assigned and time.monotonic() < deadline:
            self._accept(consumer.consume(num_messages=self.policy.size, timeout=0.2))
        if self._pending:
            self._flush(max_attempts=REVOKE_WRITE_ATTEMPTS)

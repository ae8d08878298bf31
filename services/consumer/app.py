"""The consumer service: Kafka -> validate -> PostgreSQL, offsets after the DB commit.

The loop (one thread), with its parts in their own modules:

1. fill a batch (``batching.BatchPolicy``: full, ``max_wait`` old, or the
   stream paused for ``linger``), each message read against its contract
   and labelled with its topic's incarnation (``intake.py``);
2. complete the previous batch (``pipeline.py``): wait for its write, publish
   its dead letters to ``<topic>.dlq``, only then commit its offsets
   synchronously, and record it;
3. hand the new batch to the writer thread, which writes it in ONE
   transaction (valid rows, dead letters and the ingest ledger:
   ``writer.py``) while the next batch is filled (a one-deep pipeline);
4. refresh the lag (``progress.py``) and, after a stop request, check the
   drain (``drain.py``).

A failing write or publication holds the batch: the partitions are paused,
the consumer keeps being polled so the group keeps its members (``hold.py``),
and the step is retried with capped exponential backoff (``backoff.py``); no
offset moves until the rows are committed. If the loop itself fails, no
offset is committed any more: what was not written is re-delivered.
Rebalances (``rebalance.py``) commit what is held before partitions go; the
consumer is closed the safe way (``shutdown.py``).
"""

from __future__ import annotations

import functools
import logging
import threading

from confluent_kafka import Consumer, TopicPartition

from salespulse.contracts import TOPICS, TimestampWindow
from salespulse.kafka import consumer_config, ensure_topics, prefetch_config
from salespulse.observability import serve_health_and_metrics
from salespulse.settings import ROLE_INGEST, Settings

from .backoff import Outage
from .batching import BatchPolicy
from .dead_letters import DeadLetterPublisher
from .drain import Drain
from .hold import Hold
from .incarnations import TopicIncarnations
from .intake import Intake
from .metrics import DB_UP, BatchRecorder
from .pipeline import REVOKE_WRITE_ATTEMPTS, WritePipeline
from .progress import Progress, assigned_lag
from .rebalance import Key, Partitions, RebalanceListener
from .shutdown import close_consumer
from .writer import BatchWriter

log = logging.getLogger("services.consumer")

class ConsumerService:
    """The ingestion consumer. ``run()`` blocks; ``stop()`` is thread-safe."""

    def __init__(self, settings: Settings, *, group_id: str | None = None,
                 assignment: list[TopicPartition] | None = None, stop_at_end: bool = False,
                 batch_size: int | None = None, max_wait_ms: int | None = None, linger_ms: int | None = None,
                 fetch_wait_ms: int | None = None, pipeline: bool = True):
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
            (linger_ms if linger_ms is not None else settings.consumer_batch_linger_ms) / 1000.0,
            settings.consumer_batch_max_bytes)
        # fetch.wait.max.ms: librdkafka's default (500 ms) is a latency floor with a
        # broker that holds a fetch while no data is there (the embedded broker
        # answers about every half wait); Apache Kafka answers as soon as data arrives
        self.fetch_wait_ms = fetch_wait_ms if fetch_wait_ms is not None else settings.consumer_fetch_wait_ms
        self.pipelined = pipeline  # False: write each batch before consuming the next (A/B benchmarks)
        self.topics = list(TOPICS)
        self._consumer: Consumer | None = None
        self._server = None
        self.metrics_port: int | None = None
        self.abandoned = False  # True if the consumer was left unclosed (see shutdown.py)
        self.ready = threading.Event()  # set once the consumer is subscribed/assigned

        window = TimestampWindow.from_settings(settings)
        self.writer = BatchWriter(settings.role_url(ROLE_INGEST), group=self.group_id)
        self.dead_letters = DeadLetterPublisher(settings.kafka_bootstrap_servers)
        self.incarnations = TopicIncarnations(settings.kafka_bootstrap_servers, self.topics)
        self.partitions = Partitions(self.assignment)
        self.intake = Intake(self.partitions, self.incarnations, window)
        self.outage = Outage()
        self.recorder = BatchRecorder()
        self.drain = Drain(0.0 if stop_at_end else settings.consumer_drain_on_stop_s, self.partitions, self._lag,
                           self.intake)
        self.progress = Progress(self.topics, self.partitions, self.recorder, self._lag)
        hold = Hold(lambda: self._consumer, self.intake.accept, self.policy.size, self.drain.stopped,
                    self.drain.check)
        self.pipeline = WritePipeline(self.writer, self.intake, self.partitions, self.dead_letters, self.outage,
                                      self.recorder, hold=hold, consumer=lambda: self._consumer,
                                      stopped=self.drain.stopped)
        self.rebalances = RebalanceListener(self.partitions, self.incarnations,
                                            functools.partial(self.pipeline.flush, REVOKE_WRITE_ATTEMPTS),
                                            self.intake.forget)

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask the loop to stop (thread-safe): with a drain, once the assigned
        partitions are caught up or the drain time is over; then finish the
        current batch, commit and close."""
        self.drain.request()

    @property
    def stopping(self) -> bool:
        return self.drain.requested.is_set()

    @property
    def totals(self) -> dict[str, int]:
        """Messages by outcome (stored, duplicate, dead_letter, skipped) since start."""
        return dict(self.recorder.totals)

    def health(self) -> tuple[bool, dict]:
        return self.outage.ok, {
            "group": self.group_id, **self.outage.health(),
            "assigned_partitions": len(self.partitions.assigned), "pending_messages": self.pipeline.held,
            "last_batch_at": self.recorder.last_batch_at, "lag": dict(self.progress.lag), "totals": self.totals,
        }

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        self._server = serve_health_and_metrics(self.settings.service_metrics_port("consumer"), self.health)
        self.metrics_port = self._server.server_port
        DB_UP.set(1)
        log.info("consumer starting", extra={
            "event": "start", "group": self.group_id, "metrics_port": self.metrics_port,
            "batch_size": self.policy.size, "batch_max_bytes": self.policy.max_bytes,
            "max_wait_ms": int(self.policy.max_wait * 1000),
            "linger_ms": int(self.policy.linger * 1000), "fetch_wait_ms": self.fetch_wait_ms,
            "drain_on_stop_s": self.drain.seconds,
            "mode": "assign" if self.assignment is not None else "subscribe",
            "bootstrap": self.settings.kafka_bootstrap_servers})
        stopped, intake, pipeline = self.drain.stopped, self.intake, self.pipeline
        try:
            consumer = self._start_consumer()
            while not stopped():
                # one-deep pipeline: the next batch is consumed and parsed while the
                # previous one is written; offsets are committed in batch order, each
                # only after its own database commit
                self.policy.fill(consumer.consume, intake.accept, intake.__len__, stopped, self._end_while_filling,
                                 intake.held_bytes, intake.largest_recent)
                pipeline.complete()
                if intake and not stopped():
                    pipeline.submit()
                    if not self.pipelined:
                        pipeline.complete()
                self.progress.tick()
                self.drain.check()
                if self.stop_at_end and self._at_end():
                    log.info("reached the end of every assigned partition", extra={"event": "end_reached"})
                    break
            pipeline.flush()  # stop requested: finish the batch in flight and the one being filled
        except BaseException:
            pipeline.failed = True  # from here on nothing is committed: the rest is re-delivered
            log.exception("consumer loop failed; uncommitted batches will be re-delivered",
                          extra={"event": "loop_failed"})
            raise
        finally:
            self._shutdown()

    def _start_consumer(self) -> Consumer:
        bootstrap = self.settings.kafka_bootstrap_servers
        ensure_topics(bootstrap)  # an unknown topic would auto-create with the broker's default partition count
        self.incarnations.refresh()
        # memory: librdkafka prefetches at most one batch's bytes (CONSUMER_BATCH_MAX_BYTES),
        # besides the batch being filled and the one being written
        extra = {"fetch.wait.max.ms": self.fetch_wait_ms, **prefetch_config(self.policy.max_bytes)}
        if self.stop_at_end:
            extra["enable.partition.eof"] = True
        self._consumer = consumer = Consumer(consumer_config(bootstrap, self.group_id, **extra))
        if self.assignment is not None:
            consumer.assign(self.assignment)
        else:
            r = self.rebalances
            consumer.subscribe(self.topics, on_assign=r.on_assign, on_revoke=r.on_revoke, on_lost=r.on_lost)
        self.ready.set()
        return consumer

    def _lag(self) -> dict[Key, int] | None:
        return assigned_lag(self._consumer, self.partitions)

    def _end_while_filling(self) -> bool:
        return self.stop_at_end and bool(self.partitions.eof) and self.partitions.at_end()

    def _at_end(self) -> bool:
        return not self.intake and not self.pipeline.inflight and self.partitions.at_end()

    def _shutdown(self) -> None:
        consumer = self._consumer
        try:
            if consumer is not None:
                self.abandoned = not close_consumer(
                    consumer, self.partitions,
                    poll=lambda timeout: self.intake.accept(consumer.consume(num_messages=self.policy.size,
                                                                             timeout=timeout)),
                    flush=functools.partial(self.pipeline.flush, REVOKE_WRITE_ATTEMPTS),
                    holding=lambda: bool(self.intake), failed=self.pipeline.failed)
            self.dead_letters.close(timeout=10)
        finally:
            self.pipeline.close()  # waits for a write given up on (e.g. a stop during an outage)
            self._consumer = None
            self.writer.close()
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
            log.info("consumer stopped", extra={"event": "stop", "totals": self.totals,
                                                "uncommitted": len(self.intake), "failed": self.pipeline.failed})

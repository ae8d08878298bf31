"""The one-deep write pipeline: batch n is written on a background thread
while batch n+1 is filled; batches complete in order.

Completing a batch: wait for its write (a failed write is retried with
backoff, ``backoff.py``, while the partitions are held, ``hold.py``), publish
its dead letters to ``<topic>.dlq`` (``dead_letters.py``), only then commit
its offsets synchronously, and record it (``metrics.py``). A batch given up
(a stop, or the bounded attempts of a revoke or a shutdown) goes back in
front of the batch being filled, its offsets uncommitted: nothing after it
can be committed before it is. Once the loop itself has failed (``failed``)
nothing more is completed: what was not committed is re-delivered.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from .backoff import DeadLettersUndelivered, Outage, retry
from .dead_letters import DeadLetterPublisher
from .hold import Hold
from .intake import Intake
from .messages import ParsedMessage
from .metrics import COMMIT_FAILURES, BatchRecorder
from .rebalance import Partitions
from .writer import BatchWriter, DatabaseUnavailable

log = logging.getLogger("services.consumer")

#: attempts per step when the batches in hand must be finished now (revoke, shutdown)
REVOKE_WRITE_ATTEMPTS = 3


@dataclass
class InFlight:
    """A batch being written by the background writer thread."""

    batch: list[ParsedMessage]
    parse_seconds: float
    started: float
    future: Future


def commit_synchronously(consumer: Consumer, offsets: list[TopicPartition]) -> None:
    """Commit synchronously. A failure is counted and logged, not raised: the
    rows and the ledger are committed, so a re-delivery of these messages is skipped."""
    if not offsets:
        return
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:
        COMMIT_FAILURES.inc()
        log.warning("offset commit failed (rows are stored; re-delivery will be skipped)",
                    extra={"event": "commit_failed", "error": str(exc)})


class WritePipeline:
    """``submit()`` the batch being filled; ``complete()`` the one in flight; ``flush()`` both."""

    def __init__(self, writer: BatchWriter, intake: Intake, partitions: Partitions,
                 dead_letters: DeadLetterPublisher, outage: Outage, recorder: BatchRecorder, *, hold: Hold,
                 consumer: Callable[[], Consumer], stopped: Callable[[], bool]):
        self.writer = writer
        self.intake = intake
        self.partitions = partitions
        self.dead_letters = dead_letters
        self.outage = outage
        self.recorder = recorder
        self.hold = hold
        self.consumer = consumer
        self.stopped = stopped
        self.inflight: InFlight | None = None
        self.failed = False  # the loop failed: complete (and commit) nothing more
        self._completing = False  # guards against re-entry from a rebalance callback
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="batch-writer")

    @property
    def held(self) -> int:
        """Messages read and not committed yet: being filled and in flight."""
        return len(self.intake) + (len(self.inflight.batch) if self.inflight else 0)

    def submit(self) -> None:
        """Hand the filled batch to the writer thread."""
        batch, parse_seconds = self.intake.take()
        self.inflight = InFlight(batch, parse_seconds, time.perf_counter(),
                                 self._executor.submit(self.writer.write, batch))

    def flush(self, max_attempts: int | None = None) -> bool:
        """Synchronously finish the batch in flight and the one being filled."""
        if self._completing or self.failed:
            return not self.failed
        if not self.complete(max_attempts):
            return False
        if self.intake:
            self.submit()
            return self.complete(max_attempts)
        return True

    def complete(self, max_attempts: int | None = None) -> bool:
        """Finish the batch in flight: wait for its write (retried with backoff:
        forever, unless ``max_attempts`` or a stop), publish its dead letters,
        then commit its offsets. Returns False if it was given up: its messages
        go back in front of the batch being filled, offsets uncommitted. The
        batch stays in flight until its offsets are committed, so nothing after
        it can be committed if this fails."""
        inflight = self.inflight
        if inflight is None or self._completing or self.failed:
            return inflight is None
        self._completing = True
        try:
            batch = inflight.batch
            try:
                result = inflight.future.result()
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
            if not self.publish_dead_letters(result.dead_letters + result.republish, max_attempts):
                return self._give_back(inflight)
            t_dlq = time.perf_counter()
            # offsets of partitions revoked meanwhile are left to their new owner
            commit_synchronously(self.consumer(), self.partitions.commit_offsets(batch))
            self.inflight = None
            t_end = time.perf_counter()
            self.recorder.record(batch, result, parse_s=inflight.parse_seconds, db_s=result.db_seconds,
                                 dlq_s=t_dlq - t_db, commit_s=t_end - t_dlq,
                                 total_s=t_end - inflight.started + inflight.parse_seconds)
            self.hold.release()
            return True
        finally:
            self._completing = False

    def publish_dead_letters(self, dead: list[ParsedMessage], max_attempts: int | None) -> bool:
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

    def close(self) -> None:
        """Let a write given up on end (e.g. a stop during an outage), then stop the writer thread."""
        if self.inflight is not None:
            try:
                self.inflight.future.result(timeout=60)
            except Exception:
                pass
            self.inflight = None
        self._executor.shutdown(wait=True)

    def _retry(self, step, max_attempts: int | None, **how):
        """Retry ``step`` with backoff, holding the partitions; give up on a stop or after max_attempts."""
        return retry(step, wait=self.hold.wait, **how,
                     give_up=lambda n: self.stopped() or (max_attempts is not None and n >= max_attempts))

    def _give_back(self, inflight: InFlight) -> bool:
        """An unfinished batch goes back in front of the one being filled (partitions still ours)."""
        self.inflight = None
        self.intake.put_back(self.partitions.keep_owned(inflight.batch))
        return False

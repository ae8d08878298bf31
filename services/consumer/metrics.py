"""What the consumer shows: its Prometheus metrics (process-wide registry,
shared by every service instance), :class:`BatchRecorder` (metrics and totals
per committed batch) and :class:`Outage` (the database's and the dead-letter
queue's state as /health shows it)."""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("services.consumer")

MESSAGES = Counter("salespulse_consumer_messages_total",
                   "Messages processed, by topic and outcome (stored, duplicate, dead_letter, skipped)",
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
INCARNATION_CHANGES = Counter("salespulse_consumer_topic_incarnation_changes_total",
                              "Times a topic was found re-created (new topic id) while consuming", ["topic"])


class BatchRecorder:
    """Records each committed batch: the metrics above and the totals /health reports."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.last_batch_at: float | None = None  # wall-clock time of the last committed batch

    def record(self, batch: list, result, *, parse_s: float, db_s: float, dlq_s: float, commit_s: float,
               total_s: float) -> None:
        for stage, seconds in (("parse", parse_s), ("db", db_s), ("dlq", dlq_s), ("commit", commit_s),
                               ("total", total_s)):
            BATCH_SECONDS.labels(stage).observe(seconds)
        BATCH_SIZE.observe(len(batch))
        for topic, c in result.topics.items():
            for outcome, n in (("stored", c.stored), ("duplicate", c.duplicates), ("dead_letter", c.dead_letters)):
                if n:
                    MESSAGES.labels(topic, outcome).inc(n)
                    self._add(outcome, n)
            if c.dead_letters:
                DEAD_LETTERS.labels(topic).inc(c.dead_letters)
        for m in result.skipped:
            MESSAGES.labels(m.raw.topic, "skipped").inc()
            self._add("skipped", 1)
        self.last_batch_at = time.time()
        if result.dead_letters:
            log.warning("dead letters in batch", extra={
                "event": "dead_letters", "count": len(result.dead_letters), "batch_size": len(batch),
                "examples": [{"topic": m.raw.topic, "partition": m.raw.partition, "offset": m.raw.offset,
                              "error": (m.error or "")[:300]} for m in result.dead_letters[:3]]})

    def _add(self, outcome: str, n: int) -> None:
        self.totals[outcome] = self.totals.get(outcome, 0) + n


class Outage:
    """The database's and the dead-letter queue's state as /health and the metrics show it."""

    def __init__(self) -> None:
        self.db_ok = True
        self.dlq_ok = True
        self.since: float | None = None  # monotonic start of the database outage
        self.last_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.db_ok and self.dlq_ok

    def health(self) -> dict:
        return {
            "database": "up" if self.db_ok else "down",
            "dead_letter_queue": "up" if self.dlq_ok else "down",
            "outage_seconds": round(time.monotonic() - self.since, 1) if self.since else 0,
            "last_error": self.last_error,
        }

    def write_failed(self, error: Exception, attempt: int, size: int, *, expected: bool) -> None:
        """A batch write failed (``expected``: the database was unavailable)."""
        DB_RETRIES.inc()
        text = str(error).strip() or type(error).__name__
        self.last_error = text
        if not expected:
            # the writer isolates bad messages itself; anything else is a bug: keep the
            # batch (never drop it, never commit past it) and say so loudly
            log.error("unexpected error writing a batch; holding it and retrying", exc_info=error,
                      extra={"event": "write_error", "attempt": attempt, "messages": size})
        if self.db_ok:
            self.db_ok = False
            self.since = time.monotonic()
            DB_UP.set(0)
            log.error("database unavailable; holding the batch and retrying",
                      extra={"event": "db_outage", "error": text, "messages": size})
        else:
            log.warning("batch write retry failed", extra={"event": "db_retry_failed", "attempt": attempt,
                                                          "error": text, "messages": size})

    def write_succeeded(self) -> None:
        if not self.db_ok:
            log.info("database back; batch written", extra={
                "event": "db_recovered", "outage_seconds": round(time.monotonic() - (self.since or 0), 2)})
            self.db_ok = True
            self.since = None
            self.last_error = None
            DB_UP.set(1)

    def dlq_failed(self, error: Exception, attempt: int) -> None:
        DLQ_RETRIES.inc()
        self.dlq_ok = False
        log.error("dead letters not delivered; retrying", extra={
            "event": "dlq_failed", "attempt": attempt, "errors": getattr(error, "failures", [str(error)])[:3]})

    def dlq_succeeded(self) -> None:
        if not self.dlq_ok:
            log.info("dead-letter queue reachable again", extra={"event": "dlq_recovered"})
        self.dlq_ok = True

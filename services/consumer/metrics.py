"""The consumer's Prometheus metrics (process-wide registry, shared by every service instance)."""

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

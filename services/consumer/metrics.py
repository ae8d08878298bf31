"""The consumer's Prometheus metrics (process-wide registry, shared by every service instance)."""

from prometheus_client import Counter, Gauge, Histogram

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

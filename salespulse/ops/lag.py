"""``salespulse lag``: how far a consumer group is behind, per partition.

lag = high watermark - committed offset (the next offset the group reads).

The committed offsets come from the group coordinator (OffsetFetch through the
admin client; the group is not joined, so running this beside live consumers
never triggers a rebalance). The high watermarks come from a consumer's
CACHED watermarks, i.e. from fetch responses: a throwaway consumer (a group id
that never joins nor commits) is assigned every partition at the group's
committed offset and polls until each partition's watermark is known. A
non-cached ``get_watermark_offsets``/``list_offsets(latest)`` query is not
used: brokers with DESIGN.md's defect 3 answer it wrongly.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from salespulse.contracts import TOPICS
from salespulse.kafka import committed_offsets, consumer_config, existing_topics, admin_client
from salespulse.ops import OpsError
from salespulse.settings import get_settings


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group has no commit for it
    low: int | None
    high: int | None  # None: watermark not known within the timeout
    lag: int | None


def cached_watermarks(bootstrap: str, partitions: list[TopicPartition], timeout: float = 15.0
                      ) -> dict[tuple[str, int], tuple[int | None, int | None]]:
    """(low, high) per partition from fetch responses (cached watermarks).

    ``partitions`` carry the offset to fetch from (any valid offset works;
    the group's committed offset keeps the read small).
    """
    consumer = Consumer(consumer_config(bootstrap, f"salespulse-lag-{uuid.uuid4().hex}",
                                        **{"fetch.max.bytes": 1_048_576, "queued.max.messages.kbytes": 1024,
                                           "statistics.interval.ms": 0}))
    found: dict[tuple[str, int], tuple[int | None, int | None]] = {}
    try:
        consumer.assign(partitions)
        deadline = time.monotonic() + timeout
        pending = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        while pending:
            consumer.consume(num_messages=500, timeout=0.1)
            still = []
            for tp in pending:
                try:
                    low, high = consumer.get_watermark_offsets(tp, cached=True)
                except KafkaException:
                    low = high = None
                if high is not None and high >= 0:
                    found[(tp.topic, tp.partition)] = (low if low is not None and low >= 0 else None, high)
                else:
                    still.append(tp)
            pending = still
            if pending and time.monotonic() > deadline:
                break
        for tp in pending:
            found[(tp.topic, tp.partition)] = (None, None)
    finally:
        consumer.close()  # assign()-only consumer: it never joined a group, close is safe
    return found


def consumer_lag(bootstrap: str, group: str, topics: list[str] | None = None, timeout: float = 15.0
                 ) -> list[PartitionLag]:
    """Lag of ``group`` on every partition of ``topics`` (default: the data topics)."""
    present = existing_topics(admin_client(bootstrap))
    names = topics or list(TOPICS)
    missing = [t for t in names if t not in present]
    if missing:
        raise OpsError(f"unknown topic(s): {', '.join(missing)} (present: {', '.join(sorted(present)) or 'none'})")
    counts = {t: present[t] for t in names}
    committed = {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
                 for tp in committed_offsets(bootstrap, group, counts)}
    start = [TopicPartition(t, p, committed.get((t, p)) if committed.get((t, p)) is not None else OFFSET_BEGINNING)
             for t, n in counts.items() for p in range(n)]
    marks = cached_watermarks(bootstrap, start, timeout)
    rows = []
    for tp in start:
        key = (tp.topic, tp.partition)
        low, high = marks[key]
        done = committed.get(key)
        if high is None:
            lag = None
        elif done is None:
            lag = high - (low or 0)  # nothing committed: the group would read everything retained
        else:
            lag = max(high - done, 0)
        rows.append(PartitionLag(tp.topic, tp.partition, done, low, high, lag))
    return rows


def format_table(group: str, rows: list[PartitionLag]) -> str:
    header = ("topic", "partition", "committed", "high", "lag")
    cells = [header] + [(r.topic, str(r.partition), "-" if r.committed is None else str(r.committed),
                         "?" if r.high is None else str(r.high), "?" if r.lag is None else str(r.lag))
                        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [f"group {group}"]
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    total = sum(r.lag for r in rows if r.lag is not None)
    unknown = sum(1 for r in rows if r.lag is None)
    lines.append(f"total lag: {total}" + (f" ({unknown} partition(s) unknown)" if unknown else ""))
    return "\n".join(lines)


def cmd_lag(args) -> int:
    settings = get_settings()
    group = args.group or settings.consumer_group
    rows = consumer_lag(settings.kafka_bootstrap_servers, group, args.topic, args.timeout)
    if args.json:
        print(json.dumps({"group": group, "total_lag": sum(r.lag for r in rows if r.lag is not None),
                          "partitions": [asdict(r) for r in rows]}, indent=2))
    else:
        print(format_table(group, rows))
    return 0

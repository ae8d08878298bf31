"""Kafka client helpers shared by every service (confluent-kafka).

Everything here works unchanged against Apache Kafka; the embedded broker's
defects (see docs/broker.md) are handled as faults:

* topics are created explicitly with their partition counts before any client
  starts (an unknown topic would auto-create with the wrong count);
* consumers use short session timeouts (fast joins) and ``earliest`` reset;
* lag comes from cached watermarks, never a fresh ``get_watermark_offsets``
  query (which can be wrong): ``salespulse.lag``;
* a stuck group can be recovered: save offsets, delete it, restore them.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka import ConsumerGroupTopicPartitions

from salespulse.contracts import all_topic_partitions
from salespulse.settings import Settings, get_settings

log = logging.getLogger(__name__)

RETENTION_MS = 7 * 24 * 3600 * 1000


def producer_config(bootstrap: str, **overrides) -> dict:
    config = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,  # no duplicates from internal retries
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "message.timeout.ms": 30_000,
        "retry.backoff.ms": 100,
        "retry.backoff.max.ms": 2_000,
    }
    config.update(overrides)
    return config


def consumer_config(bootstrap: str, group: str, **overrides) -> dict:
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,  # commit only after the database commit
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "partition.assignment.strategy": "cooperative-sticky",
        "statistics.interval.ms": 5000,
        # librdkafka's prefetch, bounded in bytes whatever the message sizes
        # (the ingestion consumer sizes it from its batch bound: prefetch_config)
        **prefetch_config(DEFAULT_PREFETCH_BYTES),
    }
    config.update(overrides)
    return config


#: prefetch of a consumer that does not say (librdkafka's queue, in bytes)
DEFAULT_PREFETCH_BYTES = 16 << 20
#: the largest message the producers and the broker accept by default
#: (message.max.bytes, 1,000,000); a fetch must be able to carry one
MESSAGE_MAX_BYTES = 1_000_000


def prefetch_config(queue_bytes: int) -> dict:
    """librdkafka settings bounding what a consumer holds before the
    application reads it: the local queue (``queued.max.messages.kbytes``,
    ``queue_bytes``), one fetch response (``fetch.max.bytes``: half of it,
    at least one message of ``MESSAGE_MAX_BYTES``) and a partition's share of
    a fetch (``max.partition.fetch.bytes``, 1 MiB). A larger message is still
    returned alone (a fetch always returns the first record batch whole).
    RSS then stays bounded by about queue + fetch buffers, whatever the sizes."""
    fetch = max(queue_bytes // 2, 1 << 20)
    return {
        "queued.max.messages.kbytes": max(queue_bytes // 1024, 1024),
        "fetch.max.bytes": fetch,
        "max.partition.fetch.bytes": min(1 << 20, fetch),
    }


def admin_client(bootstrap: str, **overrides) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, **overrides})


def existing_topics(admin: AdminClient, timeout: float = 10.0) -> dict[str, int]:
    """Topic → partition count, from a metadata request that names no topic
    (naming an unknown topic would auto-create it)."""
    metadata = admin.list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in metadata.topics.items() if not t.error}


def topic_specs(topics: dict[str, int] | None = None, settings: Settings | None = None) -> list[NewTopic]:
    """What the set-up creates: every topic with its partition count, the
    replication of ``TOPIC_REPLICATION_FACTOR``, ``min.insync.replicas`` of
    ``TOPIC_MIN_INSYNC_REPLICAS`` and 7-day retention."""
    settings = settings or get_settings()
    replicas, in_sync = settings.topic_replication_factor, settings.topic_min_insync_replicas
    if in_sync > replicas:
        raise ValueError(f"TOPIC_MIN_INSYNC_REPLICAS={in_sync} exceeds TOPIC_REPLICATION_FACTOR={replicas}: "
                         "no write could ever be acknowledged")
    topics = topics if topics is not None else all_topic_partitions()
    return [NewTopic(name, num_partitions=parts, replication_factor=replicas,
                     config={"retention.ms": str(RETENTION_MS), "min.insync.replicas": str(in_sync)})
            for name, parts in topics.items()]


def ensure_topics(bootstrap: str, topics: dict[str, int] | None = None, timeout: float = 30.0) -> dict[str, int]:
    """Create every missing topic as :func:`topic_specs` renders it; verify the rest.

    Raises if a topic exists with a different partition count.
    """
    topics = topics if topics is not None else all_topic_partitions()
    admin = admin_client(bootstrap)
    deadline = time.monotonic() + timeout
    while True:
        try:
            present = existing_topics(admin)
            break
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    missing = topic_specs({name: parts for name, parts in topics.items() if name not in present})
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
            try:
                future.result()
                log.info("created topic %s", name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    present = existing_topics(admin)
    wrong = {n: present.get(n) for n, p in topics.items() if present.get(n) != p}
    if wrong:
        raise RuntimeError(f"topics with unexpected partition counts: {wrong} (expected {topics})")
    return {n: present[n] for n in topics}


def committed_offsets(bootstrap: str, group: str, topics: dict[str, int] | None = None) -> list[TopicPartition]:
    """The group's committed offsets for every partition of ``topics``."""
    topics = topics if topics is not None else all_topic_partitions()
    admin = admin_client(bootstrap)
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
    )
    result = admin.list_consumer_group_offsets([request])[group].result()
    return list(result.topic_partitions)


def recover_group(bootstrap: str, group: str) -> list[TopicPartition]:
    """Recovery path for a stuck group: save its offsets, delete it, restore them.

    Run it with every consumer of the group stopped. Offsets are restored by a
    consumer that assigns the partitions (no group join) and commits them —
    the admin API's ``alter_consumer_group_offsets`` fails on the embedded
    broker for a just-deleted group, a plain commit works on both brokers.
    """
    saved = [tp for tp in committed_offsets(bootstrap, group) if tp.offset >= 0]
    admin = admin_client(bootstrap)
    admin.delete_consumer_groups([group], request_timeout=15)[group].result()
    if saved:
        restorer = Consumer(consumer_config(bootstrap, group))
        try:
            restorer.assign(saved)
            restorer.commit(offsets=saved, asynchronous=False)
        finally:
            restorer.close()  # safe: assign() never joins the group
    return saved

"""Consumer-lag sensor: observes the Kafka topics and records the lag.

* committed offsets and lag: ``salespulse.lag.group_lag`` (the ingestion
  group's committed offsets read with the admin API, nothing here joins that
  group or commits for it; high watermarks from an observer consumer's
  *cached* watermarks, never a fresh watermark query). A data topic's
  partition the group never committed counts from offset 0 here (``salespulse
  lag`` counts from the retained start); dead-letter topics are not consumed:
  their watermarks only;
* throughput: the high watermark's growth since the previous tick (cursor).

Each tick reports an ``AssetObservation`` per topic asset, inserts one row per
data topic into ``pipeline_observations`` (the dashboard's lag chart) and flags
a lag above ``FRESHNESS_LAG_TARGET_MESSAGES`` (``KafkaResource.lag_limit``,
where the freshness rule turns the lag late) (warning log + ``lag_exceeded``).
"""


import json
import time
from dataclasses import dataclass, field

from dagster import (
    AssetObservation,
    DefaultSensorStatus,
    MetadataValue,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from orchestration.assets.sources import TOPIC_KEYS
from orchestration.resources import KafkaResource, PostgresResource
from salespulse.broker_rotation import RotationFiles
from salespulse.contracts import TOPICS, all_topic_partitions
from salespulse.lag import group_lag, partition_lag


@dataclass
class TopicObservation:
    topic: str
    high_watermark: int
    committed: int
    lag: int
    partitions: dict[int, dict] = field(default_factory=dict)
    messages_per_s: float | None = None
    complete: bool = True  # every partition's watermark was known

    @property
    def consumed(self) -> bool:
        """Data topics are consumed by the ingestion group; dead-letter topics are not."""
        return self.topic in TOPICS


def observe_topics(bootstrap: str, group: str, topics: dict[str, int] | None = None,
                   timeout: float = 5.0) -> list[TopicObservation]:
    """Watermark, committed offset and lag per topic (summed over partitions)."""
    topics = topics if topics is not None else all_topic_partitions()
    out = {topic: TopicObservation(topic, 0, 0, 0) for topic in topics}
    for row in group_lag(bootstrap, group, topics, timeout):
        obs = out[row.topic]
        if row.high is None:
            obs.complete = False
            continue
        done = (row.committed or 0) if obs.consumed else row.high
        lag = partition_lag(row.high, done)
        obs.partitions[row.partition] = {"high_watermark": row.high, "committed": done, "lag": lag}
        obs.high_watermark += row.high
        obs.committed += done
        obs.lag += lag
    return list(out.values())


def record_observations(postgres: PostgresResource, observations: list[TopicObservation]) -> int:
    """Insert one pipeline_observations row per consumed topic; return the count."""
    rows = [
        (o.topic, o.high_watermark, o.committed, o.lag, o.messages_per_s)
        for o in observations
        if o.consumed and o.complete
    ]
    if rows:
        with postgres.connection() as conn, conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO pipeline_observations (observed_at, topic, high_watermark, committed, lag, messages_per_s)
                   VALUES (clock_timestamp(), %s, %s, %s, %s, %s)""",
                rows,
            )
    return len(rows)


@sensor(
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Observes every Kafka topic (high watermark, the ingestion group's committed offset, lag, "
        "messages/s), records them in pipeline_observations and flags lag above the threshold."
    ),
)
def kafka_lag_sensor(context: SensorEvaluationContext, kafka: KafkaResource, postgres: PostgresResource):
    previous = json.loads(context.cursor) if context.cursor else {}
    now = time.time()
    observations = observe_topics(kafka.bootstrap, kafka.group)
    elapsed = now - previous.get("at", now)
    for obs in observations:
        before = previous.get("high", {}).get(obs.topic)
        if obs.complete and before is not None and elapsed > 0 and obs.high_watermark >= before:
            obs.messages_per_s = round((obs.high_watermark - before) / elapsed, 3)
    record_observations(postgres, observations)

    rotation = RotationFiles(postgres.settings().salespulse_state_dir).load_state()
    flagged = []
    events = []
    for obs in observations:
        exceeded = obs.consumed and obs.lag > kafka.lag_limit
        if exceeded:
            flagged.append(f"{obs.topic} lag {obs.lag} > {kafka.lag_limit}")
        metadata = {
            "high_watermark": MetadataValue.int(obs.high_watermark),
            "partitions": MetadataValue.json({str(p): v for p, v in obs.partitions.items()}),
            "complete": MetadataValue.bool(obs.complete),
        }
        if obs.consumed:
            metadata.update({
                "committed": MetadataValue.int(obs.committed),
                "consumer_lag": MetadataValue.int(obs.lag),
                "lag_threshold": MetadataValue.int(kafka.lag_limit),
                "lag_exceeded": MetadataValue.bool(exceeded),
                "consumer_group": MetadataValue.text(kafka.group),
            })
        if obs.messages_per_s is not None:
            metadata["messages_per_s"] = MetadataValue.float(obs.messages_per_s)
        if rotation is not None:  # the embedded broker restarts empty now and then (offsets from 0)
            metadata.update({
                "broker_rotations": MetadataValue.int(rotation.rotations),
                "broker_held_messages": MetadataValue.int(rotation.held_messages),
                "broker_last_rotation_at": MetadataValue.float(rotation.last_rotation_at or 0.0),
            })
        events.append(AssetObservation(asset_key=TOPIC_KEYS[obs.topic], metadata=metadata))
    for message in flagged:
        context.log.warning(f"consumer lag above threshold: {message}")
    cursor = json.dumps({
        "at": now,
        "high": {o.topic: o.high_watermark for o in observations if o.complete},
        "flagged": flagged,
    })
    return SensorResult(
        asset_events=events,
        cursor=cursor,
        skip_reason=("LAG ABOVE THRESHOLD: " + "; ".join(flagged)) if flagged else "lag within threshold",
    )

"""External assets: the Kafka topics, the raw tables the consumer writes, and
the dashboard that reads the reports.

Dagster does not materialise these; they carry the lineage of the whole
pipeline. The Kafka topics receive observations (high watermark, committed
offset, lag, throughput) from the ``kafka_lag_sensor``; the raw tables receive
observations (rows, newest row) from the ``new_data_sensor``.
"""

from __future__ import annotations

from dagster import AssetKey, AssetSpec

from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC


def topic_asset_key(topic: str) -> AssetKey:
    """``ecommerce.events`` -> ``kafka_ecommerce_events``."""
    return AssetKey("kafka_" + topic.replace(".", "_").replace("-", "_"))


ECOMMERCE_TOPIC_KEY = topic_asset_key(ECOMMERCE_TOPIC.name)
RESTAURANT_TOPIC_KEY = topic_asset_key(RESTAURANT_TOPIC.name)
ECOMMERCE_DLQ_KEY = topic_asset_key(ECOMMERCE_TOPIC.dlq)
RESTAURANT_DLQ_KEY = topic_asset_key(RESTAURANT_TOPIC.dlq)

#: topic name -> asset key, for every topic the lag sensor observes
TOPIC_KEYS = {
    ECOMMERCE_TOPIC.name: ECOMMERCE_TOPIC_KEY,
    RESTAURANT_TOPIC.name: RESTAURANT_TOPIC_KEY,
    ECOMMERCE_TOPIC.dlq: ECOMMERCE_DLQ_KEY,
    RESTAURANT_TOPIC.dlq: RESTAURANT_DLQ_KEY,
}

kafka_topics = [
    AssetSpec(
        ECOMMERCE_TOPIC_KEY,
        group_name="ecommerce",
        description=(
            f"Kafka topic `{ECOMMERCE_TOPIC.name}` ({ECOMMERCE_TOPIC.partitions} partitions, key "
            f"`{ECOMMERCE_TOPIC.key_field}`): e-commerce events from the producer. Observed by "
            "kafka_lag_sensor (high watermark, ingestion group's committed offset, lag, messages/s)."
        ),
        kinds={"kafka"},
        metadata={"topic": ECOMMERCE_TOPIC.name, "partitions": ECOMMERCE_TOPIC.partitions},
    ),
    AssetSpec(
        RESTAURANT_TOPIC_KEY,
        group_name="restaurant",
        description=(
            f"Kafka topic `{RESTAURANT_TOPIC.name}` ({RESTAURANT_TOPIC.partitions} partitions, key "
            f"`{RESTAURANT_TOPIC.key_field}`): restaurant orders from the producer. "
            "Observed by kafka_lag_sensor."
        ),
        kinds={"kafka"},
        metadata={"topic": RESTAURANT_TOPIC.name, "partitions": RESTAURANT_TOPIC.partitions},
    ),
    AssetSpec(
        ECOMMERCE_DLQ_KEY,
        group_name="pipeline",
        deps=[ECOMMERCE_TOPIC_KEY],
        description=f"Dead-letter topic `{ECOMMERCE_TOPIC.dlq}`: e-commerce messages that failed their contract.",
        kinds={"kafka"},
        metadata={"topic": ECOMMERCE_TOPIC.dlq},
    ),
    AssetSpec(
        RESTAURANT_DLQ_KEY,
        group_name="pipeline",
        deps=[RESTAURANT_TOPIC_KEY],
        description=f"Dead-letter topic `{RESTAURANT_TOPIC.dlq}`: restaurant orders that failed their contract.",
        kinds={"kafka"},
        metadata={"topic": RESTAURANT_TOPIC.dlq},
    ),
]


def _table(name: str, group: str, deps: list, description: str) -> AssetSpec:
    return AssetSpec(
        name,
        group_name=group,
        deps=deps,
        description=description,
        kinds={"postgres"},
        metadata={"table": f"public.{name}"},
    )


raw_tables = [
    _table("events", "ecommerce", [ECOMMERCE_TOPIC_KEY],
           "Raw e-commerce events (one row per event_id), written by the consumer."),
    _table("products", "ecommerce", [ECOMMERCE_TOPIC_KEY],
           "Product catalogue upserted by the consumer from product events."),
    _table("transactions", "ecommerce", [ECOMMERCE_TOPIC_KEY],
           "One row per purchase event (quantity, total, payment method)."),
    _table("orders", "restaurant", [RESTAURANT_TOPIC_KEY],
           "Raw restaurant orders (one row per order_id), written by the consumer."),
    _table("order_items", "restaurant", [RESTAURANT_TOPIC_KEY],
           "Line items of the restaurant orders (item, category, quantity, unit price)."),
    _table("dead_letters", "pipeline", [ECOMMERCE_TOPIC_KEY, RESTAURANT_TOPIC_KEY],
           "Messages that failed their contract, with the raw payload and the reason."),
]

RAW_TABLE_KEYS = {spec.key.path[-1]: spec.key for spec in raw_tables}

dashboard = AssetSpec(
    "dashboard",
    group_name="pipeline",
    deps=["ecommerce_reports", "restaurant_reports", "sales_by_category", "top_products",
          "daily_metrics", "dead_letters"],
    description=(
        "The Flask dashboard (dashboard/): reads the report tables, the materialized views, "
        "pipeline_observations and pipeline_runs as the read-only dashboard role."
    ),
    kinds={"flask"},
)

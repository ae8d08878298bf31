"""Raw rows carry their Kafka origin (issue 13, part 3): the consumer stores
each event's and order's partition and offset as the real broker delivered
them, and a re-sent identical message keeps the origin of its first copy."""

from __future__ import annotations

import json

from confluent_kafka import Producer

from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC
from salespulse.kafka import producer_config
from services.consumer.app import ConsumerService
from tests.support.consumer import ServiceThread, ecommerce_event, query, restaurant_order
from tests.support.consumer import end_offsets, group_from


def produce_recording(bootstrap: str, topic: str, docs: list[dict], id_field: str, key_field: str) -> dict:
    """Produce ``docs``; their id -> (partition, offset) as acknowledged by the broker."""
    producer = Producer(producer_config(bootstrap))
    origin, errors = {}, []

    def delivered(err, msg, ident):
        if err:
            errors.append(err)
        else:
            origin[ident] = (msg.partition(), msg.offset())

    for doc in docs:
        producer.produce(topic, key=doc[key_field].encode(), value=json.dumps(doc).encode(),
                         on_delivery=lambda err, msg, ident=doc[id_field]: delivered(err, msg, ident))
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:3]
    assert len(origin) == len(docs)
    return origin


def stored_origin(url: str, table: str, id_column: str, ids: list[str]) -> dict:
    rows = query(url, f"SELECT {id_column}::text, kafka_partition, kafka_offset FROM {table} "
                      f"WHERE {id_column} = ANY(%s::uuid[])", (ids,))
    return {ident: (p, o) for ident, p, o in rows}


def consume_all(settings, start: dict) -> None:
    """A fresh group reads from ``start`` (where this test's messages start) to the end."""
    svc = ConsumerService(settings.model_copy(update={"metrics_port": 0}),
                          group_id=group_from(settings.kafka_bootstrap_servers, "origin", start),
                          stop_at_end=True, batch_size=200)
    ServiceThread(svc).start().join(180)


def test_rows_carry_partition_and_offset_from_the_broker_and_keep_the_first_on_resend(settings, database_url, broker):
    events = [ecommerce_event(i, run="origin") for i in range(300)]
    orders = [restaurant_order(i) for i in range(60)]
    start = end_offsets(broker.bootstrap)
    event_origin = produce_recording(broker.bootstrap, ECOMMERCE_TOPIC.name, events, "event_id", "user_id")
    order_origin = produce_recording(broker.bootstrap, RESTAURANT_TOPIC.name, orders, "order_id", "order_id")
    # the messages really are spread over the partitions (else the test proves little)
    assert len({p for p, _ in event_origin.values()}) > 1 and len({p for p, _ in order_origin.values()}) > 1
    consume_all(settings, start)

    assert stored_origin(database_url, "events", "event_id", list(event_origin)) == event_origin
    assert stored_origin(database_url, "orders", "order_id", list(order_origin)) == order_origin

    # identical re-sends land at new offsets; the rows keep their first origin (a duplicate is a no-op)
    resent = produce_recording(broker.bootstrap, ECOMMERCE_TOPIC.name, events[:50], "event_id", "user_id")
    assert all(resent[i][1] != event_origin[i][1] or resent[i][0] != event_origin[i][0] for i in resent)
    consume_all(settings, start)
    assert stored_origin(database_url, "events", "event_id", list(event_origin)) == event_origin

"""The consumer service in-process against the real broker and PostgreSQL:
end to end, dead-letter topics, replay by assignment, a database outage.

Topics are shared by every test of the session, so a fresh group reading from
earliest also sees earlier tests' messages: assertions count only the ids this
test produced (in this test's fresh database)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

from confluent_kafka import Consumer, TopicPartition

from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC
from salespulse.db import migrate
from salespulse.kafka import committed_offsets, consumer_config
from salespulse.settings import Settings
from salespulse.stack.postgres import EmbeddedPostgres
from services.consumer.app import ConsumerService
from tests.conftest import free_port
from tests.support.consumer import (
    ServiceThread,
    count_events,
    count_orders,
    ecommerce_event,
    end_offsets,
    group_at_end,
    group_from,
    expected_items,
    expected_purchase_total,
    produce,
    produce_events,
    produce_orders,
    query,
    restaurant_order,
    unique_group,
    wait_until,
)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric_value(body: bytes, name: str, **labels) -> float:
    total = 0.0
    for line in body.decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def service_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"metrics_port": 0})


def test_end_to_end_both_domains_exact_counts_and_replays_are_noops(settings, database_url, broker):
    events = [ecommerce_event(i, run="e2e") for i in range(1500)]
    orders = [restaurant_order(i) for i in range(300)]
    start = end_offsets(broker.bootstrap)  # where this test's messages start
    produce_events(broker.bootstrap, events)
    produce_orders(broker.bootstrap, orders)
    group = group_from(broker.bootstrap, "e2e", start)

    svc = ConsumerService(service_settings(settings), group_id=group, stop_at_end=True, batch_size=500)
    ServiceThread(svc).start().join(180)

    ids = [e["event_id"] for e in events]
    oids = [o["order_id"] for o in orders]
    purchases = [e for e in events if e["event_type"] == "purchase"]
    n_items, orders_total = expected_items(orders)
    assert count_events(database_url, ids) == 1500
    assert query(database_url, "SELECT count(*), sum(total_amount) FROM transactions WHERE event_id = ANY(%s::uuid[])",
                 (ids,))[0] == (len(purchases), expected_purchase_total(events))
    assert query(database_url, "SELECT count(*), sum(total_amount) FROM orders WHERE order_id = ANY(%s::uuid[])",
                 (oids,))[0] == (300, orders_total)
    assert query(database_url, "SELECT count(*), sum(line_total) FROM order_items WHERE order_id = ANY(%s::uuid[])",
                 (oids,))[0] == (n_items, orders_total)
    # the group committed the end of every partition of both topics ...
    committed = {(tp.topic, tp.partition): tp.offset for tp in committed_offsets(broker.bootstrap, group)}
    ends = end_offsets(broker.bootstrap)
    assert {key: committed[key] for key in ends} == ends

    before = query(database_url, "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM orders), "
                                 "(SELECT count(*) FROM order_items), (SELECT count(*) FROM transactions)")[0]
    # the same events again (re-sent by a producer) and a fresh group re-reading all of them: no new rows
    produce_events(broker.bootstrap, events[:200])
    produce_orders(broker.bootstrap, orders[:50])
    # ... so it resumes there: it reads exactly the 250 re-sent messages, all duplicates
    svc = ConsumerService(service_settings(settings), group_id=group, stop_at_end=True, batch_size=500)
    ServiceThread(svc).start().join(180)
    assert svc.totals == {"duplicate": 250}
    reread = ConsumerService(service_settings(settings), group_id=group_from(broker.bootstrap, "e2e-reread", start),
                             stop_at_end=True, batch_size=500)
    ServiceThread(reread).start().join(180)
    assert reread.totals == {"duplicate": 2050}
    after = query(database_url, "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM orders), "
                                "(SELECT count(*) FROM order_items), (SELECT count(*) FROM transactions)")[0]
    assert after == before


def test_bad_messages_go_to_dead_letters_and_dlq_topics_neighbours_stored(settings, database_url, broker):
    run = uuid.uuid4().hex[:8]
    group = group_at_end(broker.bootstrap, "dlq")
    good = [ecommerce_event(i, run=run) for i in range(20)]
    wrong_typed = ecommerce_event(1, run=run, event_type="purchase", total_amount="12.50x")
    bad_rule = restaurant_order(1, channel="takeaway", table_number=4)
    bad_values = {
        f"{run}-malformed": b'{"event_id": ',
        f"{run}-empty": b"",
        f"{run}-latin1": "caf\u00e9".encode("latin-1"),
        f"{run}-wrongtype": json.dumps(wrong_typed).encode(),
    }
    msgs = [(e["user_id"].encode(), json.dumps(e).encode()) for e in good[:10]]
    msgs += [(k.encode(), v) for k, v in bad_values.items()]
    msgs += [(e["user_id"].encode(), json.dumps(e).encode()) for e in good[10:]]
    produce(broker.bootstrap, ECOMMERCE_TOPIC.name, msgs, headers=[("trace", b"t-1")])
    good_order = restaurant_order(2)
    produce(broker.bootstrap, RESTAURANT_TOPIC.name,
            [(f"{run}-rule".encode(), json.dumps(bad_rule).encode()),
             (good_order["order_id"].encode(), json.dumps(good_order).encode())])

    svc = ConsumerService(service_settings(settings), group_id=group, stop_at_end=True,
                          batch_size=1000, max_wait_ms=2000)
    ServiceThread(svc).start().join(180)

    assert count_events(database_url, [e["event_id"] for e in good]) == 20
    assert count_orders(database_url, [good_order["order_id"]]) == 1
    rows = dict(query(database_url, "SELECT key, error FROM dead_letters WHERE key LIKE %s", (f"{run}-%",)))
    assert set(rows) == {*bad_values, f"{run}-rule"}
    assert rows[f"{run}-empty"] == "empty message"
    assert rows[f"{run}-latin1"].startswith("not UTF-8")
    assert "json" in rows[f"{run}-malformed"].lower()
    assert rows[f"{run}-wrongtype"].startswith("total_amount")
    assert "table_number must be null" in rows[f"{run}-rule"]
    payload = query(database_url, "SELECT payload FROM dead_letters WHERE key = %s", (f"{run}-latin1",))[0][0]
    assert bytes(payload) == bad_values[f"{run}-latin1"]

    # the DLQ topics carry the raw value, the original key and the reason + source in headers
    reader = Consumer(consumer_config(broker.bootstrap, unique_group("dlq-reader"), **{"enable.partition.eof": True}))
    reader.assign([TopicPartition(ECOMMERCE_TOPIC.dlq, 0, 0), TopicPartition(RESTAURANT_TOPIC.dlq, 0, 0)])
    found: dict[str, tuple] = {}
    eof = set()
    while len(eof) < 2:
        for m in reader.consume(100, timeout=1.0):
            if m.error():
                eof.add(m.topic())
                continue
            key = (m.key() or b"").decode(errors="replace")
            if key.startswith(run):
                found[key] = (m.topic(), m.value(), dict(m.headers() or []))
    reader.close()
    assert set(found) == set(rows)
    topic, value, headers = found[f"{run}-latin1"]
    assert topic == ECOMMERCE_TOPIC.dlq and value == bad_values[f"{run}-latin1"]
    assert headers["dlq.error"].decode().startswith("not UTF-8")
    assert headers["dlq.source.topic"] == ECOMMERCE_TOPIC.name.encode()
    assert int(headers["dlq.source.offset"]) >= 0 and headers["trace"] == b"t-1"
    assert found[f"{run}-rule"][0] == RESTAURANT_TOPIC.dlq


def test_replay_by_assignment_from_an_offset(settings, database_url, broker):
    """The replay path: assign() partitions at given offsets, stop at their end."""
    orders = [restaurant_order(i, n_items=2) for i in range(90)]
    # find where our orders will start: the current end of each partition
    probe = Consumer(consumer_config(broker.bootstrap, unique_group("probe")))
    starts = []
    for p in range(RESTAURANT_TOPIC.partitions):
        _low, high = probe.get_watermark_offsets(TopicPartition(RESTAURANT_TOPIC.name, p), timeout=10, cached=False)
        starts.append(high)
    probe.close()
    produce_orders(broker.bootstrap, orders)
    # (a wrong high watermark would only make the replay start earlier: the
    # assertions below count our own orders, which are all after the start)
    assignment = [TopicPartition(RESTAURANT_TOPIC.name, p, max(0, starts[p] - 1)) for p in range(3)]
    svc = ConsumerService(service_settings(settings), group_id=unique_group("replay"), assignment=assignment,
                          stop_at_end=True, batch_size=50)
    ServiceThread(svc).start().join(120)
    assert count_orders(database_url, [o["order_id"] for o in orders]) == 90
    assert query(database_url, "SELECT count(*) FROM order_items WHERE order_id = ANY(%s::uuid[])",
                 ([o["order_id"] for o in orders],))[0][0] == 180
    # idempotent: replaying the same range again adds nothing
    ServiceThread(ConsumerService(service_settings(settings), group_id=unique_group("replay2"),
                                  assignment=assignment, stop_at_end=True)).start().join(120)
    assert query(database_url, "SELECT count(*) FROM order_items WHERE order_id = ANY(%s::uuid[])",
                 ([o["order_id"] for o in orders],))[0][0] == 180


def test_database_outage_holds_batches_then_stores_everything(broker, state_dir, monkeypatch):
    """A dedicated PostgreSQL is stopped under a running consumer, then restarted."""
    pg = EmbeddedPostgres(state_dir / f"outage-{uuid.uuid4().hex[:6]}", free_port()).start()
    try:
        url = pg.create_database("outage")
        base = Settings(database_url=url, kafka_bootstrap_servers=broker.bootstrap, metrics_port=0)
        migrate(base)
        first = [ecommerce_event(i, run="out1") for i in range(300)]
        second = [ecommerce_event(i, run="out2") for i in range(300)]
        orders = [restaurant_order(i) for i in range(40)]
        svc = ConsumerService(base, group_id=group_at_end(broker.bootstrap, "outage"), batch_size=100, max_wait_ms=100)
        runner = ServiceThread(svc).start()
        assert svc.ready.wait(30)
        produce_events(broker.bootstrap, first)
        wait_until(lambda: count_events(url, [e["event_id"] for e in first]) == 300, 120, what="first wave stored")
        assert http_get(svc.metrics_port, "/health")[0] == 200

        pg.stop()  # outage
        produce_events(broker.bootstrap, second)
        produce_orders(broker.bootstrap, orders)
        wait_until(lambda: http_get(svc.metrics_port, "/health")[0] == 503, 60, what="unhealthy during outage")
        status, body = http_get(svc.metrics_port, "/health")
        assert json.loads(body)["database"] == "down"
        wait_until(lambda: metric_value(http_get(svc.metrics_port, "/metrics")[1],
                                        "salespulse_consumer_db_retries_total") >= 2, 60, what="retries")

        pg.start()  # back
        wait_until(lambda: count_events(url, [e["event_id"] for e in second]) == 300, 120,
                   what="second wave stored after the outage")
        wait_until(lambda: count_orders(url, [o["order_id"] for o in orders]) == 40, 60, what="orders stored")
        wait_until(lambda: http_get(svc.metrics_port, "/health")[0] == 200, 30, what="healthy again")
        # counters move when the batch's offsets are committed, just after its rows are visible
        wait_until(lambda: metric_value(http_get(svc.metrics_port, "/metrics")[1], "salespulse_consumer_messages_total",
                                        outcome="stored") >= 640, 30, what="stored counter")
        metrics = http_get(svc.metrics_port, "/metrics")[1]
        assert metric_value(metrics, "salespulse_consumer_db_up") == 1
        assert "salespulse_consumer_lag" in metrics.decode()
        assert metric_value(metrics, "salespulse_consumer_batch_seconds_count", stage="db") > 0
        runner.stop(60)
        assert count_events(url, [e["event_id"] for e in first + second]) == 600
    finally:
        pg.stop()


def test_stop_right_after_start_leaves_the_group_usable(settings, database_url, broker):
    """docs/broker.md, defect 4: a consumer must not close() while still joining; stopping at
    once waits for the first assignment (or exits without close). Either way the
    group keeps working for the next member."""
    group = group_at_end(broker.bootstrap, "early-stop")
    svc = ConsumerService(service_settings(settings), group_id=group)
    runner = ServiceThread(svc).start()
    assert svc.ready.wait(30)
    runner.stop(120)
    # it waited for its first assignment (shutdown.JOIN_GRACE_S), so it wrote, committed and
    # left the group (the path without one, left unclosed, is tested in test_consumer_parts)
    assert svc.partitions.ever_assigned and not svc.abandoned

    events = [ecommerce_event(i, run="early") for i in range(50)]
    produce_events(broker.bootstrap, events)
    nxt = ConsumerService(service_settings(settings), group_id=group, stop_at_end=True)
    ServiceThread(nxt).start().join(180)
    assert count_events(database_url, [e["event_id"] for e in events]) == 50


def test_linger_writes_a_paused_stream_without_waiting_for_size_or_max_wait(settings, database_url, broker):
    """Batch size 10,000 and max wait 10 min: only the linger can write 3 events
    while the service runs (with ``linger_ms=0`` this test times out)."""
    svc = ConsumerService(service_settings(settings), group_id=group_at_end(broker.bootstrap, "linger"),
                          batch_size=10_000, max_wait_ms=600_000, linger_ms=10)
    runner = ServiceThread(svc).start()
    try:
        assert svc.ready.wait(60)
        events = [ecommerce_event(i, run="linger") for i in range(3)]
        produce_events(broker.bootstrap, events)
        wait_until(lambda: count_events(database_url, [e["event_id"] for e in events]) == 3, 90,
                   what="3 events stored while the batch is far from full")
    finally:
        runner.stop()

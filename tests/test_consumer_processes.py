"""The consumer as real processes (`python -m services.consumer`): kill -9
mid-stream then restart, and scale-out of one group over three processes."""

from __future__ import annotations

import json
import signal
import threading
import urllib.error
import urllib.request

import pytest

from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC
from tests.conftest import free_port
from tests.support.consumer import (
    count_events,
    count_orders,
    ecommerce_event,
    expected_items,
    expected_purchase_total,
    kill_process,
    log_events,
    produce_events,
    produce_orders,
    query,
    restaurant_order,
    start_consumer_process,
    unique_group,
    wait_until,
)

pytestmark = pytest.mark.slow(reason='soak-style: 19,800 messages through consumer processes, SIGKILLed and scaled out to three')

TOTAL_PARTITIONS = ECOMMERCE_TOPIC.partitions + RESTAURANT_TOPIC.partitions


def health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except OSError:
        return None


def env_for(settings, group: str, port: int = 0) -> dict:
    return {"DATABASE_URL": settings.database_url, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "CONSUMER_GROUP": group, "METRICS_PORT": str(port)}


def test_kill_9_mid_stream_then_restart_stores_every_event_exactly_once(settings, database_url, broker, tmp_path):
    events = [ecommerce_event(i, run="k9") for i in range(12_000)]
    orders = [restaurant_order(i) for i in range(1_200)]
    ids = [e["event_id"] for e in events]
    oids = [o["order_id"] for o in orders]
    group = unique_group("kill9")

    def feed():  # keep producing while the consumer runs, so the kill lands mid-stream
        for k in range(0, len(events), 1000):
            produce_events(broker.bootstrap, events[k:k + 1000])
            produce_orders(broker.bootstrap, orders[k // 10:(k + 1000) // 10])

    feeder = threading.Thread(target=feed)
    first = start_consumer_process(env_for(settings, group), tmp_path / "first.log", "--batch-size", "100",
                                   "--max-wait-ms", "50")
    try:
        feeder.start()
        wait_until(lambda: count_events(database_url, ids) >= 1500, 120, 0.05, "some events stored")
        assert kill_process(first, signal.SIGKILL) == -signal.SIGKILL
        stored_at_kill = count_events(database_url, ids)
        feeder.join(120)
        assert stored_at_kill < len(events)  # the kill happened mid-stream

        second = start_consumer_process(env_for(settings, group), tmp_path / "second.log", "--batch-size", "100")
        try:
            wait_until(lambda: count_events(database_url, ids) == len(events)
                       and count_orders(database_url, oids) == len(orders), 180, 0.5, "everything stored")
            assert kill_process(second, signal.SIGTERM) == 0
        finally:
            kill_process(second)
    finally:
        kill_process(first)
        feeder.join(120)

    purchases = [e for e in events if e["event_type"] == "purchase"]
    n_items, orders_total = expected_items(orders)
    assert query(database_url, "SELECT count(*), count(DISTINCT event_id) FROM events WHERE event_id = ANY(%s::uuid[])",
                 (ids,))[0] == (len(events), len(events))
    assert query(database_url, "SELECT count(*), sum(total_amount) FROM transactions WHERE event_id = ANY(%s::uuid[])",
                 (ids,))[0] == (len(purchases), expected_purchase_total(events))
    assert query(database_url, "SELECT count(*), sum(line_total) FROM order_items WHERE order_id = ANY(%s::uuid[])",
                 (oids,))[0] == (n_items, orders_total)
    # the restarted process resumed from the committed offsets and shut down cleanly
    second_log = log_events(tmp_path / "second.log")
    assert any(e.get("event") == "assigned" for e in second_log)
    assert second_log[-1].get("event") == "stop"


def test_three_processes_share_partitions_and_survive_a_kill(settings, database_url, broker, tmp_path):
    group = unique_group("scale")
    ports = [free_port() for _ in range(3)]
    procs = [start_consumer_process(env_for(settings, group, port), tmp_path / f"c{i}.log", "--batch-size", "200")
             for i, port in enumerate(ports)]
    try:
        def assigned(which):
            counts = [(health(ports[i]) or {}).get("assigned_partitions", 0) for i in which]
            return counts if all(c > 0 for c in counts) and sum(counts) == TOTAL_PARTITIONS else None

        shares = wait_until(lambda: assigned([0, 1, 2]), 120, 0.5, "all three processes own partitions")
        assert sorted(shares) != [0, 0, TOTAL_PARTITIONS]

        wave1 = [ecommerce_event(i, run="s1") for i in range(3_000)]
        orders1 = [restaurant_order(i) for i in range(300)]
        produce_events(broker.bootstrap, wave1)
        produce_orders(broker.bootstrap, orders1)
        wait_until(lambda: count_events(database_url, [e["event_id"] for e in wave1]) == 3_000
                   and count_orders(database_url, [o["order_id"] for o in orders1]) == 300, 120, 0.5, "wave 1")

        def assign_events(i):
            return sum(e.get("event") == "assigned" for e in log_events(tmp_path / f"c{i}.log"))

        before_kill = [assign_events(0), assign_events(1)]
        kill_process(procs[2], signal.SIGKILL)  # its partitions move to the other two
        wave2 = [ecommerce_event(i, run="s2") for i in range(3_000)]
        orders2 = [restaurant_order(i) for i in range(300)]
        produce_events(broker.bootstrap, wave2)
        produce_orders(broker.bootstrap, orders2)
        wait_until(lambda: assigned([0, 1]), 120, 0.5, "survivors own every partition")
        wait_until(lambda: count_events(database_url, [e["event_id"] for e in wave2]) == 3_000
                   and count_orders(database_url, [o["order_id"] for o in orders2]) == 300, 120, 0.5, "wave 2")

        assert assign_events(0) + assign_events(1) > sum(before_kill)  # a survivor took partitions over
        for p in procs[:2]:
            assert kill_process(p, signal.SIGTERM) == 0
    finally:
        for p in procs:
            kill_process(p)

    events = wave1 + wave2
    ids = [e["event_id"] for e in events]
    oids = [o["order_id"] for o in orders1 + orders2]
    assert query(database_url, "SELECT count(*), sum(total_amount) FROM transactions WHERE event_id = ANY(%s::uuid[])",
                 (ids,))[0] == (sum(e["event_type"] == "purchase" for e in events), expected_purchase_total(events))
    n_items, total = expected_items(orders1 + orders2)
    assert query(database_url, "SELECT count(*), sum(line_total) FROM order_items WHERE order_id = ANY(%s::uuid[])",
                 (oids,))[0] == (n_items, total)
    logs = [log_events(tmp_path / f"c{i}.log") for i in range(3)]
    assert all(any(e.get("event") == "assigned" for e in lg) for lg in logs)
    assert all(lg[-1].get("event") == "stop" for lg in logs[:2])  # graceful SIGTERM shutdown

"""The producer service: simulation invariants, and the real thing against the
embedded broker (count + read back, broker restart → rebuild, /health and
/metrics, retries, SIGTERM)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC, parse_message
from salespulse.kafka import consumer_config, ensure_topics
from salespulse.settings import Settings
from salespulse.stack.broker import EmbeddedBroker
from services.producer.app import run
from services.producer.publisher import Publisher
from services.producer.simulation import (
    CATALOGUE,
    MENU_ITEMS,
    EcommerceSimulation,
    RestaurantSimulation,
)
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
PRICES = {p.id: p.price for p in CATALOGUE}
MENU_PRICES = {i.item_id: i.price for i in MENU_ITEMS}


# --------------------------------------------------------------------------- simulation


@pytest.fixture(scope="module")
def ecommerce_events():
    sim = EcommerceSimulation(seed=11, start=START)
    return [sim.next_event() for _ in range(20_000)]


@pytest.fixture(scope="module")
def restaurant_orders():
    sim = RestaurantSimulation(seed=11, start=START)
    return [sim.next_order() for _ in range(3_000)]


def test_event_type_ratios_within_bounds(ecommerce_events):
    counts = Counter(e.event_type for e in ecommerce_events)
    share = {t: n / len(ecommerce_events) for t, n in counts.items()}
    assert 0.56 <= share["page_view"] <= 0.64
    assert 0.13 <= share["search"] <= 0.17
    assert 0.11 <= share["add_to_cart"] <= 0.15
    assert 0.035 <= share["remove_from_cart"] <= 0.065
    assert 0.055 <= share["purchase"] <= 0.08


def test_events_carry_the_fields_of_their_type(ecommerce_events):
    for e in ecommerce_events:
        if e.event_type == "search":
            assert e.search_query and e.product is None
        else:
            assert e.product is not None and e.search_query is None
            assert e.product.price == PRICES[e.product.id]  # the one fixed catalogue
            assert e.product.price.as_tuple().exponent == -2
        if e.event_type == "purchase":
            assert e.quantity >= 1 and e.payment_method
            assert e.total_amount == (e.product.price * e.quantity).quantize(Decimal("0.01"))
        else:
            assert e.total_amount is None and e.payment_method is None


def test_purchases_and_removals_only_of_what_the_session_carted(ecommerce_events):
    cart: dict[tuple[str, str], int] = defaultdict(int)
    viewed: set[tuple[str, str]] = set()
    user_of_session: dict[str, str] = {}
    purchases = 0
    for e in ecommerce_events:
        assert user_of_session.setdefault(e.session_id, e.user_id) == e.user_id  # a session is one user's
        if e.event_type == "search":
            continue
        line = (e.session_id, e.product.id)
        if e.event_type == "page_view":
            viewed.add(line)
        elif e.event_type == "add_to_cart":
            assert line in viewed, "carted a product the session never viewed"
            cart[line] += e.quantity
        else:  # remove_from_cart and purchase take the whole carted line
            assert cart[line] > 0, f"{e.event_type} of a product the session did not cart"
            assert e.quantity == cart[line]
            cart[line] = 0
            purchases += e.event_type == "purchase"
    assert purchases > 500
    assert len(user_of_session) > 1000  # many sessions, not one long one


def test_every_event_validates_and_the_fast_path_equals_model_dump_json():
    for cls, topic in ((EcommerceSimulation, ECOMMERCE_TOPIC), (RestaurantSimulation, RESTAURANT_TOPIC)):
        models, fast = cls(seed=5, start=START), cls(seed=5, start=START)
        for _ in range(3_000):
            model = models.next_event()
            key, value = fast.next_message()
            assert value == model.model_dump_json(exclude_none=True).encode()
            assert parse_message(topic.name, value) == model
            assert key == str(getattr(model, topic.key_field))


def test_wall_clock_timestamps_without_a_start():
    before = datetime.now(timezone.utc)
    event = EcommerceSimulation(seed=1).next_event()
    assert before <= event.timestamp <= datetime.now(timezone.utc)
    given = datetime(2026, 3, 1, 9, 0)  # naive = UTC
    assert EcommerceSimulation(seed=1).next_event(now=given).timestamp == given.replace(tzinfo=timezone.utc)


def test_same_seed_same_stream_different_seed_different():
    def stream(cls, seed, start=START, n=2_000):
        sim = cls(seed=seed, start=start)
        return [sim.next_message()[1] for _ in range(n)]

    for cls in (EcommerceSimulation, RestaurantSimulation):
        assert stream(cls, 42) == stream(cls, 42)  # uuids and timestamps included
        other = stream(cls, 43)
        assert all(a != b for a, b in zip(stream(cls, 42), other))
    # without a fixed start the timestamps are the wall clock, the rest is still the same
    a, b = EcommerceSimulation(seed=42), EcommerceSimulation(seed=42)
    for _ in range(200):
        ea, eb = a.next_event(), b.next_event()
        assert ea.model_dump(exclude={"timestamp"}) == eb.model_dump(exclude={"timestamp"})
    assert EcommerceSimulation().next_event().event_id != EcommerceSimulation().next_event().event_id


def test_simulated_clock_advances_at_the_default_rate(ecommerce_events, restaurant_orders):
    ts = [e.timestamp for e in ecommerce_events]
    assert ts[0] == START and ts == sorted(ts)
    mean_gap = (ts[-1] - ts[0]).total_seconds() / (len(ts) - 1)
    assert 0.45 <= mean_gap <= 0.55  # 2 events/s
    ots = [o.timestamp for o in restaurant_orders]
    assert ots[0] == START and ots == sorted(ots)
    # one order every 10 s on average over whole days (more at lunch and dinner, fewer at night)
    sim, end, orders = RestaurantSimulation(seed=2, start=START), START + timedelta(days=2), 0
    while datetime.fromisoformat(json.loads(sim.next_message()[1])["timestamp"]) < end:
        orders += 1
    assert 0.93 * 17_280 <= orders <= 1.07 * 17_280


def test_restaurant_orders_add_up(restaurant_orders):
    channels, payments, sizes = Counter(), Counter(), Counter()
    for o in restaurant_orders:
        assert 1 <= len(o.items) <= 6
        assert len({i.item_id for i in o.items}) == len(o.items)
        assert all(i.unit_price == MENU_PRICES[i.item_id] for i in o.items)
        assert o.total_amount == sum((i.unit_price * i.quantity for i in o.items), Decimal("0.00"))
        assert (o.table_number is not None) == (o.channel == "dine_in")
        channels[o.channel] += 1
        payments[o.payment_method] += 1
        sizes[len(o.items)] += 1
    assert set(channels) == {"dine_in", "takeaway", "delivery"}
    assert channels["dine_in"] > channels["takeaway"]
    assert set(sizes) == {1, 2, 3, 4, 5, 6}
    assert len(payments) >= 4


def test_restaurant_has_lunch_and_dinner_peaks(restaurant_orders):
    by_hour = Counter(o.timestamp.hour for o in restaurant_orders)
    assert by_hour[12] + by_hour[20] > 5 * (by_hour[3] + by_hour[4])


# --------------------------------------------------------------------------- against the broker


@pytest.fixture
def topics(broker):
    ensure_topics(broker.bootstrap)
    return broker.bootstrap


def read_back(bootstrap: str, topic, until, timeout: float = 30.0, settle: float = 1.0) -> list:
    """Every message of ``topic`` from the beginning, until ``until(messages)`` holds,
    then ``settle`` more seconds (so duplicates would show)."""
    consumer = Consumer(consumer_config(bootstrap, f"test-{uuid.uuid4().hex}"))
    consumer.assign([TopicPartition(topic.name, p, OFFSET_BEGINNING) for p in range(topic.partitions)])
    messages = []
    deadline = time.monotonic() + timeout
    done_at = None
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.2):
                if msg.error() is None:
                    messages.append(msg)
            if done_at is None and until(messages):
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at >= settle:
                break
    finally:
        consumer.close()
    return messages


def producer_cli(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "services.producer", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_cli_count_produces_exactly_n_keyed_events(topics):
    n, seed, start = 5_000, 7, "2026-02-01T10:00:00"
    proc = producer_cli("--domain", "ecommerce", "--max", "--count", str(n), "--seed", str(seed),
                        "--start", start, "--bootstrap", topics, "--metrics-port", "0")
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    stopped = [json.loads(line) for line in err.splitlines() if '"producer stopped"' in line]
    assert stopped and stopped[0]["delivered"] == n and stopped[0]["failed"] == 0

    sim = EcommerceSimulation(seed=seed, start=datetime.fromisoformat(start))
    expected = {}
    for _ in range(n):
        key, value = sim.next_message()
        expected[value] = key
    mine = lambda msgs: [m for m in msgs if m.value() in expected]  # noqa: E731 (other tests share the topic)
    got = mine(read_back(topics, ECOMMERCE_TOPIC, lambda msgs: len(mine(msgs)) >= n))
    assert len(got) == n and len({m.value() for m in got}) == n  # exactly N, no duplicates
    partitions_of_key = defaultdict(set)
    for msg in got:
        key = msg.key().decode()
        assert key == expected[msg.value()] == json.loads(msg.value())["user_id"]
        assert msg.partition() == zlib.crc32(msg.key()) % ECOMMERCE_TOPIC.partitions  # keyed partitioning
        partitions_of_key[key].add(msg.partition())
    assert all(len(p) == 1 for p in partitions_of_key.values())
    assert len({m.partition() for m in got}) == ECOMMERCE_TOPIC.partitions


def test_publisher_publishes_models_keyed_by_topic_key_field(topics):
    sim = RestaurantSimulation(seed=99)
    orders = [sim.next_order() for _ in range(50)]
    publisher = Publisher(topics)
    for order in orders:
        publisher.publish(RESTAURANT_TOPIC, order)
    assert publisher.flush(30) == 0
    assert (publisher.sent, publisher.delivered, publisher.failed) == (50, 50, 0)
    ids = {str(o.order_id) for o in orders}
    mine = lambda msgs: [m for m in msgs if m.key().decode() in ids]  # noqa: E731
    got = mine(read_back(topics, RESTAURANT_TOPIC, lambda msgs: len(mine(msgs)) >= 50, settle=0.5))
    assert len(got) == 50
    for msg in got:
        order = parse_message(RESTAURANT_TOPIC.name, msg.value())
        assert msg.key().decode() == str(order.order_id)
        assert msg.partition() == zlib.crc32(msg.key()) % RESTAURANT_TOPIC.partitions


def test_failed_deliveries_are_retried_five_times_then_counted():
    # nothing listens on this port: every attempt times out
    publisher = Publisher(f"127.0.0.1:{free_port()}", backoff_s=0.01, rebuild_after=1_000,
                          **{"message.timeout.ms": 300})
    for i in range(3):
        publisher.send(ECOMMERCE_TOPIC.name, f"USER{i}", b"{}")
    assert publisher.flush(30) == 0
    assert (publisher.delivered, publisher.failed) == (0, 3)
    assert publisher.errors == 15 and publisher.retried == 12  # 5 attempts each, 4 of them re-sends
    assert publisher.last_error
    # few failures (slow pace) but no delivery for two timeouts: it rebuilt too
    assert publisher.rebuilds >= 1 and publisher.failing()


class _FatalThenHealthyProducer:
    """Unit-test fake of confluent_kafka.Producer: the first instance goes fatal
    (as an idempotent producer does on UnknownProducerId after a broker restart:
    it fails what it holds with _FATAL, then raises from produce, poll and purge); later
    instances deliver everything."""

    instances: list = []

    def __init__(self, config):
        self.fatal_error = KafkaError(KafkaError._FATAL, "Unknown Producer Id", fatal=True)
        self.config, self.queue, self.delivered = config, [], []
        self.fatal = not self.instances
        self.raising = False  # set once the fatal client has failed what it held
        self.instances.append(self)

    def __len__(self):
        return len(self.queue)

    def produce(self, topic, value, key, on_delivery=None):
        if self.raising:
            raise KafkaException(self.fatal_error)
        self.queue.append((topic, value, key, on_delivery or self.config["on_delivery"]))

    def poll(self, _timeout=0.0):
        if self.raising:
            raise KafkaException(self.fatal_error)  # a fatal client raises from poll/flush too
        queue, self.queue = self.queue, []
        if self.fatal and queue:
            self.config["error_cb"](self.fatal_error)
            self.raising = True
        for topic, value, key, cb in queue:
            msg = _FakeMessage(topic, value, key)
            if self.fatal:
                cb(self.fatal_error, msg)
            else:
                self.delivered.append(value)
                cb(None, msg)
        return len(queue)

    flush = poll

    def purge(self, **_kwargs):
        if self.fatal:
            raise KafkaException(self.fatal_error)


class _FakeMessage:
    def __init__(self, topic, value, key):
        self._t, self._v, self._k = topic, value, key

    def topic(self):
        return self._t

    def value(self):
        return self._v

    def key(self):
        return self._k

    def latency(self):
        return 0.001


def test_fatal_client_is_rebuilt_and_its_messages_resent_once(monkeypatch):
    import services.producer.publisher as publisher_module

    _FatalThenHealthyProducer.instances = []
    monkeypatch.setattr(publisher_module, "Producer", _FatalThenHealthyProducer)
    publisher = Publisher("127.0.0.1:1")
    values = [f'{{"n": {i}}}'.encode() for i in range(20)]
    for i, value in enumerate(values[:10]):
        publisher.send(ECOMMERCE_TOPIC.name, f"USER{i}", value)
    publisher.poll(0)  # the client goes fatal: its messages fail with _FATAL, purge refuses
    for i, value in enumerate(values[10:]):
        publisher.send(ECOMMERCE_TOPIC.name, f"USER{i}", value)  # produce() raises: kept for the rebuild
    assert publisher.flush(5) == 0
    healthy = _FatalThenHealthyProducer.instances[-1]
    assert sorted(healthy.delivered) == sorted(values)  # each message exactly once
    assert (publisher.delivered, publisher.failed, publisher.rebuilds) == (20, 0, 1)


def test_send_does_not_block_once_stopping_with_a_full_queue():
    stop = threading.Event()
    publisher = Publisher(f"127.0.0.1:{free_port()}", stop_event=stop,
                          **{"queue.buffering.max.messages": 50, "message.timeout.ms": 60_000})
    done = threading.Event()

    def sender():
        for i in range(500):
            publisher.send(ECOMMERCE_TOPIC.name, f"USER{i}", b"{}")
        done.set()

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    assert not done.wait(1.0)  # blocked: the queue is full and nothing is delivered
    stop.set()
    assert done.wait(30), "send() kept blocking after stop"
    assert publisher.sent == 500 and publisher.delivered == 0
    assert publisher.pending >= 450  # kept (queued or awaiting a retry), not dropped


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    """``run(...)`` on a thread, stopped (and joined) on exit."""

    def __init__(self, domain: str, bootstrap: str, **kwargs):
        self.port = free_port()
        self.settings = Settings(kafka_bootstrap_servers=bootstrap, metrics_port=self.port)
        self.stop = threading.Event()
        self.result: dict = {}
        self.thread = threading.Thread(target=self._run, args=(domain,), kwargs=kwargs, daemon=True)

    def _run(self, domain, **kwargs):
        try:
            self.result["delivered"] = run(domain, settings=self.settings, stop_event=self.stop, tty=False, **kwargs)
        except BaseException as exc:  # surfaced by the test
            self.result["error"] = exc

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def health(self) -> dict | None:
        try:
            return json.loads(get(self.url("/health"))[1])
        except OSError:
            return None

    def __enter__(self):
        self.thread.start()
        wait_for(self.health, 30, "/health")
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "run() did not return after stop"
        assert "error" not in self.result, self.result.get("error")


def test_health_and_metrics_answer(topics):
    with Running("restaurant", topics, rate=50, seed=3) as svc:
        wait_for(lambda: svc.health()["delivered"] >= 20, 30, "20 deliveries")
        status, body, ctype = get(svc.url("/health"))
        health = json.loads(body)
        assert status == 200 and ctype == "application/json"
        assert health["status"] == "ok" and health["domain"] == "restaurant"
        assert health["topic"] == "restaurant.orders" and health["failed"] == 0
        status, body, ctype = get(svc.url("/metrics"))
        assert status == 200 and ctype.startswith("text/plain")
        # counters are synced from the delivery callbacks every 0.5 s
        text = wait_for(lambda: (t := get(svc.url("/metrics"))[1].decode()) and metric(
            t, "salespulse_producer_events_produced_total", topic="restaurant.orders") >= 20 and t,
            10, "produced_total >= 20")
        assert metric(text, "salespulse_producer_events_sent_total", topic="restaurant.orders") >= 20
        assert metric(text, "salespulse_producer_send_latency_seconds_count", topic="restaurant.orders") >= 20
        assert "salespulse_producer_errors_total" in text and "salespulse_producer_rebuilds_total" in text
        assert get(svc.url("/nope"))[0] == 404
    assert svc.result["delivered"] >= 20


def test_sigterm_stops_cleanly_with_exit_0(topics):
    port = free_port()
    proc = producer_cli("--domain", "ecommerce", "--rate", "100", "--bootstrap", topics,
                        "--metrics-port", str(port))
    try:
        wait_for(lambda: proc.poll() is not None or
                 (json.loads(get(f"http://127.0.0.1:{port}/health")[1])["delivered"] > 10
                  if _listening(port) else False), 60, "the producer to deliver")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(entry["msg"] == "stopping on SIGTERM" for entry in logs)
    stopped = [e for e in logs if e["msg"] == "producer stopped"]
    assert stopped and stopped[0]["delivered"] > 10 and stopped[0]["pending"] == 0


def _listening(port: int) -> bool:
    try:
        get(f"http://127.0.0.1:{port}/health")
        return True
    except OSError:
        return False


@pytest.fixture
def own_broker(state_dir):
    """A broker of this test's own: restarting it leaves the session broker alone."""
    b = EmbeddedBroker(free_port(), log_file=state_dir / f"broker-restart-{uuid.uuid4().hex[:6]}.log").start()
    ensure_topics(b.bootstrap)
    yield b
    b.stop()


def test_broker_restart_mid_stream_producer_rebuilds(own_broker):
    broker = own_broker
    options = {"publisher_options": {"message.timeout.ms": 2_000}}
    with Running("ecommerce", broker.bootstrap, rate=200, seed=21, **options) as svc:
        wait_for(lambda: svc.health()["delivered"] >= 100, 30, "deliveries before the restart")
        before = svc.health()
        assert before["rebuilds"] == 0
        rebuilds_metric = metric(get(svc.url("/metrics"))[1].decode(), "salespulse_producer_rebuilds_total")

        broker.restart()  # memory-only broker: topics and data are gone
        ensure_topics(broker.bootstrap)
        restarted_at = svc.health()["delivered"]

        after = wait_for(lambda: (h := svc.health())["rebuilds"] >= 1 and h["delivered"] >= restarted_at + 300
                         and h, 60, "a rebuild and deliveries after the restart")
        assert after["status"] == "ok" and after["failed"] == 0
        text = get(svc.url("/metrics"))[1].decode()
        assert metric(text, "salespulse_producer_rebuilds_total") >= rebuilds_metric + 1
        assert metric(text, "salespulse_producer_errors_total", topic="ecommerce.events") >= 1
    # everything on the new broker was produced after the restart, and it is all valid
    fresh = read_back(broker.bootstrap, ECOMMERCE_TOPIC, lambda msgs: len(msgs) >= 300, settle=0.2)
    assert len(fresh) >= 300
    for msg in fresh:
        event = parse_message(ECOMMERCE_TOPIC.name, msg.value())
        assert msg.key().decode() == event.user_id
    assert svc.result["delivered"] >= after["delivered"]


def test_rate_line_on_a_terminal_json_log_otherwise(capsys, caplog):
    from services.producer.app import RateReporter

    class FakePublisher:
        sent = delivered = 0
        failed = rebuilds = pending = 0

        def stats(self):
            return {"delivered": self.delivered}

    pub = FakePublisher()
    tty = RateReporter("ecommerce", "ecommerce.events", pub, tty=True)
    pub.sent = pub.delivered = 50
    tty.tick(tty._t + 2.0)
    assert tty.rate == 25.0
    err = capsys.readouterr().err
    assert err.startswith("\r[ecommerce] 25.0 events/s") and "delivered 50" in err and "\n" not in err
    plain = RateReporter("ecommerce", "ecommerce.events", pub, tty=False, log_every=10)
    pub.delivered = 150
    with caplog.at_level("INFO", logger="services.producer"):
        plain.tick(plain._t + 5)  # not yet
        plain.tick(plain._t + 10)
    assert capsys.readouterr().err == ""
    records = [r for r in caplog.records if r.getMessage() == "producer progress"]
    assert len(records) == 1 and records[0].events_per_s == 10.0

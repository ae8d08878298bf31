"""Helpers for the consumer tests (hand-made contract messages, producing,
row counting, running the service). No tests here."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable

import psycopg2
from confluent_kafka import Producer

from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC
from salespulse.kafka import producer_config
from salespulse.stack.broker import tansu_binary, wait_port
from tests.conftest import free_port
from tests.support.db import query

REPO = Path(__file__).resolve().parents[2]
BASE_TS = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
CATEGORIES = ["books", "games", "garden", "music"]
PAYMENTS = ["card", "pix", "cash"]


def ecommerce_event(i: int, *, event_type: str | None = None, run: str = "", **overrides) -> dict:
    """A valid e-commerce event; deterministic money per ``i``."""
    kinds = ["page_view", "add_to_cart", "remove_from_cart", "purchase", "search"]
    et = event_type or kinds[i % len(kinds)]
    ev: dict = {
        "event_id": str(uuid.uuid4()),
        "event_type": et,
        "timestamp": (BASE_TS + timedelta(seconds=i)).isoformat(),
        "user_id": f"user-{run}{i % 37}",
        "session_id": f"sess-{run}{i % 53}",
    }
    if et != "search":
        pid = i % 11
        ev["product"] = {"id": f"P{run}{pid:03d}", "name": f"Product {pid}", "category": CATEGORIES[pid % 4],
                         "price": float(Decimal(10 + pid) + Decimal("0.99"))}
    if et == "purchase":
        qty = 1 + i % 3
        ev.update(quantity=qty, total_amount=float((Decimal(10 + i % 11) + Decimal("0.99")) * qty),
                  payment_method=PAYMENTS[i % 3])
    if et == "search":
        ev["search_query"] = f"query\twith\\odd\nchars {i}"
    ev.update(overrides)
    return ev


def restaurant_order(i: int, n_items: int | None = None, **overrides) -> dict:
    n = n_items or 1 + i % 4
    items = [{"item_id": f"M{j}", "name": f"Dish {j}", "category": ["mains", "drinks", "desserts"][j % 3],
              "quantity": 1 + (i + j) % 2, "unit_price": float(Decimal(5 + j) + Decimal("0.50"))}
             for j in range(n)]
    total = sum((Decimal(str(it["unit_price"])) * it["quantity"] for it in items), Decimal("0"))
    channel = ["dine_in", "takeaway", "delivery"][i % 3]
    order = {
        "order_id": str(uuid.uuid4()),
        "timestamp": (BASE_TS + timedelta(seconds=i)).isoformat(),
        "restaurant_id": f"R{i % 3}",
        "table_number": (i % 20) + 1 if channel == "dine_in" else None,
        "channel": channel,
        "items": items,
        "total_amount": float(total),
        "payment_method": PAYMENTS[i % 3],
    }
    order.update(overrides)
    return order


def expected_purchase_total(events: list[dict]) -> Decimal:
    return sum((Decimal(str(e["total_amount"])) for e in events if e["event_type"] == "purchase"), Decimal("0"))


def expected_items(orders: list[dict]) -> tuple[int, Decimal]:
    n = sum(len(o["items"]) for o in orders)
    return n, sum((Decimal(str(o["total_amount"])) for o in orders), Decimal("0"))


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]],
            headers: list | None = None) -> None:
    """Produce (key, value) pairs and wait until every one is acknowledged."""
    producer = Producer(producer_config(bootstrap))
    errors = []
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers,
                                 on_delivery=lambda err, _m: err and errors.append(err))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:3]


def produce_events(bootstrap: str, events: list[dict]) -> None:
    produce(bootstrap, ECOMMERCE_TOPIC.name, [(e["user_id"].encode(), json.dumps(e).encode()) for e in events])


def produce_orders(bootstrap: str, orders: list[dict]) -> None:
    produce(bootstrap, RESTAURANT_TOPIC.name, [(o["order_id"].encode(), json.dumps(o).encode()) for o in orders])




def count_events(url: str, event_ids: list[str]) -> int:
    return query(url, "SELECT count(*) FROM events WHERE event_id = ANY(%s::uuid[])", (event_ids,))[0][0]


def count_orders(url: str, order_ids: list[str]) -> int:
    return query(url, "SELECT count(*) FROM orders WHERE order_id = ANY(%s::uuid[])", (order_ids,))[0][0]


def wait_until(predicate: Callable[[], object], timeout: float = 90.0, interval: float = 0.2, what: str = ""):
    """Poll until ``predicate()`` is truthy (a failure guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or predicate}")
        time.sleep(interval)


def unique_group(tag: str) -> str:
    return f"test-{tag}-{uuid.uuid4().hex[:8]}"


def end_offsets(bootstrap: str, topics: dict[str, int] | None = None) -> dict[tuple[str, int], int]:
    """The current end (high watermark) of every partition of ``topics`` (default: the
    two data topics), from a fetch response (salespulse.lag.observed_watermarks): the
    broker's answer to a fresh ``get_watermark_offsets`` is wrong (docs/broker.md, defect 3)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from salespulse.lag import observed_watermarks

    topics = topics or {ECOMMERCE_TOPIC.name: ECOMMERCE_TOPIC.partitions,
                        RESTAURANT_TOPIC.name: RESTAURANT_TOPIC.partitions}
    marks = observed_watermarks(bootstrap, [TopicPartition(t, p, OFFSET_BEGINNING)
                                            for t, n in topics.items() for p in range(n)], timeout=30)
    assert all(high is not None for _low, high in marks.values()), marks
    return {key: high for key, (_low, high) in marks.items()}


def group_from(bootstrap: str, tag: str, offsets: dict[tuple[str, int], int]) -> str:
    """A fresh group whose committed offsets are ``offsets`` (from :func:`end_offsets`,
    taken before a test produces): it starts where the test's own messages start, not
    at ``earliest`` with every earlier test's messages on the session-wide broker."""
    from confluent_kafka import Consumer, TopicPartition

    from salespulse.kafka import consumer_config

    group = unique_group(tag)
    start = [TopicPartition(t, p, offset) for (t, p), offset in offsets.items()]
    committer = Consumer(consumer_config(bootstrap, group))
    try:
        committer.assign(start)  # no group join: a plain commit, as salespulse.kafka.recover_group does
        committer.commit(offsets=start, asynchronous=False)
    finally:
        committer.close()
    return group


def group_at_end(bootstrap: str, tag: str) -> str:
    """A fresh group starting at the current end of the two data topics: it reads only
    what is produced from now on. Call it before producing."""
    return group_from(bootstrap, tag, end_offsets(bootstrap))


class ServiceThread:
    """Runs a ConsumerService in a thread; re-raises its failure on join."""

    def __init__(self, service):
        self.service = service
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.service.run()
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def start(self) -> "ServiceThread":
        self.thread.start()
        return self

    def join(self, timeout: float = 120.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "consumer thread did not finish"
        if self.error:
            raise self.error

    def stop(self, timeout: float = 120.0) -> None:
        self.service.stop()
        self.join(timeout)


class GatedBroker:
    """A broker the test can take away from its clients and give back, its
    data kept: tansu listens on a private port and advertises the gate's port,
    and the gate forwards every connection to it. ``cut()`` closes every
    connection through the gate and refuses new ones (to a client, the broker
    and its group coordinator are gone); ``restore()`` lets them through
    again. tansu keeps its messages and committed offsets meanwhile."""

    def __init__(self, log_file: Path | None = None):
        self.port, self._internal = free_port(), free_port()
        self.log_file = log_file
        self._open = True
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "GatedBroker":
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{self._internal}",
             "--advertised-listener-url", f"tcp://{self.bootstrap}", "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port("127.0.0.1", self._internal)
        self._server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def cut(self) -> None:
        with self._lock:
            self._open = False
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            _shut(s)

    def restore(self) -> None:
        with self._lock:
            self._open = True

    def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # the gate was stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self._internal))
            except OSError:
                client.close()
                continue
            with self._lock:
                if not self._open:
                    client.close()
                    upstream.close()
                    continue
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _shut(source)
        _shut(sink)


def start_consumer_process(env_extra: dict, log_path: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(env_extra)
    env.setdefault("METRICS_PORT", "0")
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "services.consumer", *args], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_process(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 60.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)


def log_events(log_path: Path) -> list[dict]:
    out = []
    for line in Path(log_path).read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out

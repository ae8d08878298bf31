"""The producer service: simulate a domain's events and publish them to Kafka.

``run("ecommerce")`` publishes 2 events/s (restaurant: one order every 10 s)
until stopped; ``rate=`` changes the pace, ``max_speed=True`` sends as fast as
possible (benchmarks), ``count=`` stops after that many events, ``seed=``
makes the stream reproducible (with ``start=`` the timestamps too).

Serves ``/health`` and Prometheus ``/metrics`` (``PRODUCER_ECOMMERCE_METRICS_PORT``
9101 / ``PRODUCER_RESTAURANT_METRICS_PORT`` 9102; ``METRICS_PORT`` overrides,
0 = any free port: ``Settings.service_metrics_port``), logs JSON lines, and
shows a live rate line when stderr is a terminal. SIGTERM/SIGINT stop the
generation; what is pending is flushed and ``run`` returns normally.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from datetime import datetime

from salespulse.broker_rotation import ProducerPause
from salespulse.contracts import parse_message
from salespulse.kafka import ensure_topics
from salespulse.observability import serve_health_and_metrics
from salespulse.settings import DEFAULT_METRICS_PORTS, get_settings
from services.producer import metrics as m
from services.producer.publisher import Publisher
from services.producer.simulation import SIMULATIONS

log = logging.getLogger("services.producer")

#: the command line's help (the ports themselves are settings)
DEFAULT_PORTS = {domain: DEFAULT_METRICS_PORTS[f"producer-{domain}"] for domain in ("ecommerce", "restaurant")}
DEFAULT_RATES = {"ecommerce": 2.0, "restaurant": 0.1}
#: at max speed, callbacks are served once per batch of this many messages, and
#: only the batch's first message is re-parsed with parse_message (the fast path
#: is tested to equal model_dump_json); at a set rate every message is.
MAX_SPEED_BATCH = 512


class RateReporter:
    """A live rate line on a terminal; a JSON log line every ``log_every`` s otherwise."""

    def __init__(self, domain: str, topic: str, publisher: Publisher, tty: bool | None = None,
                 log_every: float = 10.0):
        self.domain, self.topic, self.publisher = domain, topic, publisher
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.interval = 1.0 if self.tty else log_every
        self.rate = 0.0
        self._gauge = m.RATE.labels(topic)
        self._t = time.monotonic()
        self._delivered = publisher.delivered

    def tick(self, now: float | None = None, force: bool = False) -> None:
        now = time.monotonic() if now is None else now
        if now - self._t < self.interval and not (force and now > self._t):
            return
        p = self.publisher
        self.rate = (p.delivered - self._delivered) / (now - self._t)
        self._gauge.set(self.rate)
        self._t, self._delivered = now, p.delivered
        if self.tty:
            sys.stderr.write(f"\r[{self.domain}] {self.rate:,.1f} events/s | sent {p.sent:,} delivered "
                             f"{p.delivered:,} failed {p.failed:,} pending {p.pending:,} "
                             f"rebuilds {p.rebuilds}\x1b[K")
            sys.stderr.flush()
        else:
            log.info("producer progress", extra={"domain": self.domain, "events_per_s": round(self.rate, 2),
                                                 **p.stats()})

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def install_signal_handlers(stop_event: threading.Event):
    """SIGTERM/SIGINT set ``stop_event`` (main thread only); returns a restore function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, _frame):
        log.info("stopping on %s", signal.Signals(signum).name)
        stop_event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    return lambda: [signal.signal(sig, h) for sig, h in previous.items()]


def run(domain: str, *, rate: float | None = None, max_speed: bool = False, count: int | None = None,
        seed: int | None = None, settings=None, stop_event: threading.Event | None = None,
        start: datetime | None = None, flush_timeout: float = 30.0, tty: bool | None = None,
        publisher_options: dict | None = None) -> int:
    """Simulate and publish ``domain``'s events; returns how many were produced and delivered."""
    if domain not in SIMULATIONS:
        raise ValueError(f"unknown domain {domain!r} (expected one of {', '.join(SIMULATIONS)})")
    if count is not None and count < 0:
        raise ValueError("count must be >= 0")
    settings = settings or get_settings()
    rate = rate if rate is not None else DEFAULT_RATES[domain]
    if not max_speed and rate <= 0:
        raise ValueError("rate must be > 0")
    bootstrap = settings.kafka_bootstrap_servers
    sim = SIMULATIONS[domain](seed=seed, start=start)
    topic = sim.topic
    restore_signals = lambda: None  # noqa: E731
    if stop_event is None:
        stop_event = threading.Event()
        restore_signals = install_signal_handlers(stop_event)

    try:  # the stack creates topics first; this is a cheap, idempotent safety net
        ensure_topics(bootstrap, {topic.name: topic.partitions, topic.dlq: 1}, timeout=10.0)
    except Exception as exc:
        log.warning("could not ensure topics: %s", exc, extra={"bootstrap": bootstrap})
    options = {"latency_sample": 16 if max_speed else 1, "ensure": {topic.name: topic.partitions}}
    options.update(publisher_options or {})
    publisher = Publisher(bootstrap, stop_event=stop_event, **options)
    state = {"running": True}

    def health() -> tuple[bool, dict]:
        ok = state["running"] and not publisher.failing()
        return ok, {"service": "producer", "domain": domain, "topic": topic.name,
                    "max_speed": max_speed, "target_rate": None if max_speed else rate,
                    "events_per_s": round(reporter.rate, 2), **publisher.stats()}

    reporter = RateReporter(domain, topic.name, publisher, tty=tty)
    port = settings.service_metrics_port(f"producer-{domain}")
    server = None
    # the embedded broker's rotations pause this producer (salespulse/broker_rotation.py)
    pause = ProducerPause(settings.salespulse_state_dir)
    try:
        server = serve_health_and_metrics(port, health)
        log.info("producer started", extra={
            "domain": domain, "topic": topic.name, "bootstrap": bootstrap, "seed": sim.seed,
            "rate": "max" if max_speed else rate, "count": count, "metrics_port": server.server_port})
        if max_speed:
            _run_max(sim, topic.name, publisher, reporter, count, stop_event, pause)
        else:
            _run_paced(sim, topic.name, publisher, reporter, rate, count, stop_event, pause)
        remaining = publisher.flush(flush_timeout)
        if remaining:
            log.error("%d messages still undelivered at shutdown", remaining, extra=publisher.stats())
        reporter.tick(force=True)  # final figures
        reporter.close()
        log.info("producer stopped", extra={"domain": domain, **publisher.stats()})
        return publisher.delivered
    finally:
        state["running"] = False
        pause.close()
        restore_signals()
        if server is not None:
            # shutdown() waits for serve_forever's 0.5 s poll: let it finish on its own thread
            threading.Thread(target=lambda: (server.shutdown(), server.server_close()), daemon=True).start()


def _run_max(sim, topic: str, publisher: Publisher, reporter: RateReporter, count, stop_event,
             pause: ProducerPause) -> None:
    next_message, send = sim.next_message, publisher.send
    sent = 0
    while count is None or sent < count:
        pause.hold(publisher, stop_event)
        batch = MAX_SPEED_BATCH if count is None else min(MAX_SPEED_BATCH, count - sent)
        key, value = next_message()
        parse_message(topic, value)  # one in every batch is validated
        send(topic, key, value)
        for _ in range(batch - 1):
            key, value = next_message()
            send(topic, key, value)
        sent += batch
        publisher.poll(0)
        reporter.tick()
        if stop_event.is_set():
            break


def _run_paced(sim, topic: str, publisher: Publisher, reporter: RateReporter, rate: float, count,
               stop_event, pause: ProducerPause) -> None:
    interval = 1.0 / rate
    due = time.monotonic()
    sent = 0
    while (count is None or sent < count) and not stop_event.is_set():
        now = time.monotonic()
        while now < due:  # wait for the next slot, serving callbacks meanwhile
            if pause.hold(publisher, stop_event):  # a broker rotation (even between slow slots)
                due = now = time.monotonic()  # events are generated after the pause, not stamped before it
                break
            publisher.poll(min(due - now, 0.1))
            reporter.tick()
            if stop_event.is_set():
                return
            now = time.monotonic()
        if pause.hold(publisher, stop_event):
            due = now = time.monotonic()
        key, value = sim.next_message()
        parse_message(topic, value)
        publisher.send(topic, key, value)
        sent += 1
        publisher.poll(0)
        reporter.tick()
        due += interval
        if now - due > 1.0:  # fell behind (e.g. blocked on a full queue): do not burst to catch up
            due = now

"""A self-healing Kafka publisher (confluent-kafka) for the simulation's events.

* Keys come from the topic's ``key_field`` (``user_id`` / ``order_id``), so
  every event of one user (or order) lands on the same partition.
* Every message has a delivery callback: acknowledged ones are counted and
  their send latency (``produce()`` → acknowledgement) observed; failed ones
  are re-sent with exponential backoff, up to ``max_attempts`` attempts in all,
  then counted as failed and logged.
* A run of ``rebuild_after`` delivery failures with no success in between
  (at a slow pace: any failure with no delivery for two message timeouts), or
  a fatal client error, makes the publisher **rebuild itself**: a new
  ``Producer`` instance takes over, the old one's queued and in-flight
  messages are purged and re-sent through the new one. This is the way out of
  docs/broker.md, defect 2 (an idempotent producer never recovers from
  a broker restart: every message times out with ``UnknownProducerId``), and
  it is harmless against Apache Kafka. ``message.timeout.ms`` defaults to 5 s
  here so such a run shows up within seconds.
* ``allow.auto.create.topics`` is off: a metadata request from the producer
  must never create a topic with the broker's default partition count (the
  stack creates every topic explicitly; see docs/broker.md, defect 6). If
  ``ensure`` is given, a rebuild first re-creates those topics (best effort:
  an in-memory broker that restarted has lost them).

Not thread-safe: use a publisher from one thread. Callbacks fire inside
``poll``/``flush``/``send`` on that thread. Counters are plain attributes
(reading them from another thread, as /health does, is fine).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Producer

from salespulse.contracts import Topic, parse_message
from salespulse.kafka import ensure_topics, producer_config
from services.producer import metrics as m

log = logging.getLogger(__name__)

PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
#: Delivery errors caused by the client, not the message: re-sent through the
#: next (rebuilt) producer without spending an attempt. ``_FATAL``: an idempotent
#: producer that hit UnknownProducerId after a broker restart fails everything it holds.
CLIENT_FAILURES = PURGED | {KafkaError._FATAL}

#: Defaults this publisher sets on top of ``salespulse.kafka.producer_config``.
PUBLISHER_DEFAULTS = {
    "message.timeout.ms": 5_000,  # detect a dead producer in seconds, not 30 s
    "allow.auto.create.topics": False,
    "queue.buffering.max.messages": 200_000,
    "log.connection.close": False,  # idle disconnects are not news
}


class _TopicMetrics:
    __slots__ = ("sent", "produced", "latency", "retries", "failed", "delivered", "synced", "sent_count",
                 "sent_synced")

    def __init__(self, topic: str):
        self.sent = m.EVENTS_SENT.labels(topic)
        self.produced = m.EVENTS_PRODUCED.labels(topic)
        self.latency = m.SEND_LATENCY.labels(topic)
        self.retries = m.RETRIES.labels(topic)
        self.failed = m.FAILED.labels(topic)
        self.delivered = 0  # acknowledged; synced into the Prometheus counter every 0.5 s
        self.synced = 0
        self.sent_count = 0
        self.sent_synced = 0


class Publisher:
    """Publish events to Kafka with delivery tracking, retries and self-rebuild.

    ``Publisher(bootstrap, **config_overrides)``: the overrides are librdkafka
    properties (``**{"message.timeout.ms": 2000}``) applied over
    :func:`salespulse.kafka.producer_config` and :data:`PUBLISHER_DEFAULTS`.
    """

    def __init__(self, bootstrap: str, *, max_attempts: int = 5, backoff_s: float = 0.2,
                 backoff_max_s: float = 10.0, rebuild_after: int = 5, latency_sample: int = 1,
                 ensure: dict[str, int] | None = None, stop_event: threading.Event | None = None,
                 **config_overrides):
        self.bootstrap = bootstrap
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.rebuild_after = rebuild_after
        self.latency_sample = max(1, latency_sample)
        self.ensure = ensure
        self.stop_event = stop_event
        config = producer_config(bootstrap, **{**PUBLISHER_DEFAULTS, **config_overrides})
        config["on_delivery"] = self._on_delivery
        config["error_cb"] = self._on_client_error
        config.setdefault("logger", logging.getLogger("librdkafka"))  # JSON lines, not raw stderr
        self._config = config
        self.timeout_s = int(config["message.timeout.ms"]) / 1000
        # counters (attributes, readable from any thread)
        self.sent = 0  # first attempts handed to the client
        self.delivered = 0  # acknowledged by the broker
        self.failed = 0  # given up after max_attempts
        self.errors = 0  # failed delivery reports (each attempt)
        self.retried = 0  # re-sends after a failed delivery
        self.rebuilds = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_delivery_at: float | None = None  # time.monotonic()
        self._retry: list[tuple] = []  # heap of (due, seq, topic, key, value, attempt)
        self._seq = itertools.count()
        self._metrics: dict[str, _TopicMetrics] = {}
        self._fatal = False
        self._next_rebuild_at = 0.0
        self._rebuild_gap = self.timeout_s
        self._last_sync = self._created_at = time.monotonic()
        self._seen_delivered = 0
        self._producer = Producer(self._config)

    # -- sending ------------------------------------------------------------
    def publish(self, topic: Topic, event, *, validate: bool = True) -> None:
        """Send one contract model, keyed by ``topic.key_field``; with ``validate``
        the serialised bytes are checked with ``parse_message`` first."""
        value = event.model_dump_json(exclude_none=True).encode()
        if validate:
            parse_message(topic.name, value)
        self.send(topic.name, str(getattr(event, topic.key_field)), value)

    def send(self, topic: str, key: str | bytes, value: bytes) -> None:
        """Send one already-serialised message (blocks while the client's queue is full)."""
        try:
            self._producer.produce(topic, value, key)
        except BufferError:
            self._produce_blocking(topic, key, value, 1)
        except KafkaException as exc:
            self._client_failed(exc, topic, key, value, 1)
        self.sent += 1
        tm = self._metrics.get(topic)
        if tm is None:
            tm = self._metrics[topic] = _TopicMetrics(topic)
        tm.sent_count += 1  # added to the Prometheus counter in _sync_metrics

    def _produce_blocking(self, topic, key, value, attempt: int) -> None:
        cb = None if attempt == 1 else partial(self._on_delivery, attempt=attempt)
        while True:
            if self.stop_event is not None and self.stop_event.is_set():
                self._schedule(topic, key, value, attempt, 0.0)  # stopping: flush decides its fate
                return
            self.poll(0.05)
            try:
                if cb is None:
                    self._producer.produce(topic, value, key)
                else:
                    self._producer.produce(topic, value, key, on_delivery=cb)
                return
            except BufferError:
                continue
            except KafkaException as exc:
                self._client_failed(exc, topic, key, value, attempt)
                return

    def _client_failed(self, exc: KafkaException, topic, key, value, attempt) -> None:
        """produce() raised (a fatal client state): rebuild soon, keep the message."""
        log.warning("produce failed: %s", exc, extra={"topic": topic})
        self._fatal = True
        self._schedule(topic, key, value, attempt, 0.0)

    def _schedule(self, topic, key, value, attempt: int, delay: float) -> None:
        heapq.heappush(self._retry, (time.monotonic() + delay, next(self._seq), topic, key, value, attempt))

    # -- callbacks (run inside poll/flush on the caller's thread) -------------
    def _on_delivery(self, err, msg, attempt: int = 1) -> None:
        if err is None:
            self.delivered += 1
            self.consecutive_failures = 0
            topic = msg.topic()
            tm = self._metrics.get(topic)
            if tm is None:
                tm = self._metrics[topic] = _TopicMetrics(topic)
            tm.delivered += 1
            if tm.delivered % self.latency_sample == 0:
                latency = msg.latency()
                if latency is not None:
                    tm.latency.observe(latency)
            return
        topic, key, value = msg.topic(), msg.key(), msg.value()
        if err.code() in CLIENT_FAILURES:  # purged by our rebuild, or failed by a fatal client
            self._fatal = self._fatal or err.code() == KafkaError._FATAL
            self._schedule(topic, key, value, attempt, 0.0)  # re-send at once, not an attempt
            return
        self.errors += 1
        self.consecutive_failures += 1
        self.last_error = err.str()
        m.ERRORS.labels(topic, err.name()).inc()
        tm = self._metrics.get(topic) or self._metrics.setdefault(topic, _TopicMetrics(topic))
        if attempt < self.max_attempts:
            delay = min(self.backoff_s * 2 ** (attempt - 1), self.backoff_max_s)
            self._schedule(topic, key, value, attempt + 1, delay)
            self.retried += 1
            tm.retries.inc()
        else:
            self.failed += 1
            tm.failed.inc()
            log.error("giving up on a message after %d attempts: %s", attempt, err.str(),
                      extra={"topic": topic, "key": key.decode(errors="replace") if key else None})

    def _on_client_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("fatal producer error: %s", err.str())
            self._fatal = True
        elif err.code() not in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            log.warning("producer error: %s", err.str())

    # -- housekeeping -----------------------------------------------------------
    def _serve(self, producer: Producer, timeout: float, *, flush: bool = False) -> None:
        """``poll``/``flush`` the client; a fatal client raises there: note it for a rebuild."""
        try:
            producer.flush(timeout) if flush else producer.poll(timeout)
        except KafkaException as exc:
            if not exc.args[0].fatal():
                raise
            if not self._fatal:
                log.error("fatal producer error: %s", exc.args[0].str())
            self._fatal = True

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery callbacks, re-send due retries, rebuild when deliveries keep failing."""
        self._serve(self._producer, timeout)
        now = time.monotonic()
        if self.delivered != self._seen_delivered:  # progress: note it, reset the rebuild backoff
            self._seen_delivered = self.delivered
            self.last_delivery_at = now
            self._rebuild_gap = self.timeout_s
        if (self._fatal or self.failing(now)) and now >= self._next_rebuild_at:
            self.rebuild()
        if self._retry and self._retry[0][0] <= now:
            self._drain_retries(now)
        if now - self._last_sync >= 0.5:
            self._sync_metrics(now)

    def failing(self, now: float | None = None) -> bool:
        """Deliveries keep failing: ``rebuild_after`` failures in a row, or (at a slow
        pace) any failure with no delivery for two message timeouts."""
        if self.consecutive_failures >= self.rebuild_after:
            return True
        if not self.consecutive_failures:
            return False
        now = time.monotonic() if now is None else now
        return now - (self.last_delivery_at or self._created_at) >= 2 * self.timeout_s

    def _drain_retries(self, now: float) -> None:
        producer = self._producer
        while self._retry and self._retry[0][0] <= now:
            _due, _seq, topic, key, value, attempt = heapq.heappop(self._retry)
            try:
                producer.produce(topic, value, key, on_delivery=partial(self._on_delivery, attempt=attempt))
            except BufferError:
                self._schedule(topic, key, value, attempt, 0.05)
                return
            except KafkaException as exc:
                self._client_failed(exc, topic, key, value, attempt)
                return

    def _sync_metrics(self, now: float) -> None:
        for tm in self._metrics.values():
            if tm.delivered != tm.synced:
                tm.produced.inc(tm.delivered - tm.synced)
                tm.synced = tm.delivered
            if tm.sent_count != tm.sent_synced:
                tm.sent.inc(tm.sent_count - tm.sent_synced)
                tm.sent_synced = tm.sent_count
        m.IN_FLIGHT.set(self.pending)
        self._last_sync = now

    def rebuild(self) -> None:
        """Replace the Kafka producer; re-send what the old one still held."""
        old = self._producer
        self.rebuilds += 1
        m.REBUILDS.inc()
        log.warning("rebuilding the Kafka producer", extra={
            "consecutive_failures": self.consecutive_failures, "last_error": self.last_error,
            "queued": len(old), "awaiting_retry": len(self._retry), "rebuilds": self.rebuilds})
        if self.ensure:
            try:
                ensure_topics(self.bootstrap, self.ensure, timeout=3.0)
            except Exception as exc:  # best effort: the broker may still be down
                log.warning("could not ensure topics before the rebuild: %s", exc)
        self._producer = Producer(self._config)
        try:
            old.purge(in_queue=True, in_flight=True, blocking=False)
        except KafkaException as exc:  # a fatal client refuses; it fails its messages itself
            log.warning("could not purge the old producer: %s", exc)
        for _ in range(100):  # purge reports arrive through poll; each goes back to the retry heap
            self._serve(old, 0.01)
            if len(old) == 0:
                break
        if len(old):
            log.warning("%d messages could not be taken over from the old producer", len(old))
        del old
        self._fatal = False
        self.consecutive_failures = 0
        now = time.monotonic()
        self._next_rebuild_at = now + self._rebuild_gap
        # back off while rebuilds do not help (broker down), reset on a delivery
        self._rebuild_gap = min(self._rebuild_gap * 2, 60.0)
        self._drain_retries(now)

    @property
    def pending(self) -> int:
        """Messages not acknowledged yet: in the client's queue or awaiting a retry."""
        return len(self._producer) + len(self._retry)

    def flush(self, timeout: float = 30.0) -> int:
        """Deliver everything pending (retries and rebuilds included) within ``timeout``;
        returns how many messages are still pending."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll(0)
            pending = self.pending
            left = deadline - time.monotonic()
            if pending == 0 or left <= 0:
                self._sync_metrics(time.monotonic())
                return pending
            if len(self._producer):
                self._serve(self._producer, min(left, 0.2), flush=True)
            else:
                time.sleep(min(left, 0.05))

    def stats(self) -> dict:
        since = None if self.last_delivery_at is None else round(time.monotonic() - self.last_delivery_at, 3)
        return {"sent": self.sent, "delivered": self.delivered, "failed": self.failed, "errors": self.errors,
                "retried": self.retried, "rebuilds": self.rebuilds, "pending": self.pending,
                "consecutive_failures": self.consecutive_failures, "last_error": self.last_error,
                "seconds_since_delivery": since}

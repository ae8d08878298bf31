"""Prometheus metrics of the producer (prometheus-client's default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_SENT = Counter("salespulse_producer_events_sent_total",
                      "Events handed to the Kafka client (first attempts)", ["topic"])
EVENTS_PRODUCED = Counter("salespulse_producer_events_produced_total",
                          "Events acknowledged by the broker", ["topic"])
SEND_LATENCY = Histogram("salespulse_producer_send_latency_seconds",
                         "produce() call to delivery acknowledgement", ["topic"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
ERRORS = Counter("salespulse_producer_errors_total", "Failed delivery reports, by error", ["topic", "error"])
RETRIES = Counter("salespulse_producer_retries_total", "Messages re-sent after a failed delivery", ["topic"])
FAILED = Counter("salespulse_producer_events_failed_total",
                 "Events given up after every retry attempt failed", ["topic"])
REBUILDS = Counter("salespulse_producer_rebuilds_total",
                   "Times the Kafka producer was replaced after a run of delivery failures")
IN_FLIGHT = Gauge("salespulse_producer_pending_messages", "Messages not yet acknowledged (queued + awaiting retry)")
RATE = Gauge("salespulse_producer_events_per_second", "Acknowledged events per second (last interval)", ["topic"])

"""Garbage-collector settings for a consumer process.

Every message allocates a handful of short-lived objects (the parsed record,
its row tuple, the Kafka message wrapper) and almost none of them form
cycles, so CPython's default generation-0 threshold (700 allocations) runs a
young collection every few messages, and each full collection walks the whole
import-time heap (pydantic, confluent-kafka, prometheus-client). Freezing the
heap built at start-up moves it out of the collector's sight, and a
generation-0 threshold of 20,000 collects a few times per batch instead of
dozens. Reference counting still frees everything acyclic at once, so memory
does not grow with the threshold; cycles are still collected.
Measured in docs/consumer.md (Where the time goes).
"""

from __future__ import annotations

import gc

THRESHOLDS = (20_000, 50, 100)


def tune_garbage_collector() -> None:
    """Call once, after the service is built and before its loop starts."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)

"""``python -m services.consumer [--batch-size N] [--max-wait-ms M] [--linger-ms L] [--fetch-wait-ms F] [--group G]``

Runs the ingestion consumer until SIGTERM/SIGINT (finish the current batch,
commit, close). A second signal exits at once (nothing is lost: offsets of an
unfinished batch are simply not committed, so it is re-delivered).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys

from salespulse.observability import configure_logging
from salespulse.settings import get_settings

from .app import ConsumerService


# ---------------------------------------------------------------- the garbage collector
# Every message allocates a handful of short-lived objects (the parsed record,
# its row tuple, the Kafka message wrapper) and almost none of them form
# cycles, so CPython's default generation-0 threshold (700 allocations) runs a
# young collection every few messages, and each full collection walks the whole
# import-time heap (pydantic, confluent-kafka, prometheus-client). Freezing the
# heap built at start-up moves it out of the collector's sight, and a
# generation-0 threshold of 20,000 collects a few times per batch instead of
# dozens. Reference counting still frees everything acyclic at once, so memory
# does not grow with the threshold; cycles are still collected.
# Measured in docs/consumer.md (Where the time goes).
THRESHOLDS = (20_000, 50, 100)


def tune_garbage_collector() -> None:
    """Call once, after the service is built and before its loop starts."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m services.consumer", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=settings.consumer_batch_size,
                        help="max messages per batch/transaction (CONSUMER_BATCH_SIZE, default %(default)s)")
    parser.add_argument("--max-wait-ms", type=int, default=settings.consumer_batch_max_wait_ms,
                        help="max time to fill a batch (CONSUMER_BATCH_MAX_WAIT_MS, default %(default)s)")
    parser.add_argument("--linger-ms", type=int, default=settings.consumer_batch_linger_ms,
                        help="write the batch once no message came for this long; 0 = fill to size or max wait "
                             "(CONSUMER_BATCH_LINGER_MS, default %(default)s)")
    parser.add_argument("--fetch-wait-ms", type=int, default=settings.consumer_fetch_wait_ms,
                        help="longest the broker may hold a fetch (CONSUMER_FETCH_WAIT_MS, default %(default)s)")
    parser.add_argument("--group", default=settings.consumer_group,
                        help="consumer group (CONSUMER_GROUP, default %(default)s)")
    parser.add_argument("--log-level", default=settings.log_level, help="log level (LOG_LEVEL, default %(default)s)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_wait_ms < 1 or args.fetch_wait_ms < 1 or args.linger_ms < 0:
        parser.error("--batch-size, --max-wait-ms and --fetch-wait-ms must be positive, --linger-ms not negative")
    configure_logging(args.log_level)

    service = ConsumerService(settings, group_id=args.group, batch_size=args.batch_size,
                              max_wait_ms=args.max_wait_ms, linger_ms=args.linger_ms,
                              fetch_wait_ms=args.fetch_wait_ms)
    signals_seen = []

    def on_signal(signum, _frame):
        signals_seen.append(signum)
        if len(signals_seen) > 1:
            os._exit(128 + signum)  # second signal: leave now, offsets of the open batch uncommitted
        logging.getLogger("services.consumer").info(
            "shutdown requested", extra={"event": "shutdown_requested", "signal": signal.Signals(signum).name})
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    tune_garbage_collector()
    try:
        service.run()
    except Exception:
        logging.getLogger("services.consumer").exception("consumer failed", extra={"event": "fatal"})
        return 1
    if service.abandoned:
        # never destroy a consumer that has not joined yet (destroy == close): leave at once
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

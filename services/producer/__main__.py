"""``python -m services.producer --domain ecommerce|restaurant [--rate R | --max] [--count N] [--seed S]``."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from datetime import datetime

from salespulse.observability import configure_logging
from salespulse.settings import get_settings
from services.producer.app import DEFAULT_PORTS, DEFAULT_RATES, install_signal_handlers, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.producer",
                                     description="Simulate sales events and publish them to Kafka.")
    parser.add_argument("--domain", choices=sorted(DEFAULT_RATES), default="ecommerce",
                        help="which simulation to run (default: ecommerce)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float,
                      help="events per second (default: ecommerce %s, restaurant %s)"
                      % (DEFAULT_RATES["ecommerce"], DEFAULT_RATES["restaurant"]))
    pace.add_argument("--max", action="store_true", dest="max_speed", help="as fast as possible (benchmarks)")
    parser.add_argument("--count", type=int, help="stop after N events")
    parser.add_argument("--seed", type=int, help="seed of a reproducible stream")
    parser.add_argument("--start", type=datetime.fromisoformat,
                        help="simulated clock start (ISO-8601; naive = UTC): timestamps become reproducible too")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--metrics-port", type=int,
                        help="port of /health and /metrics (default: METRICS_PORT, else %s)"
                        % ", ".join(f"{d} {p}" for d, p in DEFAULT_PORTS.items()))
    parser.add_argument("--flush-timeout", type=float, default=10.0,
                        help="seconds to deliver what is pending when stopping (default: 10)")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level.upper())
    settings = get_settings()
    updates = {}
    if args.bootstrap:
        updates["kafka_bootstrap_servers"] = args.bootstrap
    if args.metrics_port is not None:
        updates["metrics_port"] = args.metrics_port
    if updates:
        settings = settings.model_copy(update=updates)
    stop = threading.Event()
    restore = install_signal_handlers(stop)  # SIGTERM/SIGINT: stop generating, flush, exit 0
    try:
        delivered = run(args.domain, rate=args.rate, max_speed=args.max_speed, count=args.count, seed=args.seed,
                        settings=settings, start=args.start, stop_event=stop, flush_timeout=args.flush_timeout)
    except Exception:
        logging.getLogger("services.producer").exception("producer failed")
        return 1
    finally:
        restore()
    if args.count is not None and not stop.is_set() and delivered < args.count:
        return 1  # a --count run that could not deliver everything (logged by run)
    return 0


if __name__ == "__main__":
    sys.exit(main())

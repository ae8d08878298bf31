"""Rows that put each freshness measure of a domain at a chosen value, on the database's clock.

Used by tests/test_freshness.py (API, Dagster) and tests/test_browser_freshness.py
(the pipeline page, the charts' data age). Written with the ADMIN url.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import psycopg2

from tests.support.dashboard_seed import ecommerce_minute, insert_rows

#: rows of a scenario were stored this long before the test reads them (well inside the 1-minute window)
STORED_AGO_S = 2.0


@dataclass
class Scenario:
    """What to seed for one domain. ``latencies_s``: event time -> stored, one row each, stored
    ``STORED_AGO_S`` ago; ``late_s``: rows stamped that long before they were stored (late data);
    ``report_behind_s``: the newest report window's data is this far behind the newest event
    (None: no report row); ``lag``/``lag_age_s``: the last lag observation (None: none)."""

    latencies_s: list[float] = field(default_factory=list)
    late_s: list[float] = field(default_factory=list)
    report_behind_s: float | None = None
    lag: int | None = None
    lag_age_s: float = 10.0


def _overview(domain: str, window_start, computed_at) -> dict:
    if domain == "ecommerce":
        return {**ecommerce_minute(window_start, 3), "computed_at": computed_at}
    return {"window_start": window_start, "orders": 2, "items_sold": 4, "revenue": Decimal("30.00"),
            "avg_ticket": Decimal("15.00"), "computed_at": computed_at}


def seed(url: str, domain: str, scenario: Scenario) -> None:
    """Seed ``scenario`` for ``domain`` in one transaction (a poll sees all of it or none)."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT now()")
            (now,) = cur.fetchone()
            stored = now - timedelta(seconds=STORED_AGO_S)
            latencies = [*scenario.latencies_s, *scenario.late_s]
            for i, latency in enumerate(latencies):
                when = stored - timedelta(seconds=latency)
                if domain == "ecommerce":
                    cur.execute("""INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, ingested_at)
                                   VALUES (gen_random_uuid(), 'search', %s, %s, 's-fresh', %s)""",
                                (when, f"u-{i}", stored))
                else:
                    cur.execute("""INSERT INTO orders (order_id, "timestamp", restaurant_id, channel, total_amount,
                                                       payment_method, item_count, ingested_at)
                                   VALUES (gen_random_uuid(), %s, 'R1', 'takeaway', 10, 'cash', 1, %s)""",
                                (when, stored))
            if scenario.report_behind_s is not None:
                newest = stored - timedelta(seconds=min(latencies)) if latencies else now
                as_of = newest - timedelta(seconds=scenario.report_behind_s)
                # a window still open when computed: its data is as of computed_at
                table = f"report_{domain}_overview_minute"
                insert_rows(cur, table, [_overview(domain, as_of.replace(second=0, microsecond=0), as_of)])
            if scenario.lag is not None:
                topic = "ecommerce.events" if domain == "ecommerce" else "restaurant.orders"
                insert_rows(cur, "pipeline_observations", [{
                    "observed_at": now - timedelta(seconds=scenario.lag_age_s), "topic": topic,
                    "high_watermark": 100_000, "committed": 100_000 - scenario.lag, "lag": scenario.lag,
                    "messages_per_s": 2.0}])
    finally:
        conn.close()


def clear(url: str) -> None:
    """Remove every row the measures read (raw rows, overview reports, lag observations)."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("TRUNCATE events, transactions, orders, order_items, report_ecommerce_overview_minute, "
                        "report_restaurant_overview_minute, pipeline_observations")
    finally:
        conn.close()

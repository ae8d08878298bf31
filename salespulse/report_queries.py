"""Plain SQL over the report tables that more than one part reads.

Peak hours — the restaurant overview summed by hour of day in a time zone —
is both the dashboard's ``/api/restaurant/peak-hours`` (``dashboard/queries.py``)
and what the report tests check the overview against, so it is written here
once.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from salespulse.catalog import RESTAURANT

#: ``(hour, orders, revenue)`` for each of the 24 hours of the day in ``%(tz)s``
#: over the overview windows in ``[%(start)s, %(end)s)`` (0 for hours without orders)
PEAK_HOURS_SQL = f"""
WITH h AS (SELECT generate_series(0, 23) AS hour),
r AS (SELECT EXTRACT(HOUR FROM window_start AT TIME ZONE %(tz)s)::INT AS hour,
             SUM(orders) AS orders, SUM(revenue) AS revenue
      FROM {RESTAURANT.overview}
      WHERE window_start >= %(start)s AND window_start < %(end)s
      GROUP BY 1)
SELECT h.hour, COALESCE(orders, 0)::BIGINT AS orders, COALESCE(revenue, 0)::NUMERIC(14, 2) AS revenue
FROM h LEFT JOIN r USING (hour) ORDER BY h.hour
"""


def peak_hours(conn, start: datetime, end: datetime, tz: str = "UTC") -> list[tuple[int, int, Decimal, Decimal]]:
    """``(hour_of_day, orders, revenue, avg_ticket)`` over ``[start, end)``,
    hours without orders omitted; the peak hours are the ones with the most
    orders. ``avg_ticket`` = revenue / orders, rounded half-up to cents."""
    with conn.cursor() as cur:
        cur.execute(PEAK_HOURS_SQL, {"start": start, "end": end, "tz": tz})
        return [(hour, orders, revenue, (revenue / orders).quantize(Decimal("0.01"), ROUND_HALF_UP))
                for hour, orders, revenue in cur.fetchall() if orders]

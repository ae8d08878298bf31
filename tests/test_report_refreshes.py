"""report_refreshes: which run wrote which report windows (the drill-down's
"computed by"), written by replace_windows in the refresh's own transaction,
against a real PostgreSQL as the analytics role (no Spark needed: the rows
are given)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from orchestration.reports.common import computed_by, replace_windows
from orchestration.reports.restaurant import CHANNEL
from salespulse.catalog import RESTAURANT
from salespulse.settings import Settings
from tests.support.db import query

CHANNEL_COLUMNS = RESTAURANT.report("channel").columns
HOUR = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
M = timedelta(minutes=1)


def refreshes(url):
    return query(url, "SELECT domain, window_start, window_end, run_id FROM report_refreshes ORDER BY id")


def test_each_replaced_range_is_recorded_with_its_run_and_supersedes_older_ones(database_url):
    settings = Settings(database_url=database_url)
    row = (HOUR + 5 * M, "delivery", 1, 10, 10)
    with computed_by("run-hour"):
        replace_windows(settings, "restaurant", HOUR, HOUR + 60 * M, [(CHANNEL, CHANNEL_COLUMNS, [row])])
    assert refreshes(database_url) == [("restaurant", HOUR, HOUR + 60 * M, "run-hour")]
    # a restatement of two minute ranges: recorded per range; the hour's refresh still holds the other minutes
    ranges = [(HOUR + 5 * M, HOUR + 7 * M), (HOUR + 30 * M, HOUR + 31 * M)]
    with computed_by("run-restate"):
        replace_windows(settings, "restaurant", HOUR, HOUR + 60 * M, [(CHANNEL, CHANNEL_COLUMNS, [row])],
                        ranges=ranges)
    assert refreshes(database_url) == [("restaurant", HOUR, HOUR + 60 * M, "run-hour")] + \
        [("restaurant", a, b, "run-restate") for a, b in ranges]
    # outside Dagster: NULL; the whole hour again supersedes all three
    replace_windows(settings, "restaurant", HOUR, HOUR + 60 * M, [(CHANNEL, CHANNEL_COLUMNS, [row])])
    assert refreshes(database_url) == [("restaurant", HOUR, HOUR + 60 * M, None)]

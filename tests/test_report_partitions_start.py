"""Where the report assets' hourly partitions begin (orchestration/assets/partitions.py):
REPORT_PARTITIONS_START when set, else the hour of the first data the stack holds
(raw rows or report windows), else the hour before the current one — against a
real PostgreSQL, and in a fresh process loading the code location as the
webserver, daemon and run workers do."""

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg2

from orchestration.assets.partitions import partitions_start
from salespulse.settings import Settings
from tests.conftest import free_port
from tests.support.orchestration import BASE_HOUR, seed_ecommerce, seed_restaurant

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 12, 6, 22, 40, tzinfo=timezone.utc)


def settings(url, **kwargs):
    kwargs.setdefault("report_partitions_start", None)  # the tests' environment sets one (conftest)
    return Settings(database_url=url, **kwargs)


def insert_report_window(url, table, start):
    """A report row with only its window set (every figure 0): a materialized hour whose raw rows are gone."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("""SELECT column_name, data_type FROM information_schema.columns
                       WHERE table_schema = 'public' AND table_name = %s AND column_default IS NULL
                       ORDER BY ordinal_position""", (table,))
        columns = cur.fetchall()
        values = [start if name == "window_start" else (start if "time" in kind else ("" if "text" in kind else 0))
                  for name, kind in columns]
        cur.execute(f"INSERT INTO {table} ({', '.join(n for n, _ in columns)}) "
                    f"VALUES ({', '.join(['%s'] * len(values))})", values)
    conn.close()


def test_an_empty_database_starts_an_hour_ago(database_url):
    assert partitions_start(settings(database_url), now=NOW) == datetime(2026, 12, 6, 21, tzinfo=timezone.utc)


def test_an_unreachable_database_starts_an_hour_ago():
    url = f"postgresql://nobody:x@127.0.0.1:{free_port()}/none"
    assert partitions_start(settings(url), now=NOW) == datetime(2026, 12, 6, 21, tzinfo=timezone.utc)


def test_the_first_data_sets_the_start(database_url):
    seed_ecommerce(database_url, BASE_HOUR)
    assert partitions_start(settings(database_url), now=NOW) == BASE_HOUR
    seed_restaurant(database_url, BASE_HOUR - timedelta(hours=5))  # the earliest table wins
    assert partitions_start(settings(database_url), now=NOW) == BASE_HOUR - timedelta(hours=5)
    # a report window older than every raw row (its raw month dropped by RAW_RETENTION_DAYS) still counts
    insert_report_window(database_url, "report_ecommerce_overview_minute", BASE_HOUR - timedelta(days=3, minutes=-17))
    assert partitions_start(settings(database_url), now=NOW) == BASE_HOUR - timedelta(days=3)


def test_data_in_the_current_hour_still_starts_at_the_previous_one(database_url):
    seed_ecommerce(database_url, NOW.replace(minute=0))
    assert partitions_start(settings(database_url), now=NOW) == datetime(2026, 12, 6, 21, tzinfo=timezone.utc)


def test_the_setting_wins(database_url):
    seed_ecommerce(database_url, BASE_HOUR)
    chosen = settings(database_url, report_partitions_start="2025-06-01T10:45:00+02:00")
    assert partitions_start(chosen, now=NOW) == datetime(2025, 6, 1, 8, tzinfo=timezone.utc)
    naive = settings(database_url, report_partitions_start="2025-06-01T10:45")  # naive: UTC
    assert partitions_start(naive, now=NOW) == datetime(2025, 6, 1, 10, tzinfo=timezone.utc)


def test_the_code_location_shows_only_the_hours_since_the_first_data(database_url):
    """A fresh stack with an hour of data: the report assets have two or three partitions, not ~25,000."""
    now = datetime.now(timezone.utc)
    seed_ecommerce(database_url, now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1))
    env = {k: v for k, v in os.environ.items() if k != "REPORT_PARTITIONS_START"}
    env["DATABASE_URL"] = database_url
    script = ("from orchestration.definitions import defs\n"
              "a = defs.resolve_assets_def('ecommerce_reports')\n"
              "print(','.join(a.partitions_def.get_partition_keys()))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True, timeout=300).stdout.strip().splitlines()[-1].split(",")
    first = (now - timedelta(hours=1)).strftime("%Y-%m-%d-%H:00")
    assert out[0] == first
    assert len(out) in (2, 3)  # the previous hour and the current one (end_offset=1); an hour may turn

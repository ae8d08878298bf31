"""Late and out-of-order data is restated, end to end on the real services:
rows committed to PostgreSQL, the new-data sensor ticked with
build_sensor_context, the runs it requests executed with materialize() on a
real Spark Connect server, and the reports and report_restatements read back."""

import json
import uuid
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest
from dagster import AssetKey, build_sensor_context, instance_for_test, materialize

from orchestration.assets.reports import ecommerce_reports, restaurant_reports
from orchestration.resources import PostgresResource, SparkResource
from orchestration.restatement import tag_name
from orchestration.sensors.new_data import new_data_sensor
from salespulse.settings import get_settings
from tests.support.orchestration import (  # noqa: F401  (fixtures)
    BASE_HOUR,
    actual_ecommerce_minutes,
    expected_ecommerce_minutes,
    materializations,
    query,
    seed_ecommerce,
    seed_restaurant,
    spark_remote,
)

REPORT_KEYS = {AssetKey("ecommerce_reports"), AssetKey("restaurant_reports")}
MINUTE = timedelta(minutes=1)


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


@pytest.fixture
def no_margin(monkeypatch):
    """LATE_ROWS_MARGIN_SECONDS=0: only the transaction-id marks protect the scan."""
    monkeypatch.setenv("LATE_ROWS_MARGIN_SECONDS", "0")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def tick(instance, cursor, database_url):
    context = build_sensor_context(instance=instance, cursor=cursor,
                                   resources={"postgres": PostgresResource(database_url=database_url)})
    return new_data_sensor(context)


def run(request, instance, database_url, remote):
    """Execute a sensor's RunRequest in process (its partition, selection and tags)."""
    selection = [k for k in request.asset_selection if k in REPORT_KEYS]
    result = materialize([ecommerce_reports, restaurant_reports], selection=selection, instance=instance,
                         partition_key=request.partition_key, tags=request.tags,
                         resources={"postgres": PostgresResource(database_url=database_url),
                                    "spark": SparkResource(remote=remote)})
    assert result.success
    return result


def insert_event(cur, ts: datetime) -> int:
    cur.execute("""INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, product_id)
                   VALUES (%s, 'page_view', %s, 'u-late', 's-late', NULL) RETURNING id""", (str(uuid.uuid4()), ts))
    return cur.fetchone()[0]


def report_events(url, window):
    rows = query(url, "SELECT events FROM report_ecommerce_overview_minute WHERE window_start = %s", (window,))
    return rows[0][0] if rows else None


def restatements(url):
    return query(url, "SELECT domain, window_start, rows_before, rows_after, run_id FROM report_restatements "
                      "ORDER BY id")


def test_events_ten_minutes_late_restate_their_minute(database_url, spark_remote, instance):
    late_minute = (datetime.now(timezone.utc) - 10 * MINUTE).replace(second=0, microsecond=0)
    hour = late_minute.replace(minute=0)
    key = hour.strftime("%Y-%m-%d-%H:%M")
    other = late_minute - MINUTE if late_minute.minute else late_minute + MINUTE
    on_time = seed_ecommerce(database_url, hour, minutes=(late_minute.minute,), per_minute=12)
    seed_ecommerce(database_url, hour, minutes=(other.minute,), per_minute=4, seed=5)
    full = materialize([ecommerce_reports], partition_key=key, instance=instance,
                       resources={"postgres": PostgresResource(database_url=database_url),
                                  "spark": SparkResource(remote=spark_remote)})
    assert full.success and report_events(database_url, late_minute) == on_time
    other_computed = query(database_url, "SELECT computed_at FROM report_ecommerce_overview_minute "
                                         "WHERE window_start = %s", (other,))

    first = tick(instance, None, database_url)
    assert first.run_requests == [] and "initialised" in first.skip_reason.skip_message

    # three events stamped in a minute reported 10 minutes ago arrive now
    late = seed_ecommerce(database_url, hour, minutes=(late_minute.minute,), per_minute=3, seed=77)
    second = tick(instance, first.cursor, database_url)
    assert len(second.run_requests) == 1
    request = second.run_requests[0]
    assert request.partition_key == key
    assert request.tags[tag_name("ecommerce")] == str(late_minute.minute)  # exactly that window
    assert tag_name("restaurant") not in request.tags
    assert AssetKey("ecommerce_reports") in request.asset_selection
    assert AssetKey("restaurant_reports") not in request.asset_selection

    result = run(request, instance, database_url, spark_remote)
    assert report_events(database_url, late_minute) == on_time + late
    window_end = hour + timedelta(hours=1)
    assert actual_ecommerce_minutes(database_url, hour, window_end) == \
        expected_ecommerce_minutes(database_url, hour, window_end)
    # only the restated window was rewritten
    assert query(database_url, "SELECT computed_at FROM report_ecommerce_overview_minute WHERE window_start = %s",
                 (other,)) == other_computed
    assert restatements(database_url) == [("ecommerce", late_minute, on_time, on_time + late, result.run_id)]
    metadata = materializations(result)[("ecommerce_reports", key)]
    assert metadata["restated_windows"].value == late_minute.strftime("%H:%M")

    third = tick(instance, second.cursor, database_url)
    assert third.run_requests == [] and third.skip_reason.skip_message == "no new rows"
    assert json.loads(third.cursor)["pending"] == {}


def test_two_consumers_committing_out_of_order_both_end_in_the_reports(database_url, spark_remote, instance,
                                                                       no_margin):
    slow_window, fast_window = BASE_HOUR + 10 * MINUTE, BASE_HOUR + 11 * MINUTE
    key = BASE_HOUR.strftime("%Y-%m-%d-%H:%M")
    first = tick(instance, None, database_url)

    slow, fast = psycopg2.connect(database_url), psycopg2.connect(database_url)
    try:
        with slow.cursor() as cur:
            slow_id = insert_event(cur, slow_window + timedelta(seconds=5))  # not committed yet
        with fast, fast.cursor() as cur:
            fast_id = insert_event(cur, fast_window + timedelta(seconds=20))
        assert fast_id > slow_id  # the higher id commits first

        second = tick(instance, first.cursor, database_url)
        assert json.loads(second.cursor)["ids"]["events"] >= fast_id  # an id cursor would now be past slow_id
        assert [(r.partition_key, r.tags[tag_name("ecommerce")]) for r in second.run_requests] == [(key, "11")]
        run(second.run_requests[0], instance, database_url, spark_remote)
        assert (report_events(database_url, slow_window), report_events(database_url, fast_window)) == (None, 1)

        slow.commit()  # the lower id commits after the sensor saw the higher one
    finally:
        slow.close()
        fast.close()

    # its window was never pending: only the ingested_at scan from the marks finds it
    third = tick(instance, second.cursor, database_url)
    assert [(r.partition_key, r.tags[tag_name("ecommerce")]) for r in third.run_requests] == [(key, "10")]
    result = run(third.run_requests[0], instance, database_url, spark_remote)
    assert (report_events(database_url, slow_window), report_events(database_url, fast_window)) == (1, 1)
    # the hour had been reported after 09:10 closed (the 09:11 run): shown empty, now 1
    assert restatements(database_url) == [("ecommerce", slow_window, 0, 1, result.run_id)]
    assert tick(instance, third.cursor, database_url).run_requests == []


def test_a_window_stays_pending_until_its_report_agrees(database_url, spark_remote, instance, no_margin):
    """A late order whose first run fails (or reads too early) is requested again at
    the next tick, though its row is no longer in the ingested_at scan."""
    first = tick(instance, None, database_url)
    seed_restaurant(database_url, BASE_HOUR, minutes=(3,), per_minute=2)
    second = tick(instance, first.cursor, database_url)
    assert [(r.partition_key, r.tags[tag_name("restaurant")]) for r in second.run_requests] == [
        (BASE_HOUR.strftime("%Y-%m-%d-%H:%M"), "3")]
    # the run is lost; later ticks scan only rows ingested after the second one
    third = tick(instance, second.cursor, database_url)
    assert [r.tags[tag_name("restaurant")] for r in third.run_requests] == ["3"]
    run(third.run_requests[0], instance, database_url, spark_remote)
    assert query(database_url, "SELECT orders FROM report_restaurant_overview_minute WHERE window_start = %s",
                 (BASE_HOUR + 3 * MINUTE,)) == [(2,)]
    # never reported before: a first report is not a restatement
    assert restatements(database_url) == []
    assert tick(instance, third.cursor, database_url).run_requests == []


def test_whole_hour_refreshes_record_only_windows_reported_closed(database_url, spark):
    """The minute schedule and backfills refresh whole hours: the same rule records
    their restatements; a first report, and a window computed while it was still
    running, are not restatements."""
    from orchestration.reports import refresh_ecommerce_reports
    from salespulse.settings import Settings

    settings = Settings(database_url=database_url)
    end = BASE_HOUR + timedelta(hours=1)
    m1, m2, m3 = (BASE_HOUR + n * MINUTE for n in (1, 2, 3))
    seed_ecommerce(database_url, BASE_HOUR, minutes=(1, 2), per_minute=5)
    refresh_ecommerce_reports(spark, settings, BASE_HOUR, end)
    assert restatements(database_url) == []  # the hour's first report
    # minute 2 was computed while it was still running (as the minute schedule does)
    query(database_url, "UPDATE report_ecommerce_overview_minute SET computed_at = window_start + interval '30 s' "
                        "WHERE window_start = %s", (m2,))
    before = {m: report_events(database_url, m) for m in (m1, m2, m3)}
    seed_ecommerce(database_url, BASE_HOUR, minutes=(1, 2, 3), per_minute=2, seed=31)
    refresh_ecommerce_reports(spark, settings, BASE_HOUR, end)
    after = {m: report_events(database_url, m) for m in (m1, m2, m3)}
    assert after == {m1: before[m1] + 2, m2: before[m2] + 2, m3: 2}
    # minute 3 had no row, but the hour had been reported after it closed: shown empty, now 2
    assert restatements(database_url) == [("ecommerce", m1, before[m1], after[m1], None),
                                          ("ecommerce", m3, 0, 2, None)]

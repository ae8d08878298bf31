"""Stale is visible on the dashboard: ``freshness_sensor`` (a tick built
with ``build_sensor_context`` on a Dagster instance holding a blocked queue)
records what it found in the app database, and the dashboard's
``/api/pipeline/status`` reads it back as the read-only dashboard role —
against a real PostgreSQL. (The page itself: tests/test_browser_dashboard.py.)"""

import logging
import time
import uuid
from datetime import datetime, timezone

import psycopg2
import pytest
from dagster import DagsterRunStatus, build_sensor_context, instance_for_test
from dagster._core.events.log import EventLogEntry
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRun

from dashboard import create_app
from orchestration.resources import PostgresResource
from orchestration.sensors.freshness import freshness_sensor
from salespulse.settings import ROLE_DASHBOARD, Settings
from tests.support.orchestration import query, seed_ecommerce

JOB = "refresh_reports_job"
# a queued run needs the code location it will be launched from; nothing launches it here
ORIGIN = RemoteRepositoryOrigin(GrpcServerCodeLocationOrigin(host="localhost", port=4999, location_name="salespulse"),
                                "__repository__").get_job_origin(JOB)


def add_run(instance, status, silent_for: float = 0.0) -> str:
    run = DagsterRun(job_name=JOB, run_id=uuid.uuid4().hex, status=status, remote_job_origin=ORIGIN)
    instance.add_run(run)
    if silent_for:  # its newest event is this old: what a run whose worker is gone looks like
        instance.handle_new_event(EventLogEntry(error_info=None, level=logging.INFO, user_message="working",
                                                run_id=run.run_id, timestamp=time.time() - silent_for,
                                                job_name=JOB, dagster_event=None))
    return run.run_id


def tick(instance, url):
    return freshness_sensor(build_sensor_context(instance=instance,
                                                       resources={"postgres": PostgresResource(database_url=url)}))


def freshness(url) -> dict:
    app = create_app(Settings(database_url=url, dashboard_cache_ttl=0, dashboard_token=None,
                              dashboard_rate_limit="100000/minute", cors_origins=""))
    try:
        resp = app.test_client().get("/api/pipeline/status", query_string={"range": "15m"})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_json()["freshness"]
    finally:
        app.extensions["salespulse"]["db"].close()


def write_report_window(url, window_start) -> None:
    columns = query(url, """SELECT column_name, data_type FROM information_schema.columns
                            WHERE table_name = 'report_ecommerce_overview_minute'""")
    values = {name: window_start if name == "window_start" else
              datetime.now(timezone.utc) if kind.startswith("timestamp") else 0 for name, kind in columns}
    query(url, f"INSERT INTO report_ecommerce_overview_minute ({', '.join(values)}) "
               f"VALUES ({', '.join(['%s'] * len(values))})", list(values.values()))


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


def test_sensor_records_stale_reports_and_a_blocked_queue_and_the_dashboard_shows_them(database_url, instance):
    now = datetime.now(timezone.utc)
    seed_ecommerce(database_url, now.replace(minute=0, second=0, microsecond=0))  # raw rows, no report yet
    silent = {add_run(instance, DagsterRunStatus.STARTED, silent_for=3600) for _ in range(2)}
    add_run(instance, DagsterRunStatus.QUEUED)

    result = tick(instance, database_url)
    assert "NOT CURRENT" in result.skip_reason.skip_message
    rows = {r[0]: r[1:] for r in query(database_url, """
        SELECT domain, newest_raw_minute, newest_window, minutes_behind, target_minutes, stale
        FROM pipeline_report_freshness""")}
    (newest_raw,), = query(database_url, """SELECT date_trunc('minute', least(max("timestamp"), now())) FROM events""")
    assert rows == {"ecommerce": (newest_raw, None, None, 3, True), "restaurant": (None, None, 0.0, 3, False)}
    (in_flight, queued, stalled, blocked), = query(database_url, """
        SELECT in_flight, queued, stalled, blocked FROM pipeline_run_queue""")
    assert (in_flight, queued, blocked) == (2, 1, True)
    assert {r["run_id"] for r in stalled} == silent and all(r["idle_seconds"] >= 3600 for r in stalled)

    shown = freshness(database_url)  # read back as the dashboard role
    assert shown["stale"] and shown["check_current"] and shown["check_age_seconds"] < shown["check_max_age_seconds"]
    reports = {r["domain"]: r for r in shown["reports"]}
    assert reports["ecommerce"]["stale"] and reports["ecommerce"]["newest_window"] is None
    assert datetime.fromisoformat(reports["ecommerce"]["newest_raw_minute"]) == newest_raw
    assert not reports["restaurant"]["stale"]
    assert shown["queue"]["blocked"] and shown["queue"]["queued"] == 1
    assert {r["run_id"] for r in shown["queue"]["stalled"]} == silent

    # the orphans are repaired and the newest minute is reported: the next tick replaces the record
    for run_id in silent:
        instance.report_run_failed(instance.get_run_by_id(run_id), message="worker gone (test)")
    write_report_window(database_url, newest_raw)
    assert tick(instance, database_url).skip_reason.skip_message == "reports current"
    assert query(database_url, "SELECT count(*) FROM pipeline_report_freshness")[0][0] == 2
    assert query(database_url, "SELECT minutes_behind, stale FROM pipeline_report_freshness "
                               "WHERE domain = 'ecommerce'") == [(0.0, False)]
    shown = freshness(database_url)
    assert not shown["stale"] and shown["check_current"]
    assert shown["queue"] == {**shown["queue"], "in_flight": 0, "queued": 1, "stalled": [], "blocked": False}

    # nobody refreshes the record (the sensor is not running): the dashboard says how old it is
    query(database_url, "UPDATE pipeline_run_queue SET observed_at = now() - interval '10 minutes'")
    shown = freshness(database_url)
    assert not shown["check_current"] and shown["check_age_seconds"] >= 600


def test_no_record_yet_is_not_current_and_the_dashboard_role_cannot_write_it(database_url):
    shown = freshness(database_url)
    assert shown == {**shown, "checked_at": None, "check_age_seconds": None, "check_current": False,
                     "reports": [], "queue": None, "stale": False}
    conn = psycopg2.connect(Settings(database_url=database_url).role_url(ROLE_DASHBOARD))
    try:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege), conn.cursor() as cur:
            cur.execute("INSERT INTO pipeline_run_queue (in_flight, queued, blocked) VALUES (0, 0, false)")
    finally:
        conn.close()

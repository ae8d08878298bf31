"""One freshness rule (salespulse/freshness.py), read from every place that shows it.

The e-commerce reports are put N minutes behind the newest event, for N on
both sides of the target (``FRESHNESS_REPORTS_TARGET_S``) and of the stale
bound (the target times ``FRESHNESS_STALE_FACTOR``), in a real PostgreSQL.
For each N the same state is read from

* the dashboard's ``/api/pipeline/freshness`` (the real Flask app);
* ``salespulse status`` (the real CLI, in a subprocess);
* the ``reports_current`` and ``reports_fresh`` Dagster checks (a real check
  evaluation: an in-process job of the checks);
* the pipeline page's notice record, written by a real ``freshness_sensor``
  tick and read back through ``/api/pipeline/status``.
"""

import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg2
import pytest
from dagster import (
    AssetCheckSeverity, AssetSelection, DagsterInstance, Definitions, asset, build_sensor_context,
    define_asset_job, in_process_executor,
)

from dashboard import create_app
from orchestration.checks.current import REPORTS_CURRENT
from orchestration.checks.freshness import REPORTS_FRESH
from orchestration.resources import PostgresResource
from orchestration.sensors.freshness import freshness_sensor
from salespulse.catalog import ECOMMERCE
from salespulse.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = Settings()
TARGET_MIN = DEFAULTS.freshness_reports_target_s / 60
STALE_MIN = TARGET_MIN * DEFAULTS.freshness_stale_factor
#: (whole minutes behind, the state the rule gives): one minute on each side of each threshold
CASES = [(int(TARGET_MIN) - 1, "ok"), (int(TARGET_MIN) + 1, "late"),
         (int(STALE_MIN) - 1, "late"), (int(STALE_MIN) + 1, "stale")]


def sql(url, statement, params=None):
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else None


def put_reports_behind(url, minutes: int) -> None:
    """The newest overview window ends ``minutes`` (to ``minutes`` + 1) before
    the newest event; computed now, so its data is as of the window's end."""
    sql(url, f"DELETE FROM {ECOMMERCE.overview}")
    (newest,), = sql(url, 'SELECT max("timestamp") FROM events')
    window_start = newest.replace(second=0, microsecond=0) - timedelta(minutes=minutes + 1)
    columns = sql(url, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
                  (ECOMMERCE.overview,))
    values = {name: window_start if name == "window_start" else datetime.now(timezone.utc)
              if kind.startswith("timestamp") else 0 for name, kind in columns}
    sql(url, f"INSERT INTO {ECOMMERCE.overview} ({', '.join(values)}) VALUES ({', '.join(['%s'] * len(values))})",
        list(values.values()))


def app_settings(url: str) -> Settings:
    return Settings(database_url=url, dashboard_cache_ttl=0, dashboard_rate_limit="100000/minute",
                    dashboard_token=None, cors_origins="")


@pytest.fixture
def client(database_url):
    app = create_app(app_settings(database_url))
    yield app.test_client()
    app.extensions["salespulse"]["db"].close()


def api_state(client) -> str:
    resp = client.get("/api/pipeline/freshness", query_string={"domain": "ecommerce"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["domains"]["ecommerce"]["reports"]["state"]


def cli_state(url, tmp_path) -> tuple[str, bool]:
    """The state ``salespulse status`` prints on its ``reports ecommerce`` line, and whether that line is up."""
    env = {**os.environ, "DATABASE_URL": url, "DAGSTER_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "salespulse.cli", "status"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120).stdout
    line = next(line for line in out.splitlines() if re.search(r"\breports ecommerce\b", line))
    match = re.fullmatch(r"(UP  |DOWN)\s+reports ecommerce\s+ecommerce reports (\w+): .*", line)
    assert match, out
    return match.group(2), match.group(1) == "UP  "


def _stand_in(name):
    @asset(name=name, group_name=name.split("_")[0], description="stand-in")
    def _report():
        return None

    return _report


def dagster_states(url) -> dict[str, tuple[str, bool, AssetCheckSeverity]]:
    """check name -> (reports state, passed, severity) of a real evaluation of the e-commerce checks."""
    checks = [REPORTS_FRESH["ecommerce"], REPORTS_CURRENT["ecommerce"]]
    defs = Definitions(assets=[_stand_in("ecommerce_reports")], asset_checks=checks,
                       jobs=[define_asset_job("health", selection=AssetSelection.checks(*checks))],
                       resources={"postgres": PostgresResource(database_url=url)}, executor=in_process_executor)
    result = defs.resolve_job_def("health").execute_in_process()
    assert result.success
    return {e.check_name: (e.metadata["reports_state"].value, e.passed, e.severity)
            for e in result.get_asset_check_evaluations()}


def recorded_state(url, client) -> dict:
    with DagsterInstance.ephemeral() as instance:
        freshness_sensor(build_sensor_context(instance=instance), postgres=PostgresResource(database_url=url))
    shown = client.get("/api/pipeline/status", query_string={"range": "15m"}).get_json()["freshness"]
    return next(r for r in shown["reports"] if r["domain"] == "ecommerce")


def test_thresholds_come_from_the_settings():
    assert [state for _n, state in CASES] == ["ok", "late", "late", "stale"]
    assert CASES[0][0] < TARGET_MIN < CASES[1][0] and CASES[2][0] < STALE_MIN < CASES[3][0]


@pytest.mark.parametrize("minutes,expected", CASES, ids=[f"{n}-min-{s}" for n, s in CASES])
def test_every_place_reads_the_same_state(database_url, client, tmp_path, minutes, expected):
    sql(database_url, """INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id)
                         VALUES (gen_random_uuid(), 'search', now() - interval '1 second', 'u-1', 's-1')""")
    put_reports_behind(database_url, minutes)

    assert api_state(client) == expected
    assert cli_state(database_url, tmp_path) == (expected, expected == "ok")
    checks = dagster_states(database_url)
    assert checks["reports_current"] == (expected, expected == "ok", checks["reports_current"][2])
    assert checks["reports_fresh"][0] == expected
    if expected != "ok":
        assert checks["reports_current"][2] == (AssetCheckSeverity.ERROR if expected == "stale"
                                                else AssetCheckSeverity.WARN)
    record = recorded_state(database_url, client)
    assert (record["state"], record["stale"]) == (expected, expected == "stale")
    assert record["target_minutes"] == TARGET_MIN


def test_the_report_assets_dagster_freshness_policy_follows_the_same_settings():
    from orchestration.assets import all_assets
    from orchestration.assets.reports import REPORT_ASSET_BY_DOMAIN, with_freshness_policy

    settings = Settings(freshness_reports_target_s=240, freshness_stale_factor=2.5)
    assets = with_freshness_policy(all_assets, settings)
    policies = {spec.key.to_user_string(): spec.freshness_policy for a in assets if hasattr(a, "specs")
                for spec in a.specs}
    for domain in REPORT_ASSET_BY_DOMAIN:
        policy = policies[f"{domain}_reports"]
        assert (policy.warn_window.to_timedelta(), policy.fail_window.to_timedelta()) == \
            (timedelta(minutes=4), timedelta(minutes=10))
    assert all(p is None for key, p in policies.items() if not key.endswith("_reports"))

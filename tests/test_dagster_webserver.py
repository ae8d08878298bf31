"""End to end through the Dagster UI's API: ``dagster-webserver`` and
``dagster-daemon run`` against a temp DAGSTER_HOME (PostgreSQL storage), the
test launches a backfill of three past hours with the GraphQL mutation the UI
uses, and the daemon's runs leave exact report rows."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from salespulse.settings import Settings
from salespulse.stack.dagster_home import prepare_dagster_home
from tests.conftest import free_port
from tests.support.orchestration import (  # noqa: F401  (fixtures)
    BASE_HOUR,
    actual_ecommerce_minutes,
    actual_restaurant_minutes,
    expected_ecommerce_minutes,
    expected_restaurant_minutes,
    query,
    seed_ecommerce,
    seed_restaurant,
    spark_remote,
)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOURS = [BASE_HOUR + timedelta(hours=i) for i in range(3)]
KEYS = [h.strftime("%Y-%m-%d-%H:%M") for h in HOURS]

LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}"""
STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions partitionNames }
    ... on PythonError { message }
  }
}"""
SENSOR_TICKS = """
query($name: String!) {
  sensorOrError(sensorSelector: {repositoryName: "__repository__", repositoryLocationName: "salespulse",
                                 sensorName: $name}) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 5) { status timestamp } } }
    ... on PythonError { message }
  }
}"""
LOCATIONS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name
    locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def graphql(port: int, document: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": document, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.load(response)
    assert "errors" not in body, body["errors"]
    return body["data"]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (webserver/daemon, their code servers and runs), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


@pytest.fixture
def dagster_stack(postgres, database_url, broker, spark_remote, tmp_path):
    admin_url = postgres.create_database(f"dagster_{uuid.uuid4().hex[:8]}")
    home = prepare_dagster_home(Settings(database_url=admin_url), database=admin_url.rsplit("/", 1)[1],
                                home=tmp_path / "dagster_home")
    env = {**os.environ, "DAGSTER_HOME": str(home), "DATABASE_URL": database_url, "SPARK_REMOTE": spark_remote,
           "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap}
    port = free_port()
    procs = []
    for name, command in (
        ("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"]),
        ("daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"]),
    ):
        log = open(tmp_path / f"{name}.log", "wb")
        procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    try:
        deadline = time.monotonic() + 240
        while True:
            assert all(p.poll() is None for p in procs), (tmp_path / "webserver.log").read_text()[-3000:]
            try:
                data = graphql(port, LOCATIONS)
                entries = data["workspaceOrError"]["locationEntries"]
                loaded = [e for e in entries if e["locationOrLoadError"]
                          and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"]
                if loaded:
                    break
                errors = [e for e in entries if e["locationOrLoadError"]
                          and e["locationOrLoadError"]["__typename"] == "PythonError"]
                assert not errors, errors
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "webserver did not load the code location"
            time.sleep(1)
        yield port, tmp_path
    finally:
        for proc in procs:
            stop(proc)


@pytest.mark.slow(reason="dagster-webserver and the Dagster daemon as processes; three Spark report runs")
def test_backfill_of_three_hours_launched_through_graphql(database_url, dagster_stack):
    port, logs = dagster_stack
    # the run status sensor starts from its first tick: let it tick once first
    deadline = time.monotonic() + 120
    while True:
        sensor = graphql(port, SENSOR_TICKS, {"name": "record_run_successes"})["sensorOrError"]
        assert sensor["__typename"] == "Sensor", sensor
        assert sensor["sensorState"]["status"] == "RUNNING"  # running by default
        if sensor["sensorState"]["ticks"]:
            break
        assert time.monotonic() < deadline, "record_run_successes never ticked"
        time.sleep(2)

    for hour in [HOURS[0] - timedelta(hours=1), *HOURS, HOURS[-1] + timedelta(hours=1)]:
        seed_ecommerce(database_url, hour)
        seed_restaurant(database_url, hour)

    launched = graphql(port, LAUNCH, {"params": {
        "partitionNames": KEYS,
        "assetSelection": [{"path": ["ecommerce_reports"]}, {"path": ["restaurant_reports"]}],
        "title": "three past hours",
    }})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    deadline = time.monotonic() + 480
    while True:
        backfill = graphql(port, STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        if backfill["status"] not in ("REQUESTED", "CANCELING", "FAILING"):
            break
        assert time.monotonic() < deadline, f"backfill still {backfill['status']}; see {logs}"
        time.sleep(3)
    assert backfill["status"] in ("COMPLETED_SUCCESS", "COMPLETED"), backfill
    assert sorted(backfill["partitionNames"]) == KEYS

    start, end = HOURS[0], HOURS[-1] + timedelta(hours=1)
    assert actual_ecommerce_minutes(database_url, start, end) == expected_ecommerce_minutes(database_url, start, end)
    assert actual_restaurant_minutes(database_url, start, end) == expected_restaurant_minutes(database_url, start, end)
    # each minute of the three hours once (the new-data sensor may refresh the neighbours too)
    assert query(database_url, """SELECT count(*), count(DISTINCT window_start) FROM report_ecommerce_overview_minute
                                  WHERE window_start >= %s AND window_start < %s""", (start, end))[0] == (15, 15)
    assert query(database_url, """SELECT count(*), count(DISTINCT window_start) FROM report_restaurant_overview_minute
                                  WHERE window_start >= %s AND window_start < %s""", (start, end))[0] == (12, 12)

    # the daemon's run status sensor recorded the backfill's (single) run for the dashboard
    deadline = time.monotonic() + 120
    while True:
        rows = query(database_url, "SELECT status, job_name FROM pipeline_runs WHERE partition = %s",
                     (f"{KEYS[0]}...{KEYS[-1]}",))
        if rows:
            break
        assert time.monotonic() < deadline, "the backfill run was not recorded in pipeline_runs"
        time.sleep(3)
    assert rows == [("SUCCESS", "__ASSET_JOB")]

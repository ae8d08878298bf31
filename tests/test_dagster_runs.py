"""No run left behind, with the real daemon: ``salespulse dagster-daemon`` on a
temp DAGSTER_HOME (PostgreSQL storage from prepare_dagster_home, the stack's
run queue: two runs at a time, one per partition).

* a run's worker SIGKILLed mid-run: the run fails with the reason, the runs
  queued behind it start;
* SIGTERM to the wrapper during a run (what the stack and ``docker stop``
  send): the run is ended ("stack stopping") before the daemon goes, nothing
  is left STARTED/STARTING/CANCELING;
* SIGKILL of the wrapper, the daemon, its code server and the run worker:
  the run stays STARTED (an orphan) until the next start repairs it.

After each, a new run succeeds and a three-partition backfill completes. The
cheap ``work_job`` (tests/support/dagster_runs_defs.py) stands in for the reports;
the last test does the SIGKILL case with the real ``refresh_reports_job``.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from salespulse.dagster_runs import IN_FLIGHT, STOP_REASON, queue_health
from salespulse.settings import Settings
from salespulse.stack.dagster_home import prepare_dagster_home
from tests.support.orchestration import (  # noqa: F401  (fixtures)
    actual_ecommerce_minutes,
    actual_restaurant_minutes,
    expected_ecommerce_minutes,
    expected_restaurant_minutes,
    seed_ecommerce,
    seed_restaurant,
    spark_remote,
)
from tests.support.consumer import wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


class Stack:
    """A DAGSTER_HOME, a workspace, and the daemon wrapper started/stopped like the stack does."""

    def __init__(self, home: Path, workspace: Path, env: dict, logs: Path):
        self.home, self.workspace, self.env, self.logs = home, workspace, env, logs
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.instance = DagsterInstance.from_config(str(home))
        self.workspace_context = None

    def start(self) -> None:
        self.starts += 1
        log = open(self.logs / f"daemon-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "salespulse.cli", "dagster-daemon", "--sweep", "2", "--run-grace", "6",
             "--", "-w", str(self.workspace)],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return (self.logs / f"daemon-{self.starts}.log").read_text()[-4000:]

    def sigterm(self) -> int:
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(60)

    def daemon_group(self) -> int:
        """The process group of the wrapper's child ``dagster-daemon`` (its code servers and run workers too)."""
        for entry in Path("/proc").iterdir():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.proc.pid:  # ppid
                return int(fields[2])  # pgrp
        raise AssertionError(f"no dagster-daemon under the wrapper; log:\n{self.log()}")

    def sigkill_everything(self) -> None:
        """kill -9 of the whole stack: the wrapper's group and the daemon's (code server, run workers)."""
        groups = {self.daemon_group(), os.getpgid(self.proc.pid)}
        for group in groups:
            os.killpg(group, signal.SIGKILL)
        self.proc.wait(10)

    def launch(self, job: str, tags: dict) -> str:
        """Submit a run to the queue, as ``dagster job launch`` does (one workspace kept open: faster)."""
        from dagster._cli.job import _create_run
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import WorkspaceFileTarget

        if self.workspace_context is None:
            self.workspace_context = WorkspaceProcessContext(self.instance, WorkspaceFileTarget([str(self.workspace)]))
        request = self.workspace_context.create_request_context()
        (location,) = request.code_locations
        repo = location.get_repository("__repository__")
        run = _create_run(instance=self.instance, code_location=location, remote_repo=repo,
                          remote_job=repo.get_full_job(job), run_config={}, tags=tags, op_selection=None,
                          run_id=str(uuid.uuid4()))
        return self.instance.submit_run(run.run_id, request).run_id

    def backfill(self, job: str, partitions: list[str]) -> list[str]:
        tag = uuid.uuid4().hex[:8]
        proc = subprocess.run(
            [str(BIN / "dagster"), "job", "backfill", "-w", str(self.workspace), "-j", job, "--noprompt",
             "--partitions", ",".join(partitions), "--tags", json.dumps({"test-backfill": tag})],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        runs = self.instance.get_runs(filters=RunsFilter(tags={"test-backfill": tag}))
        assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(partitions)
        return [r.run_id for r in runs]

    def status(self, run_id: str) -> DagsterRunStatus:
        return self.instance.get_run_by_id(run_id).status

    def wait_for(self, run_ids: list[str], statuses, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            current = {r: self.status(r) for r in run_ids}
            if all(s in statuses for s in current.values()):
                return
            assert self.proc is None or self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, f"runs {current}, wanted {statuses}; daemon log:\n{self.log()}"
            time.sleep(0.3)

    def messages(self, run_id: str) -> str:
        return "\n".join(e.message or "" for e in self.instance.all_logs(run_id))

    def in_flight(self) -> list:
        return list(self.instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT)))

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.workspace_context is not None:
            self.workspace_context.__exit__(None, None, None)
        self.instance.dispose()


def wait_for_file(path: Path, stack: Stack, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert stack.proc.poll() is None, stack.log()
        assert time.monotonic() < deadline, f"{path} never appeared; daemon log:\n{stack.log()}"
        time.sleep(0.2)
    return path.read_text()


def make_stack(postgres, tmp_path, workspace: Path, extra_env: dict) -> Stack:
    admin_url = postgres.create_database(f"dagster_{uuid.uuid4().hex[:8]}")
    home = prepare_dagster_home(Settings(database_url=admin_url), database=admin_url.rsplit("/", 1)[1],
                                home=tmp_path / "dagster_home")
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra_env}
    return Stack(home, workspace, env, tmp_path)


@pytest.fixture
def cheap(postgres, tmp_path):
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(json.dumps({"load_from": [{"python_file": {
        "relative_path": str(ROOT / "tests" / "support" / "dagster_runs_defs.py"), "working_directory": str(ROOT),
        "location_name": "runs_test"}}]}))
    (tmp_path / "holds").mkdir()
    stack = make_stack(postgres, tmp_path, workspace, {"DAGSTER_RUNS_TEST_DIR": str(tmp_path / "holds")})
    yield stack, tmp_path / "holds"
    (tmp_path / "holds" / "release").touch()
    stack.close()


def hold(stack: Stack, partition: str) -> str:
    return stack.launch("work_job", {"dagster/partition": partition, "hold": "1"})


def then_runs_flow(stack: Stack, holds: Path) -> None:
    """A new run succeeds, a three-partition backfill completes, nothing is left in flight."""
    (holds / "release").touch()
    fresh = stack.launch("work_job", {"dagster/partition": "p1"})
    backfill = stack.backfill("work_job", ["p3", "p4", "p5"])
    stack.wait_for([fresh, *backfill], {DagsterRunStatus.SUCCESS})
    assert stack.in_flight() == []
    assert stack.instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.QUEUED])) == []


@pytest.mark.slow(reason="a real Dagster daemon, its code server and run workers; a run worker SIGKILLed")
def test_a_killed_run_worker_fails_its_run_and_the_queue_drains(cheap):
    stack, holds = cheap
    stack.start()
    first, second = hold(stack, "p1"), hold(stack, "p2")
    worker, _server = map(int, wait_for_file(holds / f"{first}.pid", stack).split())
    wait_for_file(holds / f"{second}.pid", stack)
    queued = stack.launch("work_job", {"dagster/partition": "p3"})  # both slots are taken
    assert stack.status(queued) == DagsterRunStatus.QUEUED

    os.kill(worker, signal.SIGKILL)
    stack.wait_for([first], {DagsterRunStatus.FAILURE})
    assert "signal 9" in stack.messages(first) or "exit code -9" in stack.messages(first), stack.messages(first)
    stack.wait_for([queued], {DagsterRunStatus.SUCCESS})  # the freed slot is used
    assert stack.status(second) == DagsterRunStatus.STARTED
    then_runs_flow(stack, holds)


@pytest.mark.slow(reason="a real Dagster daemon started twice; SIGTERM during a run")
def test_sigterm_ends_the_runs_in_flight_before_the_daemon_stops(cheap):
    stack, holds = cheap
    stack.start()
    run = hold(stack, "p1")
    worker, server = map(int, wait_for_file(holds / f"{run}.pid", stack).split())

    assert stack.sigterm() == 0
    assert stack.in_flight() == []
    assert stack.status(run) == DagsterRunStatus.CANCELED
    assert STOP_REASON in stack.messages(run)
    for pid in (worker, server):  # the daemon took its code server and the run worker with it
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    stack.start()
    then_runs_flow(stack, holds)


@pytest.mark.slow(reason="a real Dagster daemon started twice; SIGKILL of all its processes")
def test_after_sigkill_of_the_whole_stack_the_next_start_repairs(cheap):
    stack, holds = cheap
    stack.start()
    orphan = hold(stack, "p1")
    worker, _server = map(int, wait_for_file(holds / f"{orphan}.pid", stack).split())
    assert os.getpgid(worker) == stack.daemon_group()
    other = hold(stack, "p2")
    wait_for_file(holds / f"{other}.pid", stack)
    queued = stack.launch("work_job", {"dagster/partition": "p3"})

    stack.sigkill_everything()
    # what the issue found: two runs STARTED for ever, the queue behind them
    assert {stack.status(orphan), stack.status(other)} == {DagsterRunStatus.STARTED}
    assert stack.status(queued) == DagsterRunStatus.QUEUED
    health = queue_health(stack.instance, now=time.time() + 3600)  # as seen an hour later
    assert health.blocked and len(health.stalled) == 2, health.summary()

    stack.start()
    stack.wait_for([orphan, other], {DagsterRunStatus.FAILURE})
    assert "Run worker gone" in stack.messages(orphan), stack.messages(orphan)
    stack.wait_for([queued], {DagsterRunStatus.SUCCESS})
    then_runs_flow(stack, holds)
    assert not queue_health(stack.instance).blocked


# ------------------------------------------------------------------ the real report job
@pytest.mark.slow(reason="a real Dagster daemon running the Spark report job, SIGKILLed, restarted, retried, backfilled")
def test_real_refresh_run_killed_with_the_stack_is_repaired_and_reports_are_exact(
        postgres, database_url, broker, spark_remote, tmp_path):
    now = datetime.now(timezone.utc)
    hours = [now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=h) for h in (4, 3, 2)]
    keys = [h.strftime("%Y-%m-%d-%H:%M") for h in hours]
    for hour in hours:
        seed_ecommerce(database_url, hour)
        seed_restaurant(database_url, hour)
    stack = make_stack(postgres, tmp_path, ROOT / "workspace.yaml", {
        "DATABASE_URL": database_url, "SPARK_REMOTE": spark_remote, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap})
    try:
        stack.start()
        orphan = stack.launch("refresh_reports_job", {"dagster/partition": keys[0]})
        stack.wait_for([orphan], {DagsterRunStatus.STARTED, *FINISHED}, timeout=180)
        assert stack.status(orphan) == DagsterRunStatus.STARTED, "the run ended before it could be killed"
        stack.sigkill_everything()
        assert stack.status(orphan) == DagsterRunStatus.STARTED

        restarted_at = time.time()
        stack.start()
        stack.wait_for([orphan], {DagsterRunStatus.FAILURE})
        assert "Run worker gone" in stack.messages(orphan)
        # the failed run is re-executed by the daemon (run retries), so its hour is refreshed again
        retry = wait_until(lambda: [r.run_id for r in stack.instance.get_runs(
            RunsFilter(tags={"dagster/parent_run_id": orphan}))], timeout=180, what="a retry of the orphan")
        stack.wait_for(retry, {DagsterRunStatus.SUCCESS}, timeout=240)
        again = stack.launch("refresh_reports_job", {"dagster/partition": keys[0]})
        backfill = stack.backfill("refresh_reports_job", keys)
        stack.wait_for([again, *backfill], {DagsterRunStatus.SUCCESS}, timeout=240)
        start, end = hours[0], hours[-1] + timedelta(hours=1)
        assert actual_ecommerce_minutes(database_url, start, end) == expected_ecommerce_minutes(database_url, start, end)
        assert actual_restaurant_minutes(database_url, start, end) == expected_restaurant_minutes(
            database_url, start, end)
        # no run from before the kill is left in flight (runs the schedules started since may be)
        before_kill = [(r.dagster_run.run_id, r.dagster_run.status) for r in stack.instance.get_run_records(
            RunsFilter(statuses=IN_FLIGHT)) if r.create_timestamp.timestamp() < restarted_at]
        assert before_kill == []
    finally:
        stack.close()



# ------------------------------------------------------------------ stale is visible
def test_reports_current_fails_on_stale_reports_and_passes_when_current(database_url):
    from orchestration.resources import PostgresResource
    from orchestration.checks.current import evaluate
    from tests.support.orchestration import query

    postgres = PostgresResource(database_url=database_url)
    minute = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    with DagsterInstance.ephemeral() as instance:
        first = evaluate(instance, postgres)
        assert all(passed for passed, _d, _m in first.values()), first  # no data: nothing owed
        seed_ecommerce(database_url, minute.replace(minute=0))  # raw rows in this hour, no report yet
        result = evaluate(instance, postgres)
        assert not result["ecommerce"][0] and "STALE" in result["ecommerce"][1], result["ecommerce"]
        assert result["restaurant"][0], result["restaurant"]
        newest_raw = query(database_url, """SELECT date_trunc('minute', max("timestamp")) FROM events""")[0][0]
        columns = query(database_url, """SELECT column_name, data_type FROM information_schema.columns
                                         WHERE table_name = 'report_ecommerce_overview_minute'""")
        values = {name: newest_raw if name == "window_start" else
                  datetime.now(timezone.utc) if kind.startswith("timestamp") else 0 for name, kind in columns}
        query(database_url, f"INSERT INTO report_ecommerce_overview_minute ({', '.join(values)}) "
                            f"VALUES ({', '.join(['%s'] * len(values))})", list(values.values()))
        assert evaluate(instance, postgres)["ecommerce"][0]


def test_the_runs_command_opens_the_configured_instance(tmp_path):
    """`salespulse dagster-runs` finds the instance the way `status` does (DAGSTER_HOME via settings)."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    cli = [sys.executable, "-m", "salespulse.cli", "dagster-runs"]
    missing = subprocess.run(cli, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert missing.returncode == 2 and f"no dagster.yaml in {tmp_path}" in missing.stderr
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # default storage: sqlite under it
    empty = subprocess.run(cli, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.strip().splitlines()[-1] == "0 in flight, 0 queued"

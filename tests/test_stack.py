"""The whole local stack, as `make run` starts it, on free ports.

Starts ``salespulse stack up`` (embedded PostgreSQL, broker, Spark Connect,
producers, consumer, Dagster webserver + daemon, dashboard), waits until events
of both domains are in PostgreSQL and every part reports healthy, then sends
SIGTERM and checks that every process of the stack is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def _stack_processes(marker: str) -> list[int]:
    """PIDs whose environment carries this test's marker (the stack's processes)."""
    pids = []
    needle = f"SALESPULSE_TEST_MARKER={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"stack exited early (rc={proc.returncode}) waiting for {what}:\n"
                                 + log.read_text(errors="replace")[-5000:])
        result = predicate()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}:\n" + log.read_text(errors="replace")[-5000:])


def _count(url: str, table: str) -> int:
    try:
        with psycopg2.connect(url, connect_timeout=2) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            return cur.fetchone()[0]
    except psycopg2.Error:
        return 0


@pytest.mark.slow
def test_stack_up_flows_both_domains_and_stops_cleanly(tmp_path):
    state = Path(f"/var/tmp/salespulse-stack-{uuid.uuid4().hex[:8]}")
    marker = uuid.uuid4().hex
    ports = {name: free_port() for name in (
        "EMBEDDED_PG_PORT", "EMBEDDED_BROKER_PORT", "SPARK_CONNECT_PORT", "DAGSTER_PORT", "DASHBOARD_PORT",
        "PRODUCER_ECOMMERCE_METRICS_PORT", "PRODUCER_RESTAURANT_METRICS_PORT", "CONSUMER_METRICS_PORT")}
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "SPARK_REMOTE", "DAGSTER_HOME")}
    env.update({k: str(v) for k, v in ports.items()})
    admin_url = f"postgresql://salespulse:salespulse@127.0.0.1:{ports['EMBEDDED_PG_PORT']}/salespulse"
    env.update({
        "SALESPULSE_STATE_DIR": str(state),
        "SALESPULSE_TEST_MARKER": marker,
        # the stack derives these from the ports when it starts them; the
        # status command run below needs them spelled out
    })
    log = tmp_path / "stack.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "salespulse.cli", "stack", "up"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: _count(admin_url, "events") > 0, 180, "e-commerce events in PostgreSQL", proc, log)
        _wait_for(lambda: _count(admin_url, "orders") > 0, 90, "restaurant orders in PostgreSQL", proc, log)
        status_env = {**env, "DATABASE_URL": admin_url,
                      "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['EMBEDDED_BROKER_PORT']}",
                      "SPARK_REMOTE": f"sc://127.0.0.1:{ports['SPARK_CONNECT_PORT']}"}

        def all_up():
            run = subprocess.run([sys.executable, "-m", "salespulse.cli", "status"], cwd=REPO, env=status_env,
                                 capture_output=True, text=True)
            return run.returncode == 0 and run.stdout

        status = _wait_for(all_up, 180, "every part healthy in `salespulse status`", proc, log)
        assert "DOWN" not in status
        output = log.read_text(errors="replace")
        assert "what runs where" in output
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        deadline = time.monotonic() + 10
        while _stack_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftovers = _stack_processes(marker)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["rm", "-rf", str(state)], check=False)
    assert rc in (0, 143, -15), log.read_text(errors="replace")[-3000:]
    assert leftovers == [], f"processes left after SIGTERM: {leftovers}"


def test_embedded_services_are_reached_on_the_stack_ports():
    from salespulse.settings import Settings
    from salespulse.stack.runner import embedded_urls, plan

    settings = Settings(embedded_pg_port=41001, embedded_broker_port=41002, spark_connect_port=41003)
    assert embedded_urls(settings, environ={}) == {
        "DATABASE_URL": "postgresql://salespulse:salespulse@127.0.0.1:41001/salespulse",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:41002",
        "SPARK_REMOTE": "sc://127.0.0.1:41003",
    }
    # a URL in the environment means: use that service, start no embedded one
    given = {"DATABASE_URL": "postgresql://u:p@db.example:5432/x", "SPARK_REMOTE": "sc://spark.example:15002"}
    assert embedded_urls(settings, environ=given) == {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:41002"}
    names = [s.name for s in plan(settings, environ=given)]
    assert "postgres" not in names and "spark" not in names and "broker" in names


def test_stack_processes_know_what_the_supervisor_started(monkeypatch):
    from salespulse.settings import Settings
    from salespulse.stack.runner import child_environment, embedded_flags, plan

    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "SPARK_REMOTE", "SALESPULSE_STACK_EMBEDDED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPARK_REMOTE", "sc://spark.example:15002")
    env = child_environment(Settings())
    assert env["DATABASE_URL"].endswith("@127.0.0.1:55432/salespulse") and "KAFKA_BOOTSTRAP_SERVERS" in env
    # inside the stack (the set-up process prints the summary) the URLs are set,
    # yet postgres and the broker are still the stack's own
    assert embedded_flags(env) == {"postgres": True, "broker": True, "spark": False}
    assert [s.name for s in plan(Settings(), environ=env)][:2] == ["broker", "postgres"]

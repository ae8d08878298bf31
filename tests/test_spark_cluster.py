"""Spark as processes: the foreground server the stack supervisor runs, and the
report code unchanged against a standalone cluster (master + worker started
from pyspark's own classes, a Connect server pointed at that master).

Every JVM started here is killed at the end of its test and checked gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from orchestration.reports import refresh_ecommerce_reports, refresh_restaurant_reports, spark_session
from orchestration.reports.common import close_sessions
from salespulse.settings import Settings
from salespulse.stack.spark import SPARK_HOME, SparkConnectServer, _port_open
from tests.conftest import free_port, stop_group
from tests.test_reports import ECOM_TABLES, END, REST_TABLES, T0, Seeder, seed_ecommerce, seed_restaurant

pytestmark = pytest.mark.slow(reason='Spark cluster: its own Spark Connect JVMs (stopped, restarted, killed) and a standalone master + worker')

ROOT = Path(__file__).resolve().parent.parent


def jvm_pids(marker: str) -> list[int]:
    """Pids of java processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "java" in cmd.split(" ", 1)[0] and marker in cmd:
            pids.append(int(entry.name))
    return pids


def wait_gone(marker: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while jvm_pids(marker):
        assert time.monotonic() < deadline, f"JVM still alive: {marker} {jvm_pids(marker)}"
        time.sleep(0.2)


def jvms_under(folder: Path) -> list[int]:
    """Pids of java processes whose working directory is inside ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if exe.endswith("/java") and (cwd == folder or folder in cwd.parents):
            found.append(int(entry.name))
    return found


def wait_jvms_gone_under(folder: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while jvms_under(folder):
        assert time.monotonic() < deadline, f"JVMs still alive under {folder}: {jvms_under(folder)}"
        time.sleep(0.2)


def wait_for_line(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"process exited ({proc.returncode}); log:\n{path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{text!r} not in {path} after {timeout}s:\n{path.read_text()[-3000:]}"
        time.sleep(0.3)


def test_foreground_server_stops_cleanly_on_sigterm(tmp_path):
    """``python -m salespulse.stack.spark`` (what the local stack supervises): ready line, serves
    queries, SIGTERM -> exit 0 and no JVM left behind."""
    port = free_port()
    log = tmp_path / "fg.log"
    env = dict(os.environ, SPARK_CONNECT_PORT=str(port), SPARK_MASTER="local[1]",
               SALESPULSE_STATE_DIR=str(tmp_path / "state"))
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "salespulse.stack.spark"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    marker = f"spark.connect.grpc.binding.port={port}"
    try:
        wait_for_line(log, f"spark connect ready on sc://127.0.0.1:{port}", proc, timeout=180)
        assert len(jvm_pids(marker)) == 1
        spark = spark_session(f"sc://127.0.0.1:{port}")
        assert spark.range(10).selectExpr("sum(id) AS s").collect()[0]["s"] == 45
        close_sessions()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        wait_gone(marker, 10)
        assert not _port_open("127.0.0.1", port)
    finally:
        close_sessions()
        stop_group(proc, grace=20)
        for pid in jvm_pids(marker):
            os.kill(pid, signal.SIGKILL)


def test_cached_session_reconnects_after_server_restart(tmp_path):
    """The stack supervisor may restart the server: ``spark_session()`` notices
    the dead cached session and hands out a new one on the new server."""
    port = free_port()
    first = SparkConnectServer(port, master="local[1]", log_dir=tmp_path / "one")
    second = SparkConnectServer(port, master="local[1]", log_dir=tmp_path / "two")
    try:
        first.start()
        old = spark_session(first.remote)
        assert old.range(3).count() == 3
        first.stop()
        second.start()
        new = spark_session(second.remote)
        assert new is not old
        assert new.range(4).count() == 4
        assert spark_session(second.remote) is new  # cached again
    finally:
        close_sessions()
        first.stop()
        second.stop()
    wait_jvms_gone_under(tmp_path, 30)


def snapshot(url: str) -> dict[str, list[tuple]]:
    out = {}
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for table in ECOM_TABLES + REST_TABLES:
            cur.execute(f"SELECT * FROM {table} ORDER BY 1, 2")
            rows = cur.fetchall()
            if table.endswith("overview_minute"):  # drop computed_at
                rows = [r[:-1] for r in rows]
            out[table] = rows
    return out


def test_reports_on_standalone_cluster_equal_local_run(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    settings = Settings(database_url=database_url)
    s = Seeder(database_url)
    seed_ecommerce(s)
    seed_restaurant(s)

    # 1) local[2] run on its own Connect server, stopped before the cluster starts (few JVMs at once)
    local = SparkConnectServer(free_port(), master="local[2]", log_dir=tmp_path / "local")
    with local:
        spark = spark_session(local.remote)
        refresh_ecommerce_reports(spark, settings, T0, END)
        refresh_restaurant_reports(spark, settings, T0, END)
        close_sessions()
    wait_gone(f"spark.connect.grpc.binding.port={local.port}")
    assert not jvms_under(tmp_path)
    expected = snapshot(database_url)
    assert all(expected[t] for t in ECOM_TABLES + REST_TABLES)
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:  # make the cluster rebuild everything
        for table in ECOM_TABLES + REST_TABLES:
            cur.execute(f"DELETE FROM {table}")

    # 2) standalone master + worker from pyspark's classes, Connect server on that master
    env = dict(os.environ, SPARK_HOME=str(SPARK_HOME), JAVA_HOME=settings.java_home, SPARK_LOCAL_IP="127.0.0.1",
               SPARK_DAEMON_MEMORY="256m", SPARK_NO_DAEMONIZE="1")
    env.pop("SPARK_REMOTE", None)
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    master_port = free_port()
    master_url = f"spark://127.0.0.1:{master_port}"
    work_dir = tmp_path / "worker"
    work_dir.mkdir()
    procs: list[subprocess.Popen] = []
    server = SparkConnectServer(free_port(), master=master_url, log_dir=tmp_path / "cluster",
                                driver_memory="512m", extra_conf={"spark.executor.memory": "512m"})
    try:
        master_log = tmp_path / "master.log"
        with open(master_log, "wb") as out:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                 "--port", str(master_port), "--webui-port", "0"],
                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        wait_for_line(master_log, "I have been elected leader", procs[0])
        worker_log = tmp_path / "worker.log"
        with open(worker_log, "wb") as out:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
                 "--cores", "1", "--memory", "1g", "--webui-port", "0", "--work-dir", str(work_dir)],
                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        wait_for_line(worker_log, "Successfully registered with master", procs[1])

        server.start(timeout=240)  # its readiness query needs an executor on the worker
        spark = spark_session(server.remote)
        assert spark.conf.get("spark.master") == master_url
        refresh_ecommerce_reports(spark, settings, T0, END)
        refresh_restaurant_reports(spark, settings, T0, END)
        assert snapshot(database_url) == expected
        # the work really ran in an executor launched by the worker
        apps = list(work_dir.glob("app-*"))
        assert apps, "no application directory on the worker"
        assert "Registering worker 127.0.0.1" in master_log.read_text()
    finally:
        close_sessions()
        server.stop()
        for proc in reversed(procs):
            stop_group(proc, grace=20)
    # master, worker, executors (launched in the worker's work dir) and the driver: all gone
    wait_jvms_gone_under(tmp_path, 30)


@pytest.fixture(autouse=True)
def _no_cached_sessions():
    yield
    close_sessions()


STUBBORN_SERVER = """
import sys
import salespulse.stack.spark as spark

spark.STOP_GRACE_S = 1.0
spark.SparkConnectServer.prepare = lambda self: None
spark.SparkConnectServer.env = lambda self: None
# a "JVM" that ignores SIGTERM, as one whose shutdown hooks hang would
spark.SparkConnectServer.command = lambda self: [
    "bash", "-c", f"echo $$ > {sys.argv[1]}/child.pid; trap '' TERM; exec sleep 300"]
spark.SparkConnectServer.wait_ready = lambda self, timeout: None
sys.exit(spark.run_foreground(port=1, master="local[1]", log_dir=sys.argv[1]))
"""


def test_a_server_that_ignores_sigterm_is_killed_after_the_stop_grace(tmp_path):
    """Unit test (a shell stands in for the JVM): the foreground runner's stop is bounded."""
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN_SERVER)
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while b"spark connect ready" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # without the bound it waits for the child forever
        assert b"did not stop within 1s of SIGTERM: killing it" in log.read_bytes()
        child = int((tmp_path / "child.pid").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)  # the stand-in was killed, not left behind
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

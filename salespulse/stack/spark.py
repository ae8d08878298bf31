"""The long-running Spark Connect server (pyspark 4.3.0's own jars, Debian's Java 17).

A cold local Spark session costs 3-8 s and ~600 MB per run, so the report code
never starts its own JVM: it talks to one long-running Spark Connect server
through ``SPARK_REMOTE`` (``sc://127.0.0.1:15002`` locally). This module starts
that server:

* :class:`SparkConnectServer` — ``start()``/``stop()`` for tests and benchmarks:
  waits until the gRPC port answers *and* ``spark.range(1).count()`` works.
* ``python -m salespulse.stack.spark`` — the same server in the FOREGROUND for
  the stack supervisor (supervisord) on ``settings.spark_connect_port`` with master
  ``settings.spark_master``; SIGTERM/SIGINT stop the JVM cleanly (its shutdown
  hooks stop the SparkContext); the wrapper waits for it and kills it after a
  grace period, so no JVM is ever orphaned.

The server is launched with ``spark-submit --class
org.apache.spark.sql.connect.service.SparkConnectServer`` (what
``sbin/start-connect-server.sh`` does, minus the daemonising). ``spark-class``
``exec``s the JVM, so the child's pid *is* the JVM's pid; it also runs in its own
session (process group) and the whole group is signalled on stop.

The PostgreSQL JDBC driver comes from Debian's ``libpostgresql-jdbc-java``
(``settings.jdbc_jar``), since ``spark.jars.packages`` cannot download here.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyspark

from salespulse.parent_death import die_with_parent
from salespulse.settings import get_settings

log = logging.getLogger(__name__)

SPARK_HOME = Path(pyspark.__file__).resolve().parent
CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"

# Only warnings from Spark itself, but keep the lines saying the server is up.
_LOG4J2 = """\
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yyyy-MM-dd'T'HH:mm:ss.SSSZ} %p %c{1}: %m%n%ex
logger.connect.name = org.apache.spark.sql.connect.service
logger.connect.level = info
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
"""


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


#: The server is idle between the minute's runs: a G1 cycle every minute when idle,
#: and heap kept at most 30 % free, give the freed heap back to the OS instead of
#: letting the resident size climb to the heap's maximum and stay there.
JVM_MEMORY_RETURN = " -XX:+UseG1GC -XX:G1PeriodicGCInterval=60000 -XX:MinHeapFreeRatio=10 -XX:MaxHeapFreeRatio=30"


class SparkConnectServer:
    """A Spark Connect server JVM on ``127.0.0.1:port``.

    ``master`` is ``local[N]`` (default) or a standalone master URL
    (``spark://host:port``). ``log_dir`` receives ``spark-connect.log`` (stdout +
    stderr of the JVM), the log4j2 config, the warehouse and scratch folders.
    """

    def __init__(
        self,
        port: int,
        master: str = "local[2]",
        log_dir: Path | str | None = None,
        *,
        driver_memory: str = "1g",
        java_home: str | None = None,
        jdbc_jar: str | None = None,
        extra_conf: dict[str, str] | None = None,
    ):
        settings = get_settings()
        self.port = port
        self.master = master
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="spark-connect-"))
        self.driver_memory = driver_memory
        self.java_home = java_home or settings.java_home
        self.jdbc_jar = jdbc_jar or settings.jdbc_jar
        self.extra_conf = dict(extra_conf or {})
        self.idle_session_minutes = settings.spark_connect_idle_session_minutes
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen | None = None

    # -- command ------------------------------------------------------------
    @property
    def remote(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "spark-connect.log"

    def conf(self) -> dict[str, str]:
        local_dir = self.log_dir / "local"
        conf = {
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.jars": self.jdbc_jar,
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "4",
            "spark.ui.enabled": "false",
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.catalogImplementation": "in-memory",
            "spark.sql.warehouse.dir": str(self.log_dir / "warehouse"),
            "spark.local.dir": str(local_dir),
            "spark.sql.adaptive.enabled": "true",
            "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{self.log_dir / 'log4j2.properties'}"
                                             " -Duser.timezone=UTC" + JVM_MEMORY_RETURN,
            "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
            # a client that exits without releasing its session (SIGKILL) leaves it on the
            # server until this idle timeout; the clients release theirs on exit
            # (orchestration/reports/common.py: SPARK_CONNECT_RELEASE_SESSION_ON_EXIT)
            "spark.connect.session.manager.defaultSessionTimeout": f"{self.idle_session_minutes}m",
            # the driver's periodic GC frees the shuffle and broadcast files of finished queries
            "spark.cleaner.periodicGC.interval": "5min",
        }
        if self.master.startswith("spark://"):
            # standalone: keep executors small (2 cores shared by everything here)
            conf.update({"spark.executor.memory": "1g", "spark.cores.max": "1", "spark.executor.cores": "1"})
        conf.update(self.extra_conf)
        return conf

    def command(self) -> list[str]:
        cmd = [str(SPARK_HOME / "bin" / "spark-submit"), "--class", CONNECT_SERVER_CLASS,
               "--name", "SalesPulse Spark Connect server", "--master", self.master,
               "--driver-memory", self.driver_memory]
        for key, value in self.conf().items():
            cmd += ["--conf", f"{key}={value}"]
        return cmd

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "SPARK_HOME": str(SPARK_HOME),
            "JAVA_HOME": self.java_home,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_NO_DAEMONIZE": "1",
            "SPARK_LOG_DIR": str(self.log_dir),
            "SPARK_CONNECT_MODE": "0",
            "TZ": "UTC",
        })
        env.pop("SPARK_REMOTE", None)  # the server itself is classic Spark
        env.pop("SPARK_CONNECT_MODE_ENABLED", None)  # set by pyspark in a process that made a Connect session
        env.pop("PYSPARK_SUBMIT_ARGS", None)
        return env

    def prepare(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "local").mkdir(exist_ok=True)
        (self.log_dir / "log4j2.properties").write_text(_LOG4J2)

    # -- lifecycle (tests) ----------------------------------------------------
    def start(self, timeout: float = 120.0) -> "SparkConnectServer":
        if _port_open("127.0.0.1", self.port):
            raise RuntimeError(f"port {self.port} is already in use")
        self.prepare()
        t0 = time.monotonic()
        out = open(self.log_file, "ab")
        self._proc = subprocess.Popen(self.command(), env=self.env(), cwd=self.log_dir,
                                      stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True, preexec_fn=die_with_parent)
        out.close()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        log.info("spark connect server ready on %s in %.1fs", self.remote, self.startup_seconds)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the gRPC port answers, then until a trivial query runs."""
        deadline = time.monotonic() + timeout
        while not _port_open("127.0.0.1", self.port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"spark connect not listening on {self.port} after {timeout}s; see {self.log_file}")
            time.sleep(0.2)
        from pyspark.sql import SparkSession

        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                spark = SparkSession.builder.remote(self.remote).create()
                try:
                    if spark.range(1).count() == 1:
                        return
                finally:
                    spark.stop()  # closes the client session only, not the server
            except Exception as exc:  # noqa: BLE001 - server still starting
                last = exc
                time.sleep(0.5)
        raise TimeoutError(f"spark connect on {self.port} does not answer queries: {last}; see {self.log_file}")

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"spark connect server exited with {self._proc.returncode}; see {self.log_file}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the JVM's process group, wait ``grace`` s, then SIGKILL it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _terminate_group(proc, grace)

    def __enter__(self) -> "SparkConnectServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _terminate_group(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # the JVM is gone (or stuck): make sure nothing of the group survives
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


#: after SIGTERM, how long the JVM may take to stop before it is killed when run
#: on its own (under the local stack the supervisor kills the group sooner: its
#: ``stop_wait`` for Spark in salespulse/stack/runner.py)
STOP_GRACE_S = 25.0


def run_foreground(port: int | None = None, master: str | None = None, log_dir: Path | None = None) -> int:
    """Run the server for the supervisor; return its exit code (0 on a clean SIGTERM stop)."""
    settings = get_settings()
    port = port or settings.spark_connect_port
    server = SparkConnectServer(port, master or settings.spark_master,
                                log_dir or settings.salespulse_state_dir / "spark")
    server.prepare()
    t0 = time.monotonic()
    # JVM output goes straight to our stdout/stderr (the supervisor's log)
    proc = subprocess.Popen(server.command(), env=server.env(), cwd=server.log_dir,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
    stopping = False
    stop_requested_at = 0.0

    def _stop(signum, frame):
        nonlocal stopping, stop_requested_at
        if not stopping:
            stop_requested_at = time.monotonic()
        stopping = True
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    failed = threading.Event()

    def _announce_ready() -> None:
        try:
            server.wait_ready(timeout=180)
            print(f"spark connect ready on {server.remote} (master {server.master}) "
                  f"in {time.monotonic() - t0:.1f}s", flush=True)
        except Exception as exc:  # noqa: BLE001
            if not stopping:
                print(f"spark connect failed to start: {exc}", file=sys.stderr, flush=True)
                failed.set()
                _terminate_group(proc, 10)

    # The readiness probe blocks in gRPC calls; in a thread, so that this main
    # thread runs the SIGTERM handler at once (a Python signal handler waits
    # for the main thread's blocking C call to return).
    server._proc = proc
    threading.Thread(target=_announce_ready, daemon=True).start()
    code = None
    try:
        while code is None:
            try:
                code = proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                # a JVM whose shutdown hooks overrun (a loaded machine, a stuck
                # gRPC stream) is killed: a stop is bounded, never open-ended
                if stopping and time.monotonic() - stop_requested_at > STOP_GRACE_S:
                    print(f"spark connect did not stop within {STOP_GRACE_S:.0f}s of SIGTERM: killing it",
                          file=sys.stderr, flush=True)
                    break
    finally:
        _terminate_group(proc, 5 if stopping else 20)
    if failed.is_set():
        return 1
    # a JVM stopped by SIGTERM exits 143 (128 + 15): that is a clean stop
    return 0 if stopping else code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Spark Connect server in the foreground.")
    parser.add_argument("--port", type=int, default=None, help="default: settings.spark_connect_port")
    parser.add_argument("--master", default=None, help="default: settings.spark_master")
    parser.add_argument("--log-dir", type=Path, default=None, help="scratch/warehouse dir")
    args = parser.parse_args(argv)
    return run_foreground(args.port, args.master, args.log_dir)


if __name__ == "__main__":
    code = main()
    # Leave without interpreter finalisation: a readiness probe still inside a
    # gRPC call (stop during start-up) can hang it for minutes.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

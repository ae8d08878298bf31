"""A whole local stack (``salespulse stack up``) on free ports, for the stack tests.

Every process of the stack carries ``SALESPULSE_TEST_MARKER`` in its
environment, so what is left after a stop can be found in ``/proc`` whatever
its name or parent.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg2

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
PORT_VARIABLES = ("EMBEDDED_PG_PORT", "EMBEDDED_BROKER_PORT", "SPARK_CONNECT_PORT", "DAGSTER_PORT", "DASHBOARD_PORT",
                  "PRODUCER_ECOMMERCE_METRICS_PORT", "PRODUCER_RESTAURANT_METRICS_PORT", "CONSUMER_METRICS_PORT",
                  "BROKER_METRICS_PORT")


def marked_processes(marker: str) -> list[int]:
    """PIDs whose environment carries ``marker`` (zombies have no environment left)."""
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


def count_rows(url: str, sql: str, params=()) -> int:
    try:
        with psycopg2.connect(url, connect_timeout=2) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]
    except psycopg2.Error:
        return 0


class LocalStack:
    """``salespulse stack up`` in a subprocess; ``start``/``stop`` as often as needed (same state, same ports)."""

    def __init__(self, log: Path):
        self.state = Path(f"/var/tmp/salespulse-stack-{uuid.uuid4().hex[:8]}")
        self.marker = uuid.uuid4().hex
        self.ports = {name: free_port() for name in PORT_VARIABLES}
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "SPARK_REMOTE", "DAGSTER_HOME")}
        env.update({k: str(v) for k, v in self.ports.items()})
        env.update({"SALESPULSE_STATE_DIR": str(self.state), "SALESPULSE_TEST_MARKER": self.marker})
        self.env = env
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def admin_url(self) -> str:
        return f"postgresql://salespulse:salespulse@127.0.0.1:{self.ports['EMBEDDED_PG_PORT']}/salespulse"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['EMBEDDED_BROKER_PORT']}"

    @property
    def client_env(self) -> dict[str, str]:
        """The environment of a command run next to the stack (``salespulse status``)."""
        return {**self.env, "DATABASE_URL": self.admin_url, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                "SPARK_REMOTE": f"sc://127.0.0.1:{self.ports['SPARK_CONNECT_PORT']}"}

    @property
    def ready_marker(self) -> Path:
        return self.state / "stack.ready"

    @property
    def supervisor_log(self) -> Path:
        return self.state / "supervisor" / "supervisord.log"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "salespulse.cli", "stack", "up"], cwd=REPO,
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def states(self) -> dict[str, tuple[str, str]]:
        from salespulse.stack.supervise import process_states

        return {p.name: (p.state, p.detail) for p in process_states(self.state) or []}

    def rpc(self):
        from salespulse.stack.supervise import rpc

        return rpc(self.state)

    def status(self) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "salespulse.cli", "status"], cwd=REPO, env=self.client_env,
                              capture_output=True, text=True)

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 1.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"stack exited early (rc={self.proc.returncode}) waiting for {what}:\n"
                                     + self.tail())
            result = predicate()
            if result:
                return result
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}:\n" + self.tail())

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> tuple[int, list[int]]:
        """SIGTERM the stack; return its exit code and the marked processes still alive 10 s after it exited."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait()
        deadline = time.monotonic() + 10
        while marked_processes(self.marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftovers = marked_processes(self.marker)
        self.kill_leftovers()
        return rc, leftovers

    def kill_leftovers(self) -> None:
        for pid in marked_processes(self.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop_sequence(self) -> list[str]:
        """Process names in the order supervisord reported them stopped, for the last SIGTERM."""
        text = self.supervisor_log.read_text(errors="replace")
        last = text.rfind("received SIGTERM")
        assert last >= 0, "supervisord never received SIGTERM:\n" + text[-3000:]
        return re.findall(r" stopped: (\S+) \(", text[last:])

    def remove_state(self) -> None:
        subprocess.run(["rm", "-rf", str(self.state)], check=False)

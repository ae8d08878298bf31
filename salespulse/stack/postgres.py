"""Embedded PostgreSQL 15 (Debian's binaries) in a state folder.

As root, PostgreSQL must run as the ``postgres`` user, and its folders must be
reachable by that user (a checkout under a mode-700 home is not), so the
cluster lives under the state dir (default ``/var/tmp/salespulse``), never in
the checkout. ``run_foreground`` is what the stack runner supervises; tests use
:class:`EmbeddedPostgres` ``start()``/``stop()`` directly.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2

from salespulse.private_dir import let_group_traverse, private_dir
from salespulse.settings import LOCAL_ADMIN_PASSWORD, LOCAL_ADMIN_USER

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
ADMIN_USER, ADMIN_PASSWORD = LOCAL_ADMIN_USER, LOCAL_ADMIN_PASSWORD


class EmbeddedPostgres:
    def __init__(self, state_dir: Path, port: int, database: str = "salespulse", *, durable: bool = True):
        """``durable=False`` runs a throwaway cluster without fsync, synchronous commit
        or full-page writes (the session-wide test cluster: nothing crashes it, and a
        crash would only lose a test run). The stack's own cluster is always durable."""
        self.durable = durable
        self.root = Path(state_dir) / "postgres"
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log_file = self.root / "postgres.log"
        self.port = port
        self.database = database
        self._proc: subprocess.Popen | None = None

    @property
    def admin_url(self) -> str:
        return self.admin_url_of(self.database)

    def admin_url_of(self, database: str) -> str:
        """The admin role's URL for ``database`` on this cluster."""
        return f"postgresql://{ADMIN_USER}:{ADMIN_PASSWORD}@127.0.0.1:{self.port}/{database}"

    # -- set-up -------------------------------------------------------------
    def _as_postgres(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--"]

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            shutil.chown(path, pw.pw_uid, pw.pw_gid)

    def init(self) -> None:
        """Create the cluster if missing (idempotent); the state folder private either way."""
        private_dir(self.root.parent)
        let_group_traverse(self.root.parent)  # as root: the postgres user reaches its cluster (0710)
        if (self.data_dir / "PG_VERSION").exists():
            return
        for path in (self.root, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
        for path in (self.root, self.socket_dir):
            self._chown(path)
        subprocess.run(
            [*self._as_postgres(), str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", PG_USER,
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
            check=True, stdout=subprocess.DEVNULL,
        )

    def command(self) -> list[str]:
        return [
            *self._as_postgres(), str(PG_BIN / "postgres"), "-D", str(self.data_dir),
            "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "max_connections=200",
            *(["-c", "fsync=on", "-c", "synchronous_commit=on"] if self.durable else
              ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]),
        ]

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(host=str(self.socket_dir), port=self.port, user=PG_USER, dbname="postgres").close()
                return
            except psycopg2.OperationalError:
                if self._proc is not None and self._proc.poll() is not None:
                    raise RuntimeError(f"postgres exited; see {self.log_file}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def bootstrap(self) -> None:
        """Create the admin role and the application database (idempotent)."""
        conn = psycopg2.connect(host=str(self.socket_dir), port=self.port, user=PG_USER, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ADMIN_USER,))
            if not cur.fetchone():
                cur.execute(f"CREATE ROLE {ADMIN_USER} LOGIN SUPERUSER PASSWORD %s", (ADMIN_PASSWORD,))
            for db in (self.database, "dagster"):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if not cur.fetchone():
                    cur.execute(f'CREATE DATABASE "{db}" OWNER {ADMIN_USER}')
        conn.close()

    # -- background use (tests) ---------------------------------------------
    def start(self) -> "EmbeddedPostgres":
        self.init()
        log = open(self.log_file, "ab")
        self._proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready()
        self.bootstrap()
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT): disconnect clients, checkpoint, exit."""
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def client_count(self) -> int:
        """Client connections other than this check's own (0 if unreachable)."""
        try:
            conn = psycopg2.connect(host=str(self.socket_dir), port=self.port, user=PG_USER, dbname="postgres")
        except psycopg2.OperationalError:
            return 0
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
                return cur.fetchone()[0]
        finally:
            conn.close()

    def create_database(self, name: str, template: str | None = None) -> str:
        """A fresh database owned by the admin role (a copy of ``template`` if given;
        nobody may be connected to it); returns its admin URL."""
        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        conn.close()
        return self.admin_url_of(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` (if present), disconnecting its sessions."""
        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def run_foreground(state_dir: Path, port: int, drain_seconds: float = 10.0) -> int:
    """Run the cluster in the foreground for the supervisor.

    On SIGTERM/SIGINT it first waits (up to ``drain_seconds``) for clients to
    disconnect (the stack supervisor stops its own clients before PostgreSQL,
    so this only covers other sessions, e.g. a user's psql); then it uses
    PostgreSQL's *fast* shutdown (SIGINT). PostgreSQL's own SIGTERM (smart
    shutdown) would wait for idle pooled connections forever.
    """
    pg = EmbeddedPostgres(state_dir, port)
    pg.init()
    # Same process group as this wrapper: if the supervisor has to SIGKILL the
    # group, PostgreSQL goes with it (no orphan). Its SIGTERM is a smart
    # shutdown, which completes by itself once the clients have gone.
    proc = subprocess.Popen(pg.command())
    pg._proc = proc
    stopping = threading.Event()

    def _drain_then_stop() -> None:
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline and proc.poll() is None and pg.client_count() > 0:
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)

    def _on_signal(signum, frame):
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=_drain_then_stop, daemon=True).start()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    pg.wait_ready()
    pg.bootstrap()
    print(f"postgres ready on 127.0.0.1:{port} (data {pg.data_dir})", flush=True)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(run_foreground(Path(sys.argv[1]), int(sys.argv[2]), *map(float, sys.argv[3:4])))

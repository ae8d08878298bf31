"""Read-only database access for the dashboard: a lazily created thread-safe pool.

The pool is created on first use (so a gunicorn worker builds its own after the
fork) with the read-only ``salespulse_dashboard`` role. Every session is
autocommit, read-only and has a statement timeout, so a slow query can never
pile up. Any connection-level failure is turned into :class:`DatabaseUnavailable`
(rendered as a 503 JSON error); a broken pooled connection is discarded and the
query retried once on a fresh one (covers a database restart).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

import psycopg2
import psycopg2.extras
import psycopg2.pool

log = logging.getLogger(__name__)

#: Session options for every dashboard connection.
SESSION_OPTIONS = "-c statement_timeout=5000 -c default_transaction_read_only=on -c application_name=salespulse-dashboard"


class LazyThreadedPool(psycopg2.pool.ThreadedConnectionPool):
    """A ThreadedConnectionPool that opens connections on demand but keeps up to
    ``maxconn`` of them open for reuse (the stock pool closes every returned
    connection beyond ``minconn``, and opens ``minconn`` eagerly)."""

    def __init__(self, maxconn: int, *args, **kwargs):
        super().__init__(0, maxconn, *args, **kwargs)
        self.minconn = maxconn


class DatabaseUnavailable(Exception):
    """The database cannot be reached (or timed out); maps to HTTP 503."""


class Database:
    def __init__(self, url: str, max_connections: int = 8, connect_timeout: int = 3):
        self.url = url
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._lock = threading.Lock()
        # ThreadedConnectionPool raises when exhausted; the semaphore makes callers wait instead.
        self._slots = threading.BoundedSemaphore(max_connections)

    # -- pool ---------------------------------------------------------------
    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = LazyThreadedPool(
                        self.max_connections, self.url,
                        connect_timeout=self.connect_timeout, options=SESSION_OPTIONS,
                    )
        return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.closeall()
                self._pool = None

    # -- queries ------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | dict | None = None) -> list[dict]:
        """Run one read query with bound parameters; rows as dicts."""
        if not self._slots.acquire(timeout=10):
            raise DatabaseUnavailable("database connection pool busy")
        try:
            for attempt in (1, 2):
                try:
                    pool = self._get_pool()
                    conn = pool.getconn()
                except (psycopg2.OperationalError, psycopg2.pool.PoolError) as exc:
                    log.warning("dashboard database connect failed: %s", exc)
                    raise DatabaseUnavailable("database unavailable") from exc
                broken = False
                try:
                    if conn.closed:
                        broken = True
                        raise psycopg2.InterfaceError("connection already closed")
                    conn.autocommit = True
                    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                        cur.execute(sql, params)
                        return [dict(r) for r in cur.fetchall()]
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    broken = True
                    if isinstance(exc, psycopg2.extensions.QueryCanceledError):
                        raise DatabaseUnavailable("database query timed out") from exc
                    # the server may have restarted: its other idle connections are dead too
                    self._drop_idle(pool)
                    if attempt == 2:
                        log.warning("dashboard query failed: %s", exc)
                        raise DatabaseUnavailable("database unavailable") from exc
                finally:
                    try:
                        pool.putconn(conn, close=broken or conn.closed)
                    except Exception:  # pool closed meanwhile
                        pass
            raise AssertionError("unreachable")
        finally:
            self._slots.release()

    @staticmethod
    def _drop_idle(pool) -> None:
        with pool._lock:  # ThreadedConnectionPool's own lock; _pool is its idle list
            idle, pool._pool = pool._pool, []
        for conn in idle:
            try:
                conn.close()
            except Exception:
                pass

    def ping(self) -> None:
        self.query("SELECT 1 AS ok")

"""Read-only database access for the dashboard: one pooled connection per request.

The Flask tutorial's pattern: a request's first query takes a connection from
the process's pool and keeps it in ``g``; the app context's teardown gives it
back (:meth:`Database.init_app` registers that). The pool is psycopg2's own
``ThreadedConnectionPool``, used through its public API only; it is created on
first use (so a gunicorn worker builds its own after the fork) with the
read-only ``salespulse_dashboard`` role. Every session is autocommit,
read-only and has a statement timeout, so a slow query can never pile up.

Any connection-level failure is turned into :class:`DatabaseUnavailable`
(rendered as a 503 JSON error). A connection that breaks is discarded and the
query retried on the next one (covers a database restart, after which every
idle connection of the pool is dead).
"""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any, Sequence

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool
from flask import Flask, g, has_app_context

log = logging.getLogger(__name__)

#: Session options for every dashboard connection.
SESSION_OPTIONS = "-c statement_timeout=5000 -c default_transaction_read_only=on -c application_name=salespulse-dashboard"

#: The attribute of ``g`` that holds a request's connection.
_CONNECTION = "dashboard_db_connection"


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
    """The dashboard's database: a pool built on first use, one connection per request."""

    def __init__(self, url: str, max_connections: int = 8, connect_timeout: int = 3):
        self.url = url
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._lock = threading.Lock()
        # ThreadedConnectionPool raises when exhausted; the semaphore makes callers wait instead.
        self._slots = threading.BoundedSemaphore(max_connections)

    def init_app(self, app: Flask) -> None:
        """Give each request's connection back when its app context ends."""
        app.teardown_appcontext(self._end_request)

    # -- queries ------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | dict | None = None) -> list[dict]:
        """Run one read query with bound parameters on the request's connection; rows as dicts.

        Outside an app context (a script, a shell) the query borrows a
        connection for itself and gives it back at once.
        """
        if has_app_context():
            return self._query(g, sql, params)
        holder = SimpleNamespace()
        try:
            return self._query(holder, sql, params)
        finally:
            self._give_back(holder)

    def ping(self) -> None:
        self.query("SELECT 1 AS ok")

    def _query(self, holder, sql: str, params) -> list[dict]:
        # After a database restart every pooled connection is dead and fails at
        # once: one try per pooled connection, then one on a freshly opened one
        # (a connect failure ends the loop earlier, as DatabaseUnavailable).
        for _ in range(self.max_connections + 1):
            conn = self._connection(holder)
            try:
                conn.autocommit = True
                with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    cur.execute(sql, params)
                    return [dict(r) for r in cur.fetchall()]
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                self._give_back(holder, broken=True)
                if isinstance(exc, psycopg2.extensions.QueryCanceledError):
                    raise DatabaseUnavailable("database query timed out") from exc
                failure = exc
        log.warning("dashboard query failed: %s", failure)
        raise DatabaseUnavailable("database unavailable") from failure

    # -- one connection per holder: flask.g for a request -------------------
    def _connection(self, holder) -> psycopg2.extensions.connection:
        conn = getattr(holder, _CONNECTION, None)
        if conn is None:
            conn = self._borrow()
            setattr(holder, _CONNECTION, conn)
        return conn

    def _give_back(self, holder, broken: bool = False) -> None:
        conn = getattr(holder, _CONNECTION, None)
        if conn is None:
            return
        delattr(holder, _CONNECTION)
        try:
            self._put_back(conn, broken)
        finally:
            self._slots.release()

    def _end_request(self, exc: BaseException | None = None) -> None:
        self._give_back(g)

    # -- pool -----------------------------------------------------------------
    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = LazyThreadedPool(
                        self.max_connections, self.url,
                        connect_timeout=self.connect_timeout, options=SESSION_OPTIONS,
                    )
        return self._pool

    def _borrow(self) -> psycopg2.extensions.connection:
        """A connection from the pool; waits up to 10 s for a free slot."""
        if not self._slots.acquire(timeout=10):
            raise DatabaseUnavailable("database connection pool busy")
        try:
            return self._get_pool().getconn()
        except (psycopg2.OperationalError, psycopg2.pool.PoolError) as exc:
            self._slots.release()
            log.warning("dashboard database connect failed: %s", exc)
            raise DatabaseUnavailable("database unavailable") from exc

    def _put_back(self, conn: psycopg2.extensions.connection, broken: bool) -> None:
        pool = self._pool
        if pool is not None:
            try:
                pool.putconn(conn, close=broken or bool(conn.closed))
                return
            except psycopg2.pool.PoolError:
                pass  # the pool was closed (and maybe replaced) meanwhile
        conn.close()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.closeall()

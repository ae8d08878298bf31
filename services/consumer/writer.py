"""The batch writer: parse raw messages, write one batch in ONE transaction.

The transaction and its retry decisions live here; the parts are in
``messages.py`` (parse), ``rows.py`` (COPY rows, dead-letter rows), ``sql.py``
(statements) and ``attempt.py`` (the steps below). Usable without Kafka (unit tests, replay tools): give it :class:`RawMessage`
objects (or anything with ``topic/partition/offset/key/value/headers``).

The rule it keeps: every message of a batch ends in exactly one place, and
:meth:`BatchWriter.write` raises nothing but :class:`DatabaseUnavailable`
(nothing committed: retry the whole batch later). Per batch, in one transaction:

1. **Ledger first.** Lock the batch's partitions (transaction-level advisory
   locks, in a fixed order) and read which of its offsets the ledger already
   covers (its ranges and each stream's trimmed range,
   sql/130_compact_ledger.sql): those are re-deliveries of a committed batch
   (a crash between the database commit and the offset commit) and are
   *skipped*. A second consumer briefly owning the same partition waits for
   the lock and then sees the first one's ranges; the ledger's primary key
   (stream, first offset) is the backstop (a second range from the same
   offset fails the transaction, and the retry skips), and the contiguity
   checks find any other overlap.
2. **Valid rows** are COPYed into per-connection temp tables and moved with
   ``INSERT ... ON CONFLICT DO NOTHING RETURNING``; products, transactions and
   order items are written only for the events/orders actually inserted, in
   the same statement. The first copy of an id in a batch wins. An id already
   stored is a duplicate if its content hash (a hash of the normalised row) is
   the same, otherwise a dead letter: "conflicting re-send ...".
3. **Dead letters** keep the raw key, value and headers in full; text columns
   never hold NUL (escaped), so storing one cannot fail because of content.
4. **The ledger row** per (topic, partition) range: a compact row of
   ``ingest_ledger_ranges`` (stream id, offsets, stored, duplicates,
   dead-lettered; messages is their sum).

Messages the database (or the row building) unexpectedly rejects are isolated:
the batch is re-run with the row insert split in halves under savepoints
until the culprits are single messages, which become dead letters with the
reason; the rest is stored.
"""


from __future__ import annotations

import logging
import time
from typing import Iterable, Mapping, Sequence

import psycopg2
import psycopg2.extensions

from salespulse.contracts import TimestampWindow

from .attempt import UNAVAILABLE, Attempt, CountingCursor, NeedsIsolation, describe, unavailable
from .messages import (  # noqa: F401 - the public names, importable from here as before
    CONFLICT,
    DEFAULT_GROUP,
    ParsedMessage,
    RawMessage,
    parse,
    reason,
)
from .results import DatabaseUnavailable, TopicCounts, WriteResult  # noqa: F401
from .sql import TEMP_TABLES

log = logging.getLogger(__name__)


class BatchWriter:
    """Writes parsed batches into PostgreSQL, one transaction per batch, recording
    each in the ingest ledger under consumer group ``group``."""

    def __init__(self, url: str, *, group: str = DEFAULT_GROUP, window: TimestampWindow | None = None,
                 application_name: str = "salespulse-consumer", connect_timeout: int = 5,
                 statement_timeout_ms: int = 60_000):
        self.url = url
        self.group = group
        self.window = window
        self.statement_timeout_ms = statement_timeout_ms
        self.application_name = application_name
        self.connect_timeout = connect_timeout
        self._conn: psycopg2.extensions.connection | None = None

    # -- connection -----------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def _connection(self) -> psycopg2.extensions.connection:
        if not self.connected:
            conn = psycopg2.connect(
                self.url, application_name=self.application_name, connect_timeout=self.connect_timeout,
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                # a hung statement becomes a retryable error instead of stalling the
                # consumer past max.poll.interval.ms
                options=f"-c statement_timeout={self.statement_timeout_ms}",
            )
            with conn.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
                cur.execute(TEMP_TABLES)
            conn.commit()
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def _rollback(self) -> None:
        try:
            if self._conn is not None:
                self._conn.rollback()
        except Exception:
            self.close()

    # -- writing ---------------------------------------------------------------
    def write_raw(self, messages: Iterable[RawMessage], *,
                  incarnations: Mapping[str, str] | None = None) -> WriteResult:
        """Parse (with this writer's window) and write (for tests and tools)."""
        return self.write([parse(m, self.window) for m in messages], incarnations=incarnations)

    def write(self, batch: Sequence[ParsedMessage], *,
              incarnations: Mapping[str, str] | None = None) -> WriteResult:
        """Write one batch in one transaction (see the module docstring). A
        message's incarnation is ``raw.incarnation``, else ``incarnations[topic]``,
        else ''. Raises only :class:`DatabaseUnavailable` (nothing committed)."""
        started = time.perf_counter()
        if not batch:
            return WriteResult()
        incarnations = incarnations or {}
        try:
            try:
                result = self._write_once(batch, incarnations, isolate=False)
            except NeedsIsolation as exc:
                log.warning("batch rejected, isolating the messages at fault", extra={
                    "event": "batch_isolation", "error": reason(describe(exc.__cause__))[:500],
                    "batch_size": len(batch)})
                self._rollback()
                result = self._write_once(batch, incarnations, isolate=True)
        except DatabaseUnavailable:
            self._rollback()
            raise
        except UNAVAILABLE as exc:
            self._rollback()  # closes a broken connection (the next call reconnects)
            raise DatabaseUnavailable(str(exc).strip() or type(exc).__name__) from exc
        except Exception as exc:  # a bug outside the row insert: hold the batch, never drop it
            log.exception("unexpected error writing a batch", extra={"event": "write_error"})
            self.close()
            raise DatabaseUnavailable(f"unexpected error: {describe(exc)}") from exc
        result.db_seconds = time.perf_counter() - started
        return result

    def _write_once(self, batch: Sequence[ParsedMessage], incarnations: Mapping[str, str],
                    isolate: bool) -> WriteResult:
        conn = self._connection()
        with conn.cursor(cursor_factory=CountingCursor) as cur:
            attempt = Attempt(self, cur, batch, incarnations, isolate)
            attempt.skip_covered()
            attempt.find_recorded_dead_letters()
            try:
                attempt.store_valid()
            except Exception as exc:
                if isolate or unavailable(exc):
                    raise
                raise NeedsIsolation() from exc
            attempt.store_dead_letters()
            attempt.write_ledger()
        self._commit(conn)
        return attempt.result()

    def _commit(self, conn) -> None:
        conn.commit()

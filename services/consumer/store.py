"""Storing: one batch of parsed messages written in ONE PostgreSQL transaction.

:class:`BatchWriter` holds the connection, the transaction and its retry
decisions; :class:`Attempt` the steps of one transaction (below); the
statements are in ``sql.py``, the rows were built by ``messages.parse`` and a
dead letter's row is ``dead_letters.dead_letter_row``. Usable without Kafka
(unit tests, replay tools): give it :class:`~services.consumer.messages.RawMessage`
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

import hashlib
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2.extras import execute_values

from salespulse.contracts import TimestampWindow

from .dead_letters import dead_letter_key, dead_letter_row
from .messages import ParsedMessage, RawMessage, Row, Unstorable, build_row, parse, reason
from .sql import (
    CONFLICTS,
    DEAD_LETTER_CHUNK_BYTES,
    INSERT_DEAD_LETTERS,
    INSERT_EVENTS,
    INSERT_LEDGER,
    INSERT_ORDERS,
    LOCK_AND_COVERAGE,
    RECORDED_DEAD_LETTERS,
    TEMP_TABLES,
    TRUNCATE_TEMP,
)

log = logging.getLogger(__name__)

CONFLICT = "conflicting re-send of an id already stored with other content"
DEFAULT_GROUP = "salespulse-ingest"


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached or the transaction could not finish;
    nothing of the batch was committed. Retry later (the writer reconnects)."""


@dataclass
class TopicCounts:
    received: int = 0
    stored: int = 0  # new rows (events / orders)
    duplicates: int = 0  # valid, identical to a stored row
    dead_letters: int = 0  # in dead_letters (new or stored before)
    skipped: int = 0  # offsets the ledger already covers: not written again


@dataclass
class WriteResult:
    topics: dict[str, TopicCounts] = field(default_factory=dict)
    dead_letters: list[ParsedMessage] = field(default_factory=list)  # newly dead-lettered: publish to the DLQ
    skipped: list[ParsedMessage] = field(default_factory=list)
    # skipped messages recorded as dead letters before: published to the DLQ again
    # (a consumer may have died between the database commit and the DLQ publication)
    republish: list[ParsedMessage] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows inserted
    ledger: list[tuple] = field(default_factory=list)  # the ingest_ledger rows written
    db_seconds: float = 0.0
    isolated: bool = False  # the isolating re-run happened
    statements: int = 0  # statements sent by the last attempt (COMMIT not counted)

    def counts(self, topic: str) -> TopicCounts:
        return self.topics.setdefault(topic, TopicCounts())


# ---------------------------------------------------------------- the transaction
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
            attempt = Attempt(self.group, cur, batch, incarnations, isolate)
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
        conn.commit()
        return attempt.result()


def lock_key(*parts: Any) -> int:
    digest = hashlib.blake2b("\x00".join(map(str, parts)).encode("utf-8", "backslashreplace"), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


class CountingCursor(psycopg2.extensions.cursor):
    """Counts the statements sent (the per-batch cost the ingest path watches)."""

    statements = 0

    def execute(self, query, vars=None):
        self.statements += 1
        return super().execute(query, vars)

    def copy_expert(self, sql, file, size=8192):
        self.statements += 1
        return super().copy_expert(sql, file, size)


# Errors that mean "the database is unavailable / the transaction could not
# finish": retry the whole batch later. Everything else that happens while
# rows are inserted is blamed on the data and isolated.
UNAVAILABLE = (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.InternalError,
               psycopg2.ProgrammingError)


def unavailable(exc: BaseException) -> bool:
    # a row beyond a size limit (e.g. of an index entry) is the data's fault
    return isinstance(exc, UNAVAILABLE) and not isinstance(exc, psycopg2.errors.ProgramLimitExceeded)


class NeedsIsolation(Exception):
    """The row insert failed for a reason that may be one message's fault."""


# ---------------------------------------------------------------- one attempt at one batch
STORED, DUPLICATE = "stored", "duplicate"


class Attempt:
    """One transaction's worth of work for one batch (state never outlives it)."""

    def __init__(self, group: str, cur, batch: Sequence[ParsedMessage],
                 incarnations: Mapping[str, str], isolate: bool):
        self.group, self.cur, self.isolate = group, cur, isolate
        self.batch = batch
        # (topic, incarnation, partition) of each message of the batch, and the
        # batch's positions per part (in batch order)
        self.parts: list[tuple] = []
        self.batch_groups: dict[tuple, list[int]] = {}
        resolved: dict[tuple, tuple] = {}
        for i, m in enumerate(batch):
            raw = m.raw
            key = (raw.topic, raw.incarnation, raw.partition)
            part = resolved.get(key)
            if part is None:
                part = resolved[key] = (raw.topic, raw.incarnation or incarnations.get(raw.topic, ""), raw.partition)
            self.parts.append(part)
            group = self.batch_groups.get(part)
            if group is None:
                self.batch_groups[part] = [i]
            else:
                group.append(i)
        self.todo: list[ParsedMessage] = []
        self.todo_parts: list[tuple] = []
        self.todo_groups: dict[tuple, list[int]] = {}  # part -> positions in todo
        self.skipped: list[ParsedMessage] = []
        self.republish: list[ParsedMessage] = []
        self.covered: dict[tuple, list[tuple[int, int]]] = {}
        self.streams: dict[tuple, int] = {}  # part -> ingest_streams.id
        self.outcome: list[str | None] = []  # per todo position: STORED | DUPLICATE | dead-letter reason
        self.rows_inserted = {"products": 0, "events": 0, "transactions": 0, "orders": 0, "order_items": 0}
        self.new_dead: set[tuple] = set()
        self.ledger: list[tuple] = []
        self.temp_used = False  # the temp tables hold rows of an earlier insert
        self._dead_positions: list[int] | None = None
        self._todo_offsets: dict[tuple, list[int]] | None = None  # part -> offsets (todo is the batch)
        self.rows: list[Row | None] = []  # per todo position (step 2)

    # -- 1. ledger coverage ---------------------------------------------------
    def skip_covered(self) -> None:
        batch = self.batch
        offsets = {part: [batch[i].raw.offset for i in group] for part, group in self.batch_groups.items()}
        keys = sorted(offsets)
        self.cur.execute(LOCK_AND_COVERAGE, {
            "locks": sorted(lock_key(self.group, *k) for k in keys), "group": self.group,
            "topics": [k[0] for k in keys], "incs": [k[1] for k in keys], "parts": [k[2] for k in keys],
            "los": [min(offsets[k]) for k in keys], "his": [max(offsets[k]) for k in keys]})
        for topic, inc, p, stream, lo, hi in self.cur.fetchall():
            self.streams[(topic, inc, p)] = stream
            if lo is not None:
                self.covered.setdefault((topic, inc, p), []).append((lo, hi))
        if len(self.streams) != len(keys):
            raise DatabaseUnavailable("a ledger stream of this batch is missing (forgotten meanwhile): retry")
        if not self.covered and all(len(set(o)) == len(o) for o in offsets.values()):
            # the usual case: nothing committed before, no offset twice
            self.todo, self.todo_parts, self.todo_groups = list(batch), self.parts, self.batch_groups
            self._todo_offsets = offsets
        else:
            seen: set[tuple] = set()
            for part, m in zip(self.parts, batch):
                key, ranges = (part, m.raw.offset), self.covered.get(part)
                if key in seen or (ranges and any(lo <= m.raw.offset <= hi for lo, hi in ranges)):
                    self.skipped.append(m)  # committed before (or the same offset twice in this batch)
                else:
                    seen.add(key)
                    self.todo_groups.setdefault(part, []).append(len(self.todo))
                    self.todo.append(m)
                    self.todo_parts.append(part)
        self.outcome = [None] * len(self.todo)

    def find_recorded_dead_letters(self) -> None:
        """Skipped messages that are dead letters already: their DLQ copy is sent
        again (at least once on the topic; the table holds each exactly once)."""
        if not self.skipped:
            return
        parts = {id(m): part for part, m in zip(self.parts, self.batch)}
        keys = [(*parts[id(m)], m.raw.offset) for m in self.skipped]
        self.cur.execute(RECORDED_DEAD_LETTERS, {
            "topics": [k[0] for k in keys], "incs": [k[1] for k in keys],
            "parts": [k[2] for k in keys], "offsets": [k[3] for k in keys]})
        errors = {tuple(row[:4]): row[4] for row in self.cur.fetchall()}
        for key, m in zip(keys, self.skipped):
            if key in errors:
                self.republish.append(ParsedMessage(m.raw, error=errors[key]))

    # -- 2. valid rows --------------------------------------------------------
    def store_valid(self) -> None:
        outcome = self.outcome
        rows = self.rows = [m.row for m in self.todo]  # built by parse() (None for the others)
        pending: list[int] = []  # todo positions of the rows to store
        for i, m in enumerate(self.todo):
            if m.error is not None:
                outcome[i] = reason(m.error or "invalid")
                continue
            if rows[i] is None:
                failure = m.row_failure
                if failure is None:  # not made by parse(): build it here
                    try:
                        rows[i] = build_row(i, m.model, m.raw.partition, m.raw.offset)
                    except Exception as exc:
                        failure = exc
                if failure is not None:
                    outcome[i] = reason(f"cannot be stored: {describe(failure)}")
                    continue
            pending.append(i)
        while pending:  # more than one round only if a first copy was dead-lettered
            pending = self._store_round(pending)

    def _store_round(self, pending: list[int]) -> list[int]:
        """Store the first copy of each id; settle the later copies against it.
        Returns the later copies still open: different from a first copy that
        was not stored (they get a round of their own). Positions and string
        keys (kind + id), no tuple per row: less for the garbage collector."""
        rows, outcome = self.rows, self.outcome
        firsts: dict[str, int] = {}
        followers: list[tuple[int, int]] = []
        for i in pending:
            row = rows[i]
            first = firsts.setdefault(row.kind + row.ident, i)
            if first != i:
                followers.append((i, first))
        entries = list(firsts.values())
        missed = self._insert_isolating(entries) if self.isolate else self._insert([rows[i] for i in entries])
        if missed:
            conflicts = self._conflicts([rows[i] for i in entries
                                         if rows[i].kind + rows[i].ident in missed and outcome[i] is None])
            for i in entries:
                if outcome[i] is None:
                    key = rows[i].kind + rows[i].ident
                    outcome[i] = STORED if key not in missed else CONFLICT if key in conflicts else DUPLICATE
        else:
            for i in entries:
                if outcome[i] is None:
                    outcome[i] = STORED
        still_open = []
        for i, first in followers:
            fate, same = outcome[first], rows[first].digest == rows[i].digest
            if fate in (STORED, DUPLICATE):
                outcome[i] = DUPLICATE if same else CONFLICT
            elif same:
                outcome[i] = fate  # the same content fails the same way
            else:
                still_open.append(i)
        return still_open

    def _insert(self, rows: list[Row]) -> set[str]:
        """COPY ``rows`` into the temp tables and move them; the keys (kind +
        id) of those not inserted (an id stored already)."""
        if self.temp_used:
            self.cur.execute(TRUNCATE_TEMP)
        self.temp_used = True
        missed: set[str] = set()
        events = [r.line for r in rows if r.kind == "e"]
        orders = [r for r in rows if r.kind == "o"]
        if events:
            copy_lines(self.cur, "tmp_events", events)
            self.cur.execute(INSERT_EVENTS)
            products, transactions, inserted, ids = self.cur.fetchone()
            self._count(products=products, transactions=transactions, events=inserted)
            missed.update("e" + i for i in ids)
        if orders:
            copy_lines(self.cur, "tmp_orders", [r.line for r in orders])
            copy_lines(self.cur, "tmp_order_items", [line for r in orders for line in r.items])
            self.cur.execute(INSERT_ORDERS)
            items, inserted, ids = self.cur.fetchone()
            self._count(order_items=items, orders=inserted)
            missed.update("o" + i for i in ids)
        return missed

    def _count(self, **rows: int) -> None:
        for table, n in rows.items():
            self.rows_inserted[table] += n

    def _insert_isolating(self, entries: list[int]) -> set[str]:
        """Insert the rows at these positions under a savepoint; on failure split
        in halves until the culprits are single messages, which become dead
        letters. The keys not inserted (of the rows not dead-lettered)."""
        if not entries:
            return set()
        saved = dict(self.rows_inserted)
        self.cur.execute("SAVEPOINT isolate")
        try:
            missed = self._insert([self.rows[i] for i in entries])
        except Exception as exc:
            if unavailable(exc):
                raise
            self.cur.execute("ROLLBACK TO SAVEPOINT isolate")
            self.rows_inserted = saved
            if len(entries) == 1:
                by = "rejected by the database" if isinstance(exc, psycopg2.Error) else "cannot be stored"
                self.outcome[entries[0]] = reason(f"{by}: {describe(exc)}")
                return set()
            mid = len(entries) // 2
            return self._insert_isolating(entries[:mid]) | self._insert_isolating(entries[mid:])
        self.cur.execute("RELEASE SAVEPOINT isolate")
        return missed

    def _conflicts(self, rows: list[Row]) -> set[str]:
        if not rows:
            return set()
        ev = [r for r in rows if r.kind == "e"]
        od = [r for r in rows if r.kind == "o"]
        self.cur.execute(CONFLICTS, {"eids": [r.ident for r in ev], "ehashes": [r.digest for r in ev],
                                      "oids": [r.ident for r in od], "ohashes": [r.digest for r in od]})
        return {kind + ident for kind, ident in self.cur.fetchall()}

    # -- 3. dead letters, 4. ledger ---------------------------------------------
    def store_dead_letters(self) -> None:
        chunk: list[tuple] = []
        size = 0
        for m, part, why in self._dead():
            chunk.append(dead_letter_row(m, part[1], why))
            size += len(m.raw.value or b"") + len(m.raw.key or b"")
            if size >= DEAD_LETTER_CHUNK_BYTES:
                self._insert_dead_letters(chunk)
                chunk, size = [], 0
        self._insert_dead_letters(chunk)

    def _insert_dead_letters(self, rows: list[tuple]) -> None:
        if rows:
            for topic, inc, p, off, sha in execute_values(self.cur, INSERT_DEAD_LETTERS, rows,
                                                           page_size=len(rows), fetch=True):
                self.new_dead.add((topic, inc, p, off, sha.strip()))

    def write_ledger(self) -> None:
        outcome = self.outcome
        for part, positions in sorted(self.todo_groups.items()):
            ranges = self.covered.get(part, ())
            if not ranges:  # the usual case: one run
                offsets = (self._todo_offsets[part] if self._todo_offsets is not None
                           else [self.todo[i].raw.offset for i in positions])
                self.ledger.append(self._ledger_row(part, min(offsets), max(offsets),
                                                    [outcome[i] for i in positions]))
                continue
            entries = sorted((self.todo[i].raw.offset, outcome[i]) for i in positions)
            run: list[tuple[int, str]] = []
            for entry in entries:
                if run and any(run[-1][0] < lo < entry[0] for lo, _ in ranges):
                    self.ledger.append(self._run_row(part, run))  # a covered range lies between
                    run = []
                run.append(entry)
            self.ledger.append(self._run_row(part, run))
        if self.ledger:
            try:
                streams = self.streams
                execute_values(self.cur, INSERT_LEDGER,  # (stream, first, last, stored, duplicates, dead)
                               [(streams[row[1:4]], *row[4:6], *row[7:]) for row in self.ledger],
                               page_size=len(self.ledger))
            except psycopg2.IntegrityError as exc:
                raise DatabaseUnavailable(f"another consumer recorded some of these offsets meanwhile: "
                                          f"{str(exc).strip()}") from exc

    def _run_row(self, part: tuple, run: list[tuple[int, str]]) -> tuple:
        """The ledger row of a run of (offset, outcome), in offset order."""
        return self._ledger_row(part, run[0][0], run[-1][0], [o for _, o in run])

    def _ledger_row(self, part: tuple, first: int, last: int, fates: list[str]) -> tuple:
        stored, duplicates = fates.count(STORED), fates.count(DUPLICATE)
        return (self.group, *part, first, last, len(fates), stored, duplicates, len(fates) - stored - duplicates)

    # -- result ---------------------------------------------------------------
    def result(self) -> WriteResult:
        """Call after the commit: marks the dead letters' ``error``."""
        result = WriteResult(rows=self.rows_inserted, ledger=self.ledger, isolated=self.isolate,
                             skipped=self.skipped, republish=self.republish,
                             statements=self.cur.statements)
        for part, positions in self.batch_groups.items():
            result.counts(part[0]).received += len(positions)
        for m in self.skipped:
            result.counts(m.raw.topic).skipped += 1
        for part, positions in self.todo_groups.items():
            fates = [self.outcome[i] for i in positions]
            counts = result.counts(part[0])
            counts.stored += fates.count(STORED)
            counts.duplicates += fates.count(DUPLICATE)
        for m, part, why in self._dead():
            result.counts(m.raw.topic).dead_letters += 1
            m.error = why
            if dead_letter_key(m, part[1]) in self.new_dead:
                result.dead_letters.append(m)
        return result

    def _dead(self) -> Iterable[tuple[ParsedMessage, tuple, str]]:
        """The messages to dead-letter, in batch order (outcomes are final after step 2)."""
        if self._dead_positions is None:
            self._dead_positions = [i for i, fate in enumerate(self.outcome) if fate is not STORED
                                    and fate is not DUPLICATE]
        for i in self._dead_positions:
            yield self.todo[i], self.todo_parts[i], self.outcome[i]


def describe(exc: BaseException) -> str:
    if isinstance(exc, psycopg2.Error):
        diag = getattr(exc, "diag", None)
        return (getattr(diag, "message_primary", None) or str(exc)).strip()
    if isinstance(exc, Unstorable):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


COPY_CHUNK_BYTES = 64 << 20


def copy_lines(cur, table: str, lines: list[bytes]) -> None:
    """COPY ``lines`` into ``table``, in as few chunks as possible: psycopg2
    lets go of the GIL for every chunk it sends, and getting it back from a
    busy consuming thread can take a whole switch interval (5 ms)."""
    if lines:
        data = b"\n".join(lines) + b"\n"
        cur.copy_expert(f"COPY {table} FROM STDIN", io.BytesIO(data), size=min(len(data), COPY_CHUNK_BYTES))

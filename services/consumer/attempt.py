"""One attempt at writing one batch: the four steps of the transaction
(ledger coverage, valid rows, dead letters, ledger rows) and the isolation of
messages the database rejects. The transaction itself (connect, commit,
retry decisions) is :class:`services.consumer.writer.BatchWriter`'s.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2.extras import execute_values

from .messages import CONFLICT, ParsedMessage, reason
from .results import DatabaseUnavailable, WriteResult
from .rows import Row, Unstorable, build_row, copy_lines, dead_letter_key, dead_letter_row
from .sql import (
    CONFLICTS,
    DEAD_LETTER_CHUNK_BYTES,
    INSERT_DEAD_LETTERS,
    INSERT_EVENTS,
    INSERT_LEDGER,
    INSERT_ORDERS,
    LOCK_AND_COVERAGE,
    RECORDED_DEAD_LETTERS,
    TRUNCATE_TEMP,
)

if TYPE_CHECKING:
    from .writer import BatchWriter

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

# --------------------------------------------------------------------------
# one attempt at one batch
# --------------------------------------------------------------------------
STORED, DUPLICATE = "stored", "duplicate"

class Attempt:
    """One transaction's worth of work for one batch (state never outlives it)."""

    def __init__(self, writer: "BatchWriter", cur, batch: Sequence[ParsedMessage],
                 incarnations: Mapping[str, str], isolate: bool):
        self.w, self.cur, self.isolate = writer, cur, isolate
        self.batch = batch
        # (topic, incarnation, partition) of each message of the batch
        self.parts = [(m.raw.topic, m.raw.incarnation or incarnations.get(m.raw.topic, ""), m.raw.partition)
                      for m in batch]
        self.todo: list[ParsedMessage] = []
        self.todo_parts: list[tuple] = []
        self.skipped: list[ParsedMessage] = []
        self.republish: list[ParsedMessage] = []
        self.covered: dict[tuple, list[tuple[int, int]]] = {}
        self.outcome: dict[int, str] = {}  # todo index -> STORED | DUPLICATE | dead-letter reason
        self.rows_inserted = {"products": 0, "events": 0, "transactions": 0, "orders": 0, "order_items": 0}
        self.new_dead: set[tuple] = set()
        self.ledger: list[tuple] = []
        self.temp_used = False  # the temp tables hold rows of an earlier insert

    # -- 1. ledger coverage ---------------------------------------------------
    def skip_covered(self) -> None:
        spans: dict[tuple, list[int]] = {}
        for part, m in zip(self.parts, self.batch):
            offset, span = m.raw.offset, spans.get(part)
            if span is None:
                spans[part] = [offset, offset]
            elif offset < span[0]:
                span[0] = offset
            elif offset > span[1]:
                span[1] = offset
        keys = sorted(spans)
        self.cur.execute(LOCK_AND_COVERAGE, {
            "locks": sorted(lock_key(self.w.group, *k) for k in keys), "group": self.w.group,
            "topics": [k[0] for k in keys], "incs": [k[1] for k in keys], "parts": [k[2] for k in keys],
            "los": [spans[k][0] for k in keys], "his": [spans[k][1] for k in keys]})
        for topic, inc, p, lo, hi in self.cur.fetchall():
            self.covered.setdefault((topic, inc, p), []).append((lo, hi))
        seen: set[tuple] = set()
        for part, m in zip(self.parts, self.batch):
            key, ranges = (part, m.raw.offset), self.covered.get(part)
            if key in seen or (ranges and any(lo <= m.raw.offset <= hi for lo, hi in ranges)):
                self.skipped.append(m)  # committed before (or the same offset twice in this batch)
            else:
                seen.add(key)
                self.todo.append(m)
                self.todo_parts.append(part)

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
        pending: list[Row] = []
        for i, m in enumerate(self.todo):
            if not m.valid:
                self.outcome[i] = reason(m.error or "invalid")
                continue
            try:
                pending.append(build_row(i, m.model))
            except Exception as exc:
                self.outcome[i] = reason(f"cannot be stored: {describe(exc)}")
        while pending:  # more than one round only if a first copy was dead-lettered
            pending = self._store_round(pending)

    def _store_round(self, pending: list[Row]) -> list[Row]:
        """Store the first copy of each id; settle the later copies against it.
        Returns the later copies still open: different from a first copy that
        was not stored (they get a round of their own)."""
        firsts: dict[tuple, Row] = {}
        followers: list[tuple[Row, Row]] = []
        for row in pending:
            first = firsts.setdefault((row.kind, row.ident), row)
            if first is not row:
                followers.append((row, first))
        rows = list(firsts.values())
        inserted = self._insert_isolating(rows) if self.isolate else self._insert(rows)
        conflicts = self._conflicts([r for r in rows if (r.kind, r.ident) not in inserted
                                     and r.index not in self.outcome])
        for r in rows:
            if r.index not in self.outcome:
                key = (r.kind, r.ident)
                self.outcome[r.index] = STORED if key in inserted else CONFLICT if key in conflicts else DUPLICATE
        still_open = []
        for row, first in followers:
            fate, same = self.outcome[first.index], first.digest == row.digest
            if fate in (STORED, DUPLICATE):
                self.outcome[row.index] = DUPLICATE if same else CONFLICT
            elif same:
                self.outcome[row.index] = fate  # the same content fails the same way
            else:
                still_open.append(row)
        return still_open

    def _insert(self, rows: list[Row]) -> set[tuple]:
        """COPY ``rows`` into the temp tables and move them; the keys inserted."""
        if self.temp_used:
            self.cur.execute(TRUNCATE_TEMP)
        self.temp_used = True
        inserted: set[tuple] = set()
        events = [r.line for r in rows if r.kind == "e"]
        orders = [r for r in rows if r.kind == "o"]
        if events:
            copy_lines(self.cur, "tmp_events", events)
            self.cur.execute(INSERT_EVENTS)
            products, transactions, ids = self.cur.fetchone()
            self._count(products=products, transactions=transactions, events=len(ids))
            inserted.update(("e", i) for i in ids)
        if orders:
            copy_lines(self.cur, "tmp_orders", [r.line for r in orders])
            copy_lines(self.cur, "tmp_order_items", [line for r in orders for line in r.items])
            self.cur.execute(INSERT_ORDERS)
            items, ids = self.cur.fetchone()
            self._count(order_items=items, orders=len(ids))
            inserted.update(("o", i) for i in ids)
        return inserted

    def _count(self, **rows: int) -> None:
        for table, n in rows.items():
            self.rows_inserted[table] += n

    def _insert_isolating(self, rows: list[Row]) -> set[tuple]:
        """Insert under a savepoint; on failure split in halves until the culprits
        are single messages, which become dead letters."""
        if not rows:
            return set()
        saved = dict(self.rows_inserted)
        self.cur.execute("SAVEPOINT isolate")
        try:
            inserted = self._insert(rows)
        except Exception as exc:
            if unavailable(exc):
                raise
            self.cur.execute("ROLLBACK TO SAVEPOINT isolate")
            self.rows_inserted = saved
            if len(rows) == 1:
                by = "rejected by the database" if isinstance(exc, psycopg2.Error) else "cannot be stored"
                self.outcome[rows[0].index] = reason(f"{by}: {describe(exc)}")
                return set()
            mid = len(rows) // 2
            return self._insert_isolating(rows[:mid]) | self._insert_isolating(rows[mid:])
        self.cur.execute("RELEASE SAVEPOINT isolate")
        return inserted

    def _conflicts(self, rows: list[Row]) -> set[tuple]:
        if not rows:
            return set()
        ev = [r for r in rows if r.kind == "e"]
        od = [r for r in rows if r.kind == "o"]
        self.cur.execute(CONFLICTS, {"eids": [r.ident for r in ev], "ehashes": [r.digest for r in ev],
                                      "oids": [r.ident for r in od], "ohashes": [r.digest for r in od]})
        return {(kind, ident) for kind, ident in self.cur.fetchall()}

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
        by_part: dict[tuple, list[tuple[int, str]]] = {}
        for i, (m, part) in enumerate(zip(self.todo, self.todo_parts)):
            by_part.setdefault(part, []).append((m.raw.offset, self.outcome[i]))
        for part, entries in sorted(by_part.items()):
            entries.sort()
            ranges = self.covered.get(part, ())
            run: list[tuple[int, str]] = []
            for entry in entries:
                if run and any(run[-1][0] < lo < entry[0] for lo, _ in ranges):
                    self.ledger.append(self._ledger_row(part, run))  # a covered range lies between
                    run = []
                run.append(entry)
            self.ledger.append(self._ledger_row(part, run))
        if self.ledger:
            try:
                execute_values(self.cur, INSERT_LEDGER, self.ledger, page_size=len(self.ledger))
            except psycopg2.IntegrityError as exc:
                raise DatabaseUnavailable(f"another consumer recorded some of these offsets meanwhile: "
                                          f"{str(exc).strip()}") from exc

    def _ledger_row(self, part: tuple, run: list[tuple[int, str]]) -> tuple:
        stored = sum(1 for _, o in run if o == STORED)
        duplicates = sum(1 for _, o in run if o == DUPLICATE)
        return (self.w.group, *part, run[0][0], run[-1][0], len(run), stored, duplicates,
                len(run) - stored - duplicates)

    # -- result ---------------------------------------------------------------
    def result(self) -> WriteResult:
        """Call after the commit: marks the dead letters' ``error``."""
        result = WriteResult(rows=self.rows_inserted, ledger=self.ledger, isolated=self.isolate,
                             skipped=self.skipped, republish=self.republish,
                             statements=self.cur.statements)
        for m in self.batch:
            result.counts(m.raw.topic).received += 1
        for m in self.skipped:
            result.counts(m.raw.topic).skipped += 1
        for i, m in enumerate(self.todo):
            fate = self.outcome[i]
            if fate == STORED:
                result.counts(m.raw.topic).stored += 1
            elif fate == DUPLICATE:
                result.counts(m.raw.topic).duplicates += 1
        for m, part, why in self._dead():
            result.counts(m.raw.topic).dead_letters += 1
            m.error = why
            if dead_letter_key(m, part[1]) in self.new_dead:
                result.dead_letters.append(m)
        return result

    def _dead(self) -> Iterable[tuple[ParsedMessage, tuple, str]]:
        for i, (m, part) in enumerate(zip(self.todo, self.todo_parts)):
            if self.outcome[i] not in (STORED, DUPLICATE):
                yield m, part, self.outcome[i]

def describe(exc: BaseException) -> str:
    if isinstance(exc, psycopg2.Error):
        diag = getattr(exc, "diag", None)
        return (getattr(diag, "message_primary", None) or str(exc)).strip()
    if isinstance(exc, Unstorable):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


"""Outage backoff: retrying a step that failed (the database write, the
dead-letter publication) with capped exponential waits, and the health the
outage shows meanwhile.

Nothing is ever skipped: a step is retried until it succeeds, unless the
caller gives up (a stop, or a bounded number of attempts on revoke and
shutdown); then its batch's offsets stay uncommitted and it is re-delivered.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from .metrics import DB_RETRIES, DB_UP, DLQ_RETRIES

log = logging.getLogger("services.consumer")

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 15.0

T = TypeVar("T")


def backoff_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...): 0.5, 1, 2, ... 15."""
    return min(BACKOFF_INITIAL_S * 2 ** (attempt - 1), BACKOFF_MAX_S)


def retry(step: Callable[[], T], *, wait: Callable[[float], None], give_up: Callable[[int], bool],
          on_failure: Callable[[Exception, int], None], first_error: Exception | None = None,
          retry_on: tuple[type[Exception], ...] = (Exception,)) -> tuple[bool, T | None]:
    """Run ``step`` until it returns; ``(True, value)``. After each failure
    ``on_failure(error, attempt)``, then ``(False, None)`` if ``give_up(attempt)``,
    else ``wait(backoff_delay(attempt))`` and again. With ``first_error`` the
    step has already failed once. Errors other than ``retry_on`` propagate."""
    attempt, error = 0, first_error
    while True:
        if error is None:
            try:
                return True, step()
            except retry_on as exc:  # the caller's on_failure logs what it means
                error = exc
        attempt += 1
        on_failure(error, attempt)
        if give_up(attempt):
            return False, None
        wait(backoff_delay(attempt))
        error = None


class DeadLettersUndelivered(RuntimeError):
    """Some dead letters were not delivered to their ``.dlq`` topic."""

    def __init__(self, failures: list[str]):
        super().__init__(f"{len(failures)} dead letter(s) undelivered: {failures[:3]}")
        self.failures = failures


class Outage:
    """The database's and the dead-letter queue's state as /health and the metrics show it."""

    def __init__(self) -> None:
        self.db_ok = True
        self.dlq_ok = True
        self.since: float | None = None  # monotonic start of the database outage
        self.last_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.db_ok and self.dlq_ok

    def health(self) -> dict:
        return {
            "database": "up" if self.db_ok else "down",
            "dead_letter_queue": "up" if self.dlq_ok else "down",
            "outage_seconds": round(time.monotonic() - self.since, 1) if self.since else 0,
            "last_error": self.last_error,
        }

    def write_failed(self, error: Exception, attempt: int, size: int, *, expected: bool) -> None:
        """A batch write failed (``expected``: the database was unavailable)."""
        DB_RETRIES.inc()
        text = str(error).strip() or type(error).__name__
        self.last_error = text
        if not expected:
            # the writer isolates bad messages itself; anything else is a bug: keep the
            # batch (never drop it, never commit past it) and say so loudly
            log.error("unexpected error writing a batch; holding it and retrying", exc_info=error,
                      extra={"event": "write_error", "attempt": attempt, "messages": size})
        if self.db_ok:
            self.db_ok = False
            self.since = time.monotonic()
            DB_UP.set(0)
            log.error("database unavailable; holding the batch and retrying",
                      extra={"event": "db_outage", "error": text, "messages": size})
        else:
            log.warning("batch write retry failed", extra={"event": "db_retry_failed", "attempt": attempt,
                                                          "error": text, "messages": size})

    def write_succeeded(self) -> None:
        if not self.db_ok:
            log.info("database back; batch written", extra={
                "event": "db_recovered", "outage_seconds": round(time.monotonic() - (self.since or 0), 2)})
            self.db_ok = True
            self.since = None
            self.last_error = None
            DB_UP.set(1)

    def dlq_failed(self, error: Exception, attempt: int) -> None:
        DLQ_RETRIES.inc()
        self.dlq_ok = False
        log.error("dead letters not delivered; retrying", extra={
            "event": "dlq_failed", "attempt": attempt, "errors": getattr(error, "failures", [str(error)])[:3]})

    def dlq_succeeded(self) -> None:
        if not self.dlq_ok:
            log.info("dead-letter queue reachable again", extra={"event": "dlq_recovered"})
        self.dlq_ok = True

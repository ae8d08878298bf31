"""What one batch write reports, and the one error it may raise."""

from __future__ import annotations

from dataclasses import dataclass, field

from .messages import ParsedMessage


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


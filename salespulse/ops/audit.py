"""``salespulse audit``: where every consumed offset went, and whether the raw tables agree.

The consumer records each batch in the ingest ledger (same transaction as the
rows; sql/130_compact_ledger.sql): per partition the offset range it covered
and how many of those messages were stored, duplicates or dead-lettered.
Per (group, topic, topic incarnation, partition) the ranges must follow each
other without a gap or an overlap from the group's first batch on; a gap
means offsets were committed that nothing stored nor dead-lettered, an
overlap means a range was written twice. Ranges older than
``LEDGER_ROLLUP_MINUTES`` are merged per hour where contiguous, and retention
(``LEDGER_RETENTION_DAYS``, or the raw history dropped) deletes a contiguous
prefix of each stream into its *trimmed range*, counts kept: the audit
starts each stream there, so it still accounts for every offset. The audit prints that summary, every gap/overlap, and the number of
disagreements between ``events``/``transactions`` and ``orders``/``order_items``
(``salespulse.integrity.CONSISTENCY_SQL``).

Exit status: 0 = contiguous and consistent, 1 = a gap, an overlap or a
violation was found, 2 = the database could not be read (``salespulse.ops``).
The same queries back the Dagster checks ``ingest_ledger_contiguous`` and
``raw_tables_consistent`` (orchestration/checks.py); see docs/audit.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import psycopg2.errors

from salespulse.db import connect
from salespulse.integrity import consistency_violations, ledger_gaps, ledger_summary
from salespulse.ops import OpsError
from salespulse.settings import get_settings

#: violations listed one per line; the count always covers them all
SHOW_VIOLATIONS = 20


@dataclass(frozen=True)
class Discontinuity:
    """Two consecutive ledger ranges of a partition that do not meet."""

    consumer_group: str
    topic: str
    topic_incarnation: str
    partition: int
    expected_first: int  # previous range's last offset + 1
    found_first: int  # where the next range starts

    @property
    def kind(self) -> str:
        return "gap" if self.found_first > self.expected_first else "overlap"

    def describe(self) -> str:
        where = f"{self.consumer_group} {self.topic}[{self.partition}] incarnation {self.topic_incarnation or '-'}"
        if self.kind == "gap":
            return (f"GAP     {where}: offsets {self.expected_first}..{self.found_first - 1} "
                    f"({self.found_first - self.expected_first}) are in no batch")
        return (f"OVERLAP {where}: a batch starts at {self.found_first}, "
                f"offsets up to {self.expected_first - 1} were already recorded")


def discontinuities(cur, group: str | None = None) -> list[Discontinuity]:
    """Every gap/overlap of the ledger (``LEDGER_GAPS_SQL``), optionally of one group."""
    found = [Discontinuity(*row) for row in ledger_gaps(cur)]
    return [d for d in found if group is None or d.consumer_group == group]


@dataclass
class Audit:
    partitions: list[dict]
    discontinuities: list[Discontinuity]
    violations: list[tuple]  # (check_name, table_name, key, detail)

    @property
    def ok(self) -> bool:
        return not self.discontinuities and not self.violations

    def as_json(self) -> dict:
        return {
            "ok": self.ok,
            "partitions": self.partitions,
            "gaps": [{**asdict(d), "kind": d.kind} for d in self.discontinuities],
            "consistency_violations": len(self.violations),
            "violations": [dict(zip(("check_name", "table_name", "key", "detail"), map(str, v)))
                           for v in self.violations],
        }


def run_audit(url: str, group: str | None = None) -> Audit:
    """Read the ledger and the consistency query in one read-only snapshot."""
    conn = connect(url, attempts=3)
    try:
        conn.set_session(readonly=True, isolation_level="REPEATABLE READ")
        with conn.cursor() as cur:
            return Audit(ledger_summary(cur, group), discontinuities(cur, group), consistency_violations(cur))
    except psycopg2.errors.UndefinedTable as exc:
        raise OpsError(f"{str(exc).splitlines()[0]}: run `salespulse migrate` first") from exc
    finally:
        conn.rollback()
        conn.close()


COLUMNS = (("group", "consumer_group"), ("topic", "topic"), ("incarnation", "topic_incarnation"),
           ("partition", "partition"), ("offsets", None), ("trimmed to", "trimmed_through"),
           ("ranges", "batches"), ("messages", "messages"),
           ("stored", "stored"), ("duplicates", "duplicates"), ("dead-lettered", "dead_lettered"),
           ("gaps/overlaps", "gaps"))


def _cell(row: dict, key: str | None) -> str:
    if key is None:
        return f"{row['first_offset']}..{row['last_offset']}"
    value = row.get(key)
    return "-" if value in (None, "") or (key == "trimmed_through" and value < 0) else str(value)


def format_report(audit: Audit) -> str:
    lines = []
    if audit.partitions:
        cells = [tuple(title for title, _ in COLUMNS)]
        cells += [tuple(_cell(row, key) for _, key in COLUMNS) for row in audit.partitions]
        widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
        for row in cells:
            lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    else:
        lines.append("ingest ledger: no batches recorded")
    for gap in audit.discontinuities:
        lines.append(gap.describe())
    lines.append(f"gaps/overlaps: {len(audit.discontinuities)}")
    lines.append(f"consistency violations: {len(audit.violations)}")
    for check_name, table_name, key, detail in audit.violations[:SHOW_VIOLATIONS]:
        lines.append(f"  {check_name} {table_name} {key}: {detail}")
    if len(audit.violations) > SHOW_VIOLATIONS:
        lines.append(f"  ... and {len(audit.violations) - SHOW_VIOLATIONS} more (--json lists all)")
    lines.append("OK" if audit.ok else "FAILED: see docs/audit.md")
    return "\n".join(lines)


def cmd_audit(args) -> int:
    audit = run_audit(get_settings().database_url, args.group)
    if args.json:
        print(json.dumps(audit.as_json(), indent=2, default=str))
    else:
        print(format_report(audit))
    return 0 if audit.ok else 1

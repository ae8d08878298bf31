"""Health checks of the ingest (health job, every five minutes):

* ``dead_letter_rate`` — dead letters are at most ``DEAD_LETTER_MAX_RATE`` of
  the messages of the last hour;
* ``ingest_ledger_contiguous`` — the consumer's ``ingest_ledger`` ranges of
  every partition follow each other without a gap or an overlap;
* ``raw_tables_consistent`` — ``events``/``transactions`` and
  ``orders``/``order_items`` agree (``salespulse.integrity.CONSISTENCY_SQL``).

The last two are incremental (``orchestration.increments``): each evaluation
looks at what was ingested since the previous one (and at what it found wrong
before, until fixed), so its cost does not grow with history; the whole
tables are ``salespulse audit``'s. They are checks on the raw tables each
topic feeds (``events`` for ``ecommerce.events``, ``orders`` for
``restaurant.orders``): one query each, whose rows are split by domain, so a
failure shows on the domain it hit.
"""

from datetime import datetime, timedelta, timezone

from dagster import AssetCheckResult, AssetCheckSpec, MetadataValue, asset_check, multi_asset_check

from orchestration.assets.sources import RAW_TABLE_KEYS
from orchestration.checks.window import floor_minute
from orchestration.resources import PostgresResource
from salespulse.catalog import DOMAINS
from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC
from salespulse.settings import Settings

#: the default of DEAD_LETTER_MAX_RATE, for the description (the check reads the resource's settings)
_MAX_RATE_DEFAULT = Settings.model_fields["dead_letter_max_rate"].default


def dead_letter_rate(postgres: PostgresResource, max_rate: float, hours: int = 1) -> AssetCheckResult:
    since = datetime.now(timezone.utc) - timedelta(hours=hours)
    with postgres.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM dead_letters WHERE received_at >= %s", (since,))
        dead = cur.fetchone()[0]
        stored = 0
        for domain in DOMAINS.values():  # every topic's messages are stored in its domain's raw table
            cur.execute(f'SELECT count(*) FROM {domain.raw_table} WHERE "timestamp" >= %s', (since,))
            stored += cur.fetchone()[0]
    total = dead + stored
    rate = dead / total if total else 0.0
    return AssetCheckResult(
        passed=rate <= max_rate,
        description=f"{dead} dead letters of {total} messages in the last {hours} h ({rate:.2%}; max {max_rate:.2%})",
        metadata={
            "dead_letters": MetadataValue.int(dead),
            "messages": MetadataValue.int(total),
            "rate": MetadataValue.float(round(rate, 6)),
            "max_rate": MetadataValue.float(max_rate),
        },
    )


# --- ingest integrity (ledger contiguity, raw-table consistency) -------------

#: raw-table asset that carries a domain's integrity checks -> (its topic, the tables of its domain)
INTEGRITY_ASSETS = {
    "events": (ECOMMERCE_TOPIC.name, {"events", "transactions"}),
    "orders": (RESTAURANT_TOPIC.name, {"orders", "order_items"}),
}
#: rows listed in a failing check's metadata (the counts cover them all)
LIST_LIMIT = 50


def _owner(value: str, position: int) -> list[str]:
    """Assets a ledger topic (position 0) or a violation's table (1) belongs to;
    an unknown one is reported on every domain rather than on none."""
    owners = [name for name, domain in INTEGRITY_ASSETS.items()
              if (value == domain[0] if position == 0 else value in domain[1])]
    return owners or list(INTEGRITY_ASSETS)


def _markdown(header: tuple, rows: list[tuple]) -> MetadataValue:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows[:LIST_LIMIT]]
    if len(rows) > LIST_LIMIT:
        lines.append(f"\n{len(rows) - LIST_LIMIT} more: run `salespulse audit`")
    return MetadataValue.md("\n".join(lines))


def _scope(increment, rechecked: int) -> dict:
    """Metadata of what an incremental evaluation looked at (``rechecked``:
    earlier findings of this asset looked at again)."""
    return {
        "since": MetadataValue.text(increment.since.isoformat()),
        "first_evaluation": MetadataValue.bool(increment.first),
        "pending_rechecked": MetadataValue.int(rechecked),
    }


def _since_text(increment, rechecked: int) -> str:
    start = "in the last hour (first evaluation)" if increment.first else f"since {increment.since.isoformat()}"
    return (start + (f", {rechecked} earlier finding(s) re-checked" if rechecked else "")
            + ("; an ingest transaction older than every mark is still open: the next evaluation starts "
               "from the same bound" if increment.fell_back else ""))


def ledger_gap_results(postgres: PostgresResource) -> list[AssetCheckResult]:
    """``ingest_ledger_contiguous`` for each integrity asset, over the ledger
    rows recorded since the last evaluation, their neighbours and the gaps
    found before (``orchestration.increments``; the whole ledger:
    ``salespulse audit``)."""
    from orchestration.increments import evaluate_increment
    from salespulse.integrity import ledger_gaps_since, ledger_rows_since
    from salespulse.ops.audit import Discontinuity

    def evaluate(cur, increment):
        found = [Discontinuity(*row) for row in ledger_gaps_since(cur, increment.since, increment.pending)]
        batches = ledger_rows_since(cur, increment.since)
        return (found, batches), [[d.consumer_group, d.topic, d.topic_incarnation, d.partition, d.found_first]
                                  for d in found]

    with postgres.connection() as conn:
        (found, batches), increment = evaluate_increment(conn, "ingest_ledger_contiguous",
                                                         _margin(postgres), evaluate)
    results = []
    for name, (topic, _tables) in INTEGRITY_ASSETS.items():
        mine = [d for d in found if name in _owner(d.topic, 0)]
        n, messages = batches.get(topic, (0, 0))
        rechecked = sum(1 for k in increment.pending if name in _owner(k[1], 0))
        results.append(AssetCheckResult(
            asset_key=RAW_TABLE_KEYS[name],
            check_name="ingest_ledger_contiguous",
            passed=not mine,
            description=(f"{len(mine)} gap(s)/overlap(s) in the ingest ledger of {topic}" if mine else
                         f"{topic}: {n} new ledger ranges ({messages} messages), contiguous per partition")
                        + f"; ledger rows recorded {_since_text(increment, rechecked)}",
            metadata={
                "discontinuities": MetadataValue.int(len(mine)),
                "ledger_rows": MetadataValue.int(n),
                "messages": MetadataValue.int(messages),
                **_scope(increment, rechecked),
                "gaps": _markdown(("kind", "group", "topic", "incarnation", "partition", "expected_first",
                                   "found_first"),
                                  [(d.kind, d.consumer_group, d.topic, d.topic_incarnation or "-", d.partition,
                                    d.expected_first, d.found_first) for d in mine]),
            },
        ))
    return results


def consistency_results(postgres: PostgresResource) -> list[AssetCheckResult]:
    """``raw_tables_consistent`` for each integrity asset, over the event-time
    minutes of the rows ingested since the last evaluation and the minutes
    where it found violations before (``orchestration.increments``; the whole
    tables: ``salespulse audit``)."""
    from orchestration.increments import evaluate_increment, minutes_of
    from salespulse.integrity import consistency_violations_in, ingested_minutes

    def evaluate(cur, increment):
        new = {name: ingested_minutes(cur, name, increment.since) for name in INTEGRITY_ASSETS}
        again = {name: minutes_of([m for d, m in increment.pending if d == name]) for name in INTEGRITY_ASSETS}
        minutes = {name: set(new[name]) | set(again[name]) for name in INTEGRITY_ASSETS}
        found = consistency_violations_in(cur, minutes["events"], minutes["orders"])
        pending = sorted({(name, floor_minute(v[4].astimezone(timezone.utc)).isoformat())
                          for v in found for name in _owner(v[1], 1)}, key=lambda p: p[1])
        return (new, minutes, found), [list(p) for p in pending]

    with postgres.connection() as conn:
        (new, minutes, found), increment = evaluate_increment(conn, "raw_tables_consistent",
                                                              _margin(postgres), evaluate)
    results = []
    for name, (_topic, tables) in INTEGRITY_ASSETS.items():
        mine = [v[:4] for v in found if name in _owner(v[1], 1)]
        ingested = sum(new[name].values())
        rechecked = sum(1 for domain, _minute in increment.pending if domain == name)
        results.append(AssetCheckResult(
            asset_key=RAW_TABLE_KEYS[name],
            check_name="raw_tables_consistent",
            passed=not mine,
            description=(f"{len(mine)} disagreement(s) between {' / '.join(sorted(tables))}" if mine else
                         f"{' / '.join(sorted(tables))} agree")
                        + f" in the {len(minutes[name])} event-time minute(s) of the {ingested} {name} "
                          f"ingested {_since_text(increment, rechecked)}",
            metadata={
                "violations": MetadataValue.int(len(mine)),
                "rows_ingested": MetadataValue.int(ingested),
                "minutes_checked": MetadataValue.int(len(minutes[name])),
                **_scope(increment, rechecked),
                "first_violations": _markdown(("check", "table", "key", "detail"), mine),
            },
        ))
    return results


def _margin(postgres: PostgresResource) -> timedelta:
    """Clock margin of the ``ingested_at`` bound (``LATE_ROWS_MARGIN_SECONDS``,
    shared with the new-data sensor)."""
    return timedelta(seconds=postgres.settings().late_rows_margin_seconds)


@asset_check(asset="dead_letters", name="dead_letter_rate",
             description=f"Dead letters are at most DEAD_LETTER_MAX_RATE (default {_MAX_RATE_DEFAULT:.0%}) of the "
                         "last hour's messages.")
def dead_letter_rate_check(postgres: PostgresResource) -> AssetCheckResult:
    return dead_letter_rate(postgres, postgres.settings().dead_letter_max_rate)


def per_raw_table_check(name: str, describe, results):
    """The check ``name`` on every raw table of :data:`INTEGRITY_ASSETS`, in one
    evaluation: ``describe(topic, tables)`` gives each spec's description,
    ``results(postgres)`` the results of all of them."""

    @multi_asset_check(specs=[AssetCheckSpec(name, asset=RAW_TABLE_KEYS[table], description=describe(topic, tables))
                              for table, (topic, tables) in INTEGRITY_ASSETS.items()], name=name)
    def check(postgres: PostgresResource):
        yield from results(postgres)

    return check


ingest_ledger_contiguous = per_raw_table_check(
    "ingest_ledger_contiguous",
    lambda topic, _tables: (f"The consumer's ingest_ledger ranges of {topic} follow each other per partition, "
                            "without a gap or an overlap: the ranges recorded since the last evaluation and "
                            "their neighbours (see docs/audit.md)."),
    ledger_gap_results)
raw_tables_consistent = per_raw_table_check(
    "raw_tables_consistent",
    lambda _topic, tables: (f"{' / '.join(sorted(tables))} agree: every purchase has its transaction, every order "
                            "its items, counts and totals match, in the event-time minutes of the rows ingested "
                            "since the last evaluation (see docs/audit.md)."),
    consistency_results)


integrity_checks = [ingest_ledger_contiguous, raw_tables_consistent]

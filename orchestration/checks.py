"""Asset checks.

In every refresh run, for the run's hourly partition (or the last hour when
executed on their own):

* ``revenue_reconciles`` — the report's revenue equals plain-SQL revenue
  (``orchestration.reports.sql_reference.sql_revenue``) over the same window;
* ``windows_complete`` — every minute with raw events/orders has a report row.

Both stop at the report's cut-off: the minute boundary at least
``CUTOFF_GRACE`` before the rows were computed, so rows still arriving for the
open minute are never counted against it.

In the health-check job (every five minutes):

* ``reports_fresh`` — the domain's freshness by the dashboard's rule
  (``salespulse.freshness``, targets ``FRESHNESS_*``): rows visible, newest
  report window, consumer lag; ``late`` fails with severity WARN, ``stale``
  with ERROR (also evaluated every minute by ``freshness_sensor``);
* ``dead_letter_rate`` — dead letters are at most ``DEAD_LETTER_MAX_RATE`` of
  the messages of the last hour;
* ``ingest_ledger_contiguous`` — the consumer's ``ingest_ledger`` ranges of
  every partition follow each other without a gap or an overlap;
* ``raw_tables_consistent`` — ``events``/``transactions`` and
  ``orders``/``order_items`` agree (``salespulse.integrity.CONSISTENCY_SQL``).

These two are incremental (``orchestration.increments``): each evaluation
looks at what was ingested since the previous one (and at what it found wrong
before, until fixed), so its cost does not grow with history; the whole
tables are ``salespulse audit``'s.

The last two are checks on the raw tables each topic feeds (``events`` for
``ecommerce.events``, ``orders`` for ``restaurant.orders``): one query each,
whose rows are split by domain, so a failure shows on the domain it hit.
"""


from datetime import datetime, timedelta, timezone
from decimal import Decimal

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    MetadataValue,
    asset_check,
    multi_asset_check,
)

from orchestration.assets.reports import REPORT_ASSET_BY_DOMAIN
from orchestration.assets.sources import RAW_TABLE_KEYS
from orchestration.reports import REPORT_DOMAINS
from orchestration.resources import PostgresResource
from orchestration.run_checks import run_checks
from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC
from salespulse.freshness import Targets, cursor_query, measure_all
from salespulse.settings import get_settings

DEAD_LETTER_MAX_RATE = get_settings().dead_letter_max_rate
CUTOFF_GRACE = timedelta(seconds=60)


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def check_window(context: AssetCheckExecutionContext) -> tuple[datetime, datetime]:
    """The run's partition window, or the last full hour of minutes."""
    op_context = context.op_execution_context
    if op_context.has_partition_key or op_context.has_partition_key_range:
        window = op_context.partition_time_window
        return window.start, window.end
    end = _floor_minute(datetime.now(timezone.utc))
    return end - timedelta(hours=1), end


def report_cutoff(cur, report_table: str, start: datetime, end: datetime) -> datetime:
    """End of the part of ``[start, end)`` the report can be held to."""
    cur.execute(
        f"SELECT min(computed_at) FROM {report_table} WHERE window_start >= %s AND window_start < %s",
        (start, end),
    )
    computed = cur.fetchone()[0] or datetime.now(timezone.utc)
    return max(start, min(end, _floor_minute(computed - CUTOFF_GRACE)))


def reconcile_revenue(postgres: PostgresResource, domain: str, start: datetime, end: datetime) -> AssetCheckResult:
    from orchestration.reports.sql_reference import sql_revenue

    report_table = REPORT_DOMAINS[domain].overview
    with postgres.connection() as conn, conn.cursor() as cur:
        cutoff = report_cutoff(cur, report_table, start, end)
        cur.execute(
            f"SELECT COALESCE(sum(revenue), 0) FROM {report_table} WHERE window_start >= %s AND window_start < %s",
            (start, cutoff),
        )
        report = Decimal(cur.fetchone()[0])
        expected = Decimal(sql_revenue(conn, domain, start, cutoff))
    return AssetCheckResult(
        passed=report == expected,
        description=f"report revenue {report} vs SQL revenue {expected} over [{start}, {cutoff})",
        metadata={
            "report_revenue": MetadataValue.float(float(report)),
            "sql_revenue": MetadataValue.float(float(expected)),
            "difference": MetadataValue.float(float(report - expected)),
            "window_start": MetadataValue.text(start.isoformat()),
            "window_end": MetadataValue.text(cutoff.isoformat()),
        },
    )


def missing_windows(postgres: PostgresResource, domain: str, start: datetime, end: datetime) -> AssetCheckResult:
    reports = REPORT_DOMAINS[domain]
    raw_table, report_table = reports.raw_table, reports.overview
    with postgres.connection() as conn, conn.cursor() as cur:
        cutoff = report_cutoff(cur, report_table, start, end)
        cur.execute(
            f"""
            SELECT m.minute, m.n
            FROM (SELECT date_trunc('minute', "timestamp") AS minute, count(*) AS n
                  FROM {raw_table} WHERE "timestamp" >= %s AND "timestamp" < %s GROUP BY 1) m
            LEFT JOIN {report_table} r ON r.window_start = m.minute
            WHERE r.window_start IS NULL
            ORDER BY 1
            """,
            (start, cutoff),
        )
        missing = cur.fetchall()
        cur.execute(
            f"""SELECT count(DISTINCT date_trunc('minute', "timestamp")) FROM {raw_table}
                WHERE "timestamp" >= %s AND "timestamp" < %s""",
            (start, cutoff),
        )
        minutes_with_data = cur.fetchone()[0]
    return AssetCheckResult(
        passed=not missing,
        description=(
            f"{len(missing)} of {minutes_with_data} minutes with {raw_table} rows have no report row "
            f"in [{start}, {cutoff})"
        ),
        metadata={
            "minutes_with_data": MetadataValue.int(minutes_with_data),
            "missing_windows": MetadataValue.int(len(missing)),
            "first_missing": MetadataValue.text(", ".join(m.isoformat() for m, _ in missing[:10])),
        },
    )


def report_freshness(postgres: PostgresResource, domain: str) -> AssetCheckResult:
    """The domain's freshness by the dashboard's own rule (``salespulse.freshness``,
    targets ``FRESHNESS_*``): ``late`` fails with severity WARN, ``stale`` with ERROR."""
    targets = Targets.from_settings(postgres.settings())
    with postgres.connection() as conn, conn.cursor() as cur:
        found = measure_all(cursor_query(cur), targets, [domain])["domains"][domain]
    return freshness_result(found)


def freshness_result(found: dict) -> AssetCheckResult:
    """An evaluation of ``reports_fresh`` from one domain's :func:`salespulse.freshness.measure`."""
    rows, reports, lag = found["rows"], found["reports"], found["lag"]

    def text(value) -> MetadataValue:
        return MetadataValue.text("none" if value is None else
                                  value.isoformat() if isinstance(value, datetime) else str(value))

    parts = [
        f"rows visible p95 {rows['p95_s']} s (target {rows['target_s']} s): {rows['state']}",
        f"reports {reports['behind_s']} s behind the newest event (target {reports['target_s']} s)"
        + ("" if reports["has_window"] else ", no report window") + f": {reports['state']}",
        f"consumer lag {lag['messages']} (target {lag['target_messages']}): {lag['state']}",
    ]
    state = found["state"]
    return AssetCheckResult(
        passed=state in ("ok", "unknown"),
        severity=AssetCheckSeverity.ERROR if state == "stale" else AssetCheckSeverity.WARN,
        description=f"{found['domain']} freshness {state.upper()}: " + "; ".join(parts),
        metadata={
            "state": MetadataValue.text(state),
            "rows_state": MetadataValue.text(rows["state"]),
            "rows_p50_s": text(rows["p50_s"]),
            "rows_p95_s": text(rows["p95_s"]),
            "rows_samples": MetadataValue.int(rows["samples"]),
            "rows_target_s": MetadataValue.float(rows["target_s"]),
            "reports_state": MetadataValue.text(reports["state"]),
            "newest_report_window": text(reports["newest_window_start"]),
            "reports_as_of": text(reports["as_of"]),
            "reports_behind_s": text(reports["behind_s"]),
            "reports_target_s": MetadataValue.float(reports["target_s"]),
            "lag_state": MetadataValue.text(lag["state"]),
            "lag_messages": text(lag["messages"]),
            "lag_observed_at": text(lag["observed_at"]),
            "lag_target_messages": MetadataValue.int(lag["target_messages"]),
            "reports_stale_after_s": MetadataValue.float(reports["stale_after_s"]),
        },
    )


def dead_letter_rate(postgres: PostgresResource, max_rate: float, hours: int = 1) -> AssetCheckResult:
    since = datetime.now(timezone.utc) - timedelta(hours=hours)
    with postgres.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM dead_letters WHERE received_at >= %s", (since,))
        dead = cur.fetchone()[0]
        cur.execute('SELECT count(*) FROM events WHERE "timestamp" >= %s', (since,))
        events = cur.fetchone()[0]
        cur.execute('SELECT count(*) FROM orders WHERE "timestamp" >= %s', (since,))
        orders = cur.fetchone()[0]
    total = dead + events + orders
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
        pending = sorted({(name, _floor_minute(v[4].astimezone(timezone.utc)).isoformat())
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


# --- the checks -------------------------------------------------------------

def window_check(domain: str, name: str, description: str, evaluate):
    """The check ``name`` of ``domain``'s report asset: ``evaluate(postgres,
    domain, start, end)`` over the run's partition window (:func:`check_window`)."""

    @asset_check(asset=REPORT_ASSET_BY_DOMAIN[domain], name=name, description=description)
    def check(context: AssetCheckExecutionContext, postgres: PostgresResource) -> AssetCheckResult:
        return evaluate(postgres, domain, *check_window(context))

    return check


def freshness_check(domain: str, description: str):
    """``reports_fresh`` of ``domain``'s report asset (:func:`report_freshness`)."""

    @asset_check(asset=REPORT_ASSET_BY_DOMAIN[domain], name="reports_fresh", description=description)
    def check(postgres: PostgresResource) -> AssetCheckResult:
        return report_freshness(postgres, domain)

    return check


#: domain -> its check (one per catalogued domain)
REVENUE_RECONCILES = {
    domain: window_check(domain, "revenue_reconciles",
                         f"Report revenue equals plain-SQL revenue ({reports.domain.revenue_table}) over the "
                         "partition's window.", reconcile_revenue)
    for domain, reports in REPORT_DOMAINS.items()}
WINDOWS_COMPLETE = {
    domain: window_check(domain, "windows_complete",
                         f"Every minute of the window that has {reports.raw_table} has an overview report row.",
                         missing_windows)
    for domain, reports in REPORT_DOMAINS.items()}
REPORTS_FRESH = {
    domain: freshness_check(domain, f"{reports.domain.title} freshness, by the rule and FRESHNESS_* targets of the "
                                    "dashboard's /api/pipeline/freshness: rows visible (p95, last minute), newest "
                                    "report window behind the newest event, consumer lag. Late: WARN; stale: ERROR.")
    for domain, reports in REPORT_DOMAINS.items()}
ecommerce_revenue_reconciles, restaurant_revenue_reconciles = REVENUE_RECONCILES["ecommerce"], REVENUE_RECONCILES["restaurant"]
ecommerce_windows_complete, restaurant_windows_complete = WINDOWS_COMPLETE["ecommerce"], WINDOWS_COMPLETE["restaurant"]
ecommerce_reports_fresh, restaurant_reports_fresh = REPORTS_FRESH["ecommerce"], REPORTS_FRESH["restaurant"]


@asset_check(asset="dead_letters", name="dead_letter_rate",
             description=f"Dead letters are at most DEAD_LETTER_MAX_RATE ({DEAD_LETTER_MAX_RATE:.0%}) of the last hour's messages.")
def dead_letter_rate_check(postgres: PostgresResource) -> AssetCheckResult:
    return dead_letter_rate(postgres, DEAD_LETTER_MAX_RATE)


@multi_asset_check(
    specs=[AssetCheckSpec("ingest_ledger_contiguous", asset=RAW_TABLE_KEYS[name],
                          description=f"The consumer's ingest_ledger ranges of {topic} follow each other per "
                                      "partition, without a gap or an overlap: the ranges recorded since the "
                                      "last evaluation and their neighbours (see docs/audit.md).")
           for name, (topic, _tables) in INTEGRITY_ASSETS.items()],
    name="ingest_ledger_contiguous",
)
def ingest_ledger_contiguous(postgres: PostgresResource):
    yield from ledger_gap_results(postgres)


@multi_asset_check(
    specs=[AssetCheckSpec("raw_tables_consistent", asset=RAW_TABLE_KEYS[name],
                          description=f"{' / '.join(sorted(tables))} agree: every purchase has its transaction, "
                                      "every order its items, counts and totals match, in the event-time minutes "
                                      "of the rows ingested since the last evaluation (see docs/audit.md).")
           for name, (_topic, tables) in INTEGRITY_ASSETS.items()],
    name="raw_tables_consistent",
)
def raw_tables_consistent(postgres: PostgresResource):
    yield from consistency_results(postgres)


integrity_checks = [ingest_ledger_contiguous, raw_tables_consistent]
window_checks = [*REVENUE_RECONCILES.values(), *WINDOWS_COMPLETE.values()]
health_checks = [*REPORTS_FRESH.values(), dead_letter_rate_check, *integrity_checks,
                 *run_checks]
all_checks = [*window_checks, *health_checks]

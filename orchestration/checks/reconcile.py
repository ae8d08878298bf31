"""Reconciliation every minute (``pipeline_checks_job``), over the last
``RECONCILE_MINUTES`` (60) closed minutes.

``reports_reconcile`` (on each report asset): per minute, the overview report
row against the same figures computed with plain SQL from the raw tables —
e-commerce ``events``, ``purchases``, ``add_to_carts``, ``remove_from_carts``
(from ``events``), ``revenue``, ``units`` (from ``transactions``); restaurant
``orders``, ``revenue`` (from ``orders``) and ``items_sold`` (from
``order_items``). A minute is held to its report row only once that row is
*settled*: computed at least ``CUTOFF_GRACE`` (60 s) after both the minute's
end and the ingestion of the minute's newest raw row (the report could not
see rows that came later). Then

* settled and different → ``mismatch``;
* not settled (no row, or rows arrived after it was computed: late data not
  restated yet) for longer than ``RECONCILE_PENDING_MINUTES`` (5) → ``missing`` /
  ``stale``; before that the minute is *pending* (counted, not failing).

``ledger_reconciles`` (on ``events`` and ``orders``): the raw tables against
the consumer's ``ingest_ledger`` per minute of the ledger's ``recorded_at``,
over the minutes whose ranges are still one per batch (not rolled up nor
trimmed: ``LEDGER_ROLLUP_MINUTES``, ``LEDGER_RETENTION_DAYS``).
What can be compared exactly, given de-duplication:

* a ledger row's ``messages = stored + duplicates + dead_lettered`` (also a
  CHECK of the table: a violation means the table was altered);
* ``stored`` counts the rows the batch actually *inserted* (``ON CONFLICT DO
  NOTHING`` ... ``RETURNING``): duplicates and re-sends add nothing, so the
  rows present must equal ``stored``. Rows carry no batch id, but a batch's
  rows and its ledger rows are written in ONE transaction, so they share its
  transaction id (``xmin``): a row belongs to the minute of the ledger row
  with its ``xmin``. Only rows the consumer wrote are counted (``content_hash``
  set: rows seeded by SQL or stored before sql/040 have none). Rows stored
  under a savepoint (the rare isolation path of a batch with a rejected
  message) carry a subtransaction id; they go to the minute of the first
  ledger row of the topic recorded at or after their ``ingested_at`` (their
  own batch's ledger row is written after them in the same transaction; only
  another consumer's batch recorded in between, across a minute boundary, can
  make that a neighbouring minute: +n/-n in two adjacent minutes);
* ``dead_lettered`` counts the batch's dead letters *new or stored before*
  (``dead_letters`` is unique per topic incarnation, partition, offset and
  payload), so dead-letter rows of the batches of the ingestion group
  (``CONSUMER_GROUP``) equal their ``dead_lettered``, while another group (a
  replay) may count dead letters already stored: for those, rows may only be
  fewer. Anywhere, more dead-letter rows than counted is a mismatch.

Everything is read in one REPEATABLE READ snapshot, so a batch is seen whole
(rows and ledger) or not at all; the minute of the newest ledger row is
compared like the others.
"""


from datetime import timedelta
from decimal import Decimal

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSpec, asset_check, multi_asset_check

from orchestration.assets.reports import REPORT_ASSET_BY_DOMAIN
from orchestration.assets.sources import RAW_TABLE_KEYS
from orchestration.checks.outcomes import Verdict, conclude
from orchestration.checks.window import CUTOFF_GRACE, floor_minute
from orchestration.reports.sql_reference import ECOMMERCE_MINUTE_SQL
from orchestration.resources import PostgresResource
from salespulse.catalog import DOMAINS
from salespulse.ledger import detail_since
from salespulse.settings import Settings

#: the default of RECONCILE_MINUTES, for the descriptions (the checks read the resource's settings)
_MINUTES_DEFAULT = Settings.model_fields["reconcile_minutes"].default

# --- reports vs raw tables -----------------------------------------------------

#: per domain: the raw figures per minute (plus the newest ingestion of the
#: minute) and the report's overview table with the same columns
_RAW_SQL = {
    "ecommerce": f"""
        SELECT minute, events, purchases, add_to_carts, remove_from_carts, revenue, units, last_ingested
        FROM ({ECOMMERCE_MINUTE_SQL}) m""",
    "restaurant": """
        SELECT o.minute, o.orders, o.revenue, COALESCE(i.items_sold, 0) AS items_sold, o.last_ingested
        FROM (SELECT date_trunc('minute', "timestamp") AS minute, count(*) AS orders,
                     sum(total_amount) AS revenue, max(ingested_at) AS last_ingested
              FROM orders WHERE "timestamp" >= %(start)s AND "timestamp" < %(end)s GROUP BY 1) o
        LEFT JOIN (SELECT date_trunc('minute', o."timestamp") AS minute, sum(i.quantity) AS items_sold
                   FROM order_items i JOIN orders o ON o."timestamp" = i."timestamp" AND o.order_id = i.order_id
                   WHERE o."timestamp" >= %(start)s AND o."timestamp" < %(end)s
                     AND i."timestamp" >= %(start)s AND i."timestamp" < %(end)s GROUP BY 1) i USING (minute)""",
}
FIGURES = {
    "ecommerce": ("events", "purchases", "add_to_carts", "remove_from_carts", "revenue", "units"),
    "restaurant": ("orders", "revenue", "items_sold"),
}


def _number(value):
    """Figures as JSON numbers: counts as int, money as float (compared as Decimal)."""
    if value is None:
        return 0
    return float(value) if isinstance(value, Decimal) else int(value)


def _snapshot(conn):
    conn.set_session(readonly=True, isolation_level="REPEATABLE READ")


def reconcile_reports(postgres: PostgresResource, domain: str, minutes: int | None = None,
                      pending_minutes: int | None = None) -> Verdict:
    settings = postgres.settings()
    minutes = settings.reconcile_minutes if minutes is None else minutes
    pending_minutes = settings.reconcile_pending_minutes if pending_minutes is None else pending_minutes
    figures = FIGURES[domain]
    with postgres.connection() as conn:
        _snapshot(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT now()")
            now = cur.fetchone()[0]
            end = floor_minute(now)
            start = end - timedelta(minutes=minutes)
            params = {"start": start, "end": end}
            cur.execute(_RAW_SQL[domain], params)
            raw = {row[0]: row[1:] for row in cur.fetchall()}
            cur.execute(f"""SELECT window_start, {', '.join(figures)}, computed_at FROM {DOMAINS[domain].overview}
                            WHERE window_start >= %(start)s AND window_start < %(end)s""", params)
            report = {row[0]: row[1:] for row in cur.fetchall()}
    windows, pending, settled = [], [], 0
    zero = (0,) * len(figures)
    for minute in sorted(set(raw) | set(report)):
        raw_values, last_ingested = (raw[minute][:-1], raw[minute][-1]) if minute in raw else (zero, None)
        rep = report.get(minute)
        rep_values, computed_at = (rep[:-1], rep[-1]) if rep else (zero, None)
        if tuple(map(Decimal, raw_values)) == tuple(map(Decimal, rep_values)):
            settled += 1
            continue
        minute_end = minute + timedelta(minutes=1)
        needed = max(minute_end, last_ingested or minute_end)  # the report must have been computed after this
        window = {"key": minute.isoformat(), "start": minute, "end": minute_end,
                  "raw": dict(zip(figures, map(_number, raw_values))),
                  "report": dict(zip(figures, map(_number, rep_values))) if rep else None,
                  "computed_at": computed_at, "last_ingested": last_ingested}
        if computed_at is not None and computed_at - CUTOFF_GRACE >= needed:
            windows.append({**window, "kind": "mismatch",
                            "differs": [f for f, a, b in zip(figures, raw_values, rep_values)
                                        if Decimal(a) != Decimal(b)]})
        elif now - needed > timedelta(minutes=pending_minutes):
            windows.append({**window, "kind": "missing" if rep is None else "stale"})
        else:
            pending.append(minute.isoformat())
    table = DOMAINS[domain].overview
    if windows:
        kinds = sorted({w["kind"] for w in windows})
        description = (f"{len(windows)} minute(s) of {table} disagree with the raw tables ({', '.join(kinds)}), "
                       f"first {windows[0]['start']:%Y-%m-%d %H:%M} UTC, in [{start:%H:%M}, {end:%H:%M})")
    else:
        description = (f"{table} agrees with the raw tables in every settled minute of "
                       f"[{start:%H:%M}, {end:%H:%M}) UTC ({settled} agree, {len(pending)} pending)")
    return Verdict(passed=not windows, description=description, windows=windows,
                   details={"window_start": start, "window_end": end, "minutes_agreeing": settled,
                            "minutes_pending": len(pending), "pending": pending[:20]})


def reports_reconcile_check(domain: str):
    report_asset = REPORT_ASSET_BY_DOMAIN[domain]

    @asset_check(asset=report_asset, name="reports_reconcile", description=(
        f"Every minute: each settled minute of the last RECONCILE_MINUTES (default {_MINUTES_DEFAULT}) of "
        f"{DOMAINS[domain].overview} equals plain SQL over the raw tables ({', '.join(FIGURES[domain])}); a late "
        f"row not restated within RECONCILE_PENDING_MINUTES fails it too."))
    def check(context: AssetCheckExecutionContext, postgres: PostgresResource) -> AssetCheckResult:
        return conclude(context, postgres, report_asset.key, "reports_reconcile", reconcile_reports(postgres, domain))

    return check


ecommerce_reports_reconcile = reports_reconcile_check("ecommerce")
restaurant_reports_reconcile = reports_reconcile_check("restaurant")

# --- raw tables vs ingest ledger ----------------------------------------------

#: raw-table asset -> (its topic, the table the topic's messages are stored in)
LEDGER_TABLES = {d.raw_table: (d.topic, d.raw_table) for d in DOMAINS.values()}
#: how long before its ledger row a batch's rows may have been written (statement timeout 60 s, retries)
BATCH_SPAN = timedelta(minutes=10)

_LEDGER_SQL = """
WITH l AS (
    SELECT xid, date_trunc('minute', recorded_at) AS minute, recorded_at,
           consumer_group = %(group)s AS main, messages, stored, duplicates, dead_lettered
    FROM ingest_ledger WHERE topic = %(topic)s AND recorded_at >= %(start)s AND NOT trimmed
), lx AS (
    SELECT xid, min(minute) AS minute, bool_or(main) AS main FROM l GROUP BY xid
), led AS (
    SELECT minute, count(*) AS batches, sum(messages) AS messages, sum(stored) AS stored,
           sum(duplicates) AS duplicates, sum(dead_lettered) AS dead_lettered,
           COALESCE(sum(dead_lettered) FILTER (WHERE main), 0) AS dead_lettered_main
    FROM l GROUP BY 1
), r AS (
    SELECT COALESCE(lx.minute, (SELECT minute FROM l WHERE l.recorded_at >= r.ingested_at
                                ORDER BY l.recorded_at LIMIT 1),
                    date_trunc('minute', r.ingested_at)) AS minute, count(*) AS rows_present
    FROM {table} r LEFT JOIN lx ON lx.xid = r.xmin::text::bigint
    WHERE r.content_hash IS NOT NULL AND r.ingested_at >= %(scan_from)s
      AND (lx.xid IS NOT NULL OR r.ingested_at >= %(start)s)
    GROUP BY 1
), d AS (
    SELECT COALESCE(lx.minute, (SELECT minute FROM l WHERE l.recorded_at >= d.received_at
                                ORDER BY l.recorded_at LIMIT 1),
                    date_trunc('minute', d.received_at)) AS minute, count(*) AS dead_rows,
           count(*) FILTER (WHERE lx.main) AS dead_rows_main
    FROM dead_letters d LEFT JOIN lx ON lx.xid = d.xmin::text::bigint
    WHERE d.topic = %(topic)s AND d.received_at >= %(scan_from)s
      AND (lx.xid IS NOT NULL OR d.received_at >= %(start)s)
    GROUP BY 1
)
SELECT minute, COALESCE(batches, 0), COALESCE(messages, 0), COALESCE(stored, 0), COALESCE(duplicates, 0),
       COALESCE(dead_lettered, 0), COALESCE(dead_lettered_main, 0), COALESCE(rows_present, 0),
       COALESCE(dead_rows, 0), COALESCE(dead_rows_main, 0)
FROM led FULL JOIN r USING (minute) FULL JOIN d USING (minute)
ORDER BY minute
"""
_LEDGER_COLUMNS = ("batches", "messages", "stored", "duplicates", "dead_lettered", "dead_lettered_main",
                   "rows_present", "dead_letter_rows", "dead_letter_rows_main")


def ledger_problems(row: dict) -> list[str]:
    problems = []
    if row["messages"] != row["stored"] + row["duplicates"] + row["dead_lettered"]:
        problems.append("messages != stored + duplicates + dead_lettered")
    if row["rows_present"] != row["stored"]:
        problems.append(f"{row['rows_present']} rows present, ledger stored {row['stored']}")
    if row["dead_letter_rows"] > row["dead_lettered"]:
        problems.append(f"{row['dead_letter_rows']} dead-letter rows, ledger dead-lettered {row['dead_lettered']}")
    elif row["dead_letter_rows_main"] != row["dead_lettered_main"]:
        problems.append(f"{row['dead_letter_rows_main']} dead-letter rows of the ingestion group's batches, "
                        f"its ledger dead-lettered {row['dead_lettered_main']}")
    return problems


def reconcile_ledger(postgres: PostgresResource, name: str, minutes: int | None = None) -> Verdict:
    settings = postgres.settings()
    minutes = settings.reconcile_minutes if minutes is None else minutes
    topic, table = LEDGER_TABLES[name]
    with postgres.connection() as conn:
        _snapshot(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT now()")
            now = cur.fetchone()[0]
            start = floor_minute(now) - timedelta(minutes=minutes)
            # ranges rolled up or trimmed (sql/130) no longer carry their batch's
            # transaction: only the minutes still held one range per batch
            start = max(start, floor_minute(detail_since(settings, now)) + timedelta(minutes=1))
            cur.execute(_LEDGER_SQL.format(table=table), {"topic": topic, "start": start,
                                                         "scan_from": start - BATCH_SPAN,
                                                         "group": settings.consumer_group})
            rows = [dict(zip(("minute", *_LEDGER_COLUMNS), r)) for r in cur.fetchall()]
    windows = []
    for row in rows:
        problems = ledger_problems(row)
        if problems:
            minute = row.pop("minute")
            windows.append({"key": minute.isoformat(), "start": minute, "end": minute + timedelta(minutes=1),
                            "kind": "ledger", "problems": problems, **{k: int(v) for k, v in row.items()}})
    totals = {c: int(sum(r[c] for r in rows)) for c in _LEDGER_COLUMNS}
    if windows:
        description = (f"{len(windows)} minute(s) where {table} and the ingest ledger of {topic} disagree, first "
                       f"{windows[0]['start']:%Y-%m-%d %H:%M} UTC: {'; '.join(windows[0]['problems'])}")
    else:
        description = (f"{table} agrees with the ingest ledger of {topic} since {start:%H:%M} UTC: "
                       f"{totals['messages']} messages = {totals['stored']} stored + {totals['duplicates']} "
                       f"duplicates + {totals['dead_lettered']} dead-lettered; {totals['rows_present']} rows present")
    return Verdict(passed=not windows, description=description, windows=windows,
                   details={"window_start": start, **totals})


@multi_asset_check(
    specs=[AssetCheckSpec("ledger_reconciles", asset=RAW_TABLE_KEYS[name], description=(
        f"Every minute, per minute of the last RECONCILE_MINUTES: the {table} rows the consumer stored equal the "
        f"ingest ledger's `stored` for {topic} (matched by transaction), dead-letter rows its `dead_lettered`, "
        "and messages = stored + duplicates + dead_lettered (see docs/orchestration.md)."))
        for name, (topic, table) in LEDGER_TABLES.items()],
    name="ledger_reconciles",
)
def ledger_reconciles(context: AssetCheckExecutionContext, postgres: PostgresResource):
    for name in LEDGER_TABLES:
        yield conclude(context, postgres, RAW_TABLE_KEYS[name], "ledger_reconciles", reconcile_ledger(postgres, name))


reconcile_checks = [ecommerce_reports_reconcile, restaurant_reports_reconcile, ledger_reconciles]

"""Drill-down: from a figure of the dashboard to the rows behind it.

A *figure* is one report's value for a span of minute windows, e.g.
"Electronics revenue, 14:05" = report ``category`` of domain ``ecommerce``,
``window_start=14:05``, ``minutes=1``, ``value=Electronics``. For it the API
answers with

* the report rows of the span (and their totals): what the chart showed;
* the Dagster run that computed each window (``report_refreshes``, written in
  the refresh's own transaction), linked to the Dagster UI run page;
* the raw events or orders the report counted, paged, each with its Kafka
  topic, partition and offset (``kafka_partition``/``kafka_offset``, NULL for
  rows stored before they were recorded);

and ``/api/drilldown/raw.csv`` streams the same raw rows as CSV (bounded).

The raw rows follow the report code's own definitions (``orchestration/reports``):
a row belongs to the window holding its ``"timestamp"``; e-commerce sales are
purchases (their ``transactions`` row) with the product's current category;
restaurant category and item figures count the orders with a line of that
category or item (``matched_quantity``/``matched_revenue`` are those lines).
Every query is bounded by the span on the raw tables' ``"timestamp"`` index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterator, Literal
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, request, stream_with_context
from pydantic import Field, field_validator, model_validator

from dashboard.db import Database
from dashboard.params import EARLIEST, LATEST, MAX_SPAN, BadParameter, Params, _utc, parse
from salespulse.catalog import DOMAINS, Report
from salespulse.csv_safe import csv_line  # formula-safe cells (OWASP CSV injection)
from salespulse.settings import Settings

MINUTE = timedelta(minutes=1)
MAX_MINUTES = int(MAX_SPAN / MINUTE)  # 31 days, as every other window of the API
MAX_PAGE = 500
MAX_OFFSET = 100_000
MAX_CSV_ROWS = 100_000
CSV_PAGE = 5_000  # rows per query while streaming the CSV (keyset pages)
MAX_REPORT_ROWS = 60  # newest report windows listed (totals cover the whole span)

Domain = Literal[tuple(DOMAINS)]
ReportName = Literal[tuple(dict.fromkeys(r.name for d in DOMAINS.values() for r in d.reports))]
EventType = Literal["page_view", "search", "add_to_cart", "remove_from_cart", "purchase"]


@dataclass(frozen=True)
class ReportSpec:
    """One report of a domain (its table, the column a figure's ``value``
    selects and the columns that add up over windows: ``salespulse/catalog.py``)
    and how to narrow its raw rows to a figure's."""

    report: Report
    raw_table: str  # the domain's raw table: "events" or "orders"
    raw_join: str = ""  # joins narrowing the raw rows to the figure's (may use %(value)s)
    raw_where: str = ""  # extra condition (may use %(value)s)
    matched: bool = False  # restaurant lines of the category/item: matched_quantity, matched_revenue

    @property
    def table(self) -> str:
        return self.report.table

    @property
    def dimension(self) -> str | None:
        return self.report.dimension

    @property
    def additive(self) -> tuple[str, ...]:
        return self.report.additive


# the timestamp in each join: the partition key (sql/100), so one month partition is read
_PURCHASE = ('JOIN transactions t ON t."timestamp" = e."timestamp" AND t.event_id = e.event_id '
             "JOIN products p ON p.product_id = t.product_id")
_LINES = ("JOIN LATERAL (SELECT sum(i.quantity) AS quantity, sum(i.line_total) AS revenue FROM order_items i "
          "WHERE i.order_id = o.order_id AND i.\"timestamp\" = o.\"timestamp\" AND i.{column} = %(value)s) "
          "m ON m.quantity IS NOT NULL")  # the timestamp: order_items' partition key (sql/100)

#: (domain, report) -> how its raw rows are found (every report of the catalogue has one)
_RAW_ROWS = {
    ("ecommerce", "overview"): dict(raw_join='LEFT JOIN transactions t ON t."timestamp" = e."timestamp" '
                                             "AND t.event_id = e.event_id "
                                             "LEFT JOIN products p ON p.product_id = e.product_id"),
    ("ecommerce", "category"): dict(raw_join=_PURCHASE, raw_where="p.category = %(value)s"),
    ("ecommerce", "product"): dict(raw_join=_PURCHASE, raw_where="t.product_id = %(value)s"),
    ("restaurant", "overview"): {},
    ("restaurant", "channel"): dict(raw_where="o.channel = %(value)s"),
    ("restaurant", "category"): dict(raw_join=_LINES.format(column="category"), matched=True),
    ("restaurant", "item"): dict(raw_join=_LINES.format(column="item_id"), matched=True),
}
REPORTS: dict[tuple[str, str], ReportSpec] = {
    (d.name, r.name): ReportSpec(r, d.raw_table, **_RAW_ROWS[(d.name, r.name)])
    for d in DOMAINS.values() for r in d.reports}

TOPIC_OF = {d.raw_table: d.topic for d in DOMAINS.values()}
RAW_COLUMNS = {d.raw_table: d.raw_columns for d in DOMAINS.values()}
ORIGIN_COLUMNS = ("topic", "partition", "offset", "ingested_at")


# ------------------------------------------------------------------ parameters
class FigureParams(Params):
    """Which figure: a report of a domain, a span of minute windows, a dimension value."""

    domain: Domain = Field(..., description="ecommerce or restaurant.")
    report: ReportName = Field(..., description="ecommerce: overview, category, product; "
                                                "restaurant: overview, category, item, channel.")
    window_start: datetime = Field(..., description="First minute window (ISO-8601, naive = UTC; a whole minute).")
    minutes: int = Field(1, ge=1, le=MAX_MINUTES,
                         description=f"Number of minute windows from `window_start` (1..{MAX_MINUTES}, 31 days).")
    value: str | None = Field(None, min_length=1, max_length=200,
                              description="The dimension value (category, product_id, item_id or channel); "
                                          "required for those reports, not allowed for overview.")
    event_type: EventType | None = Field(None, description="ecommerce overview only: raw events of one type.")

    @field_validator("window_start")
    @classmethod
    def _whole_minute(cls, value: datetime) -> datetime:
        value = _utc(value)
        if not EARLIEST <= value <= LATEST:
            raise ValueError("must be between 2000-01-01 and 2100-01-01")
        if value.second or value.microsecond:
            raise ValueError("must be a whole minute (a report window starts on one)")
        return value

    @model_validator(mode="after")
    def _fits_the_report(self):
        spec = REPORTS.get((self.domain, self.report))
        if spec is None:
            known = ", ".join(r for d, r in REPORTS if d == self.domain)
            raise BadParameter("report", f"domain {self.domain} has no report {self.report!r} (known: {known})")
        if spec.dimension is None and self.value is not None:
            raise BadParameter("value", f"the {self.report} report has no dimension: leave `value` out")
        if spec.dimension is not None and self.value is None:
            raise BadParameter("value", f"the {self.report} report needs `value` (its {spec.dimension})")
        if self.event_type is not None and (self.domain, self.report) != ("ecommerce", "overview"):
            raise BadParameter("event_type", "`event_type` applies to the ecommerce overview only")
        return self

    @property
    def spec(self) -> ReportSpec:
        return REPORTS[(self.domain, self.report)]

    @property
    def window_end(self) -> datetime:
        return self.window_start + self.minutes * MINUTE

    def figure(self) -> dict:
        return {"domain": self.domain, "report": self.report, "window_start": self.window_start,
                "window_end": self.window_end, "minutes": self.minutes, "value": self.value,
                "event_type": self.event_type}

    def query_args(self) -> dict:
        """The figure's own query-string parameters (for the CSV link)."""
        args = {"domain": self.domain, "report": self.report,
                "window_start": self.window_start.strftime("%Y-%m-%dT%H:%MZ"), "minutes": str(self.minutes)}
        if self.value is not None:
            args["value"] = self.value
        if self.event_type is not None:
            args["event_type"] = self.event_type
        return args


class DrilldownParams(FigureParams):
    limit: int = Field(50, ge=1, le=MAX_PAGE, description=f"Raw rows per page (1..{MAX_PAGE}).")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description=f"Raw rows to skip (0..{MAX_OFFSET}).")


class DrilldownCsvParams(FigureParams):
    limit: int = Field(10_000, ge=1, le=MAX_CSV_ROWS, description=f"At most this many rows (1..{MAX_CSV_ROWS}).")


# ------------------------------------------------------------------ queries
def _bind(p: FigureParams) -> dict:
    return {"domain": p.domain, "start": p.window_start, "end": p.window_end, "value": p.value,
            "event_type": p.event_type, "topic": TOPIC_OF[p.spec.raw_table]}


def _report_where(spec: ReportSpec) -> str:
    where = "r.window_start >= %(start)s AND r.window_start < %(end)s"
    return where + (f" AND r.{spec.dimension} = %(value)s" if spec.dimension else "")


def report_rows(db: Database, p: FigureParams) -> list[dict]:
    """The newest report windows of the figure, each with the refresh (run) that wrote it."""
    spec = p.spec
    return db.query(
        f"""SELECT r.*, f.run_id, f.refreshed_at
            FROM {spec.table} r
            LEFT JOIN LATERAL (
                SELECT run_id, refreshed_at FROM report_refreshes f
                WHERE f.domain = %(domain)s AND f.window_start <= r.window_start AND f.window_end > r.window_start
                ORDER BY f.id DESC LIMIT 1) f ON true
            WHERE {_report_where(spec)}
            ORDER BY r.window_start DESC LIMIT {MAX_REPORT_ROWS + 1}""", _bind(p))


def report_totals(db: Database, p: FigureParams) -> dict:
    spec = p.spec
    sums = ", ".join(f"COALESCE(SUM(r.{c}), 0) AS {c}" for c in spec.additive)
    return db.query(f"SELECT count(*) AS windows, {sums} FROM {spec.table} r WHERE {_report_where(spec)}",
                    _bind(p))[0]


def _raw_sql(spec: ReportSpec, event_type: bool, page: str) -> str:
    """The raw rows behind a figure, oldest first (``"timestamp"``, then the row id).
    ``page`` closes the query (LIMIT/OFFSET, or a keyset condition + LIMIT)."""
    if spec.raw_table == "events":
        select = ("e.event_id, e.event_type, e.\"timestamp\", e.user_id, e.session_id, e.product_id, p.category, "
                  "t.quantity, t.total_amount")
        alias = "e"
    else:
        select = ("o.order_id, o.\"timestamp\", o.restaurant_id, o.channel, o.table_number, o.item_count, "
                  "o.total_amount, o.payment_method")
        if spec.matched:
            select += ", m.quantity AS matched_quantity, m.revenue AS matched_revenue"
        alias = "o"
    where = [f'{alias}."timestamp" >= %(start)s', f'{alias}."timestamp" < %(end)s']
    if spec.raw_where:
        where.append(spec.raw_where)
    if event_type:
        where.append("e.event_type = %(event_type)s")
    return (f'SELECT {select}, %(topic)s AS topic, {alias}.kafka_partition AS "partition", '
            f'{alias}.kafka_offset AS "offset", {alias}.ingested_at, {alias}.id AS _row '
            f"FROM {spec.raw_table} {alias} {spec.raw_join} "
            f"WHERE {' AND '.join(where)} {page}")


def _page_sql(spec: ReportSpec, event_type: bool, keyset: bool) -> str:
    alias = "e" if spec.raw_table == "events" else "o"
    order = f'ORDER BY {alias}."timestamp", {alias}.id'
    if keyset:
        return _raw_sql(spec, event_type, f'AND ({alias}."timestamp", {alias}.id) > (%(after_ts)s, %(after_id)s) '
                                          f"{order} LIMIT %(limit)s")
    return _raw_sql(spec, event_type, f"{order} LIMIT %(limit)s OFFSET %(offset)s")


def raw_page(db: Database, p: DrilldownParams) -> dict:
    rows = db.query(_page_sql(p.spec, p.event_type is not None, keyset=False),
                    {**_bind(p), "limit": p.limit + 1, "offset": p.offset})
    more = len(rows) > p.limit
    rows = rows[:p.limit]
    for r in rows:
        del r["_row"]
    return {"table": p.spec.raw_table, "topic": TOPIC_OF[p.spec.raw_table], "limit": p.limit, "offset": p.offset,
            "has_more": more, "next_offset": p.offset + len(rows) if more else None, "rows": rows}


def raw_stream(db: Database, p: DrilldownCsvParams) -> Iterator[dict]:
    """Every raw row behind the figure, up to ``p.limit``, read in keyset pages
    (no OFFSET: each page is an index range scan)."""
    sql = _page_sql(p.spec, p.event_type is not None, keyset=True)
    after_ts, after_id, left = p.window_start - MINUTE, 0, p.limit
    while left > 0:
        rows = db.query(sql, {**_bind(p), "after_ts": after_ts, "after_id": after_id, "limit": min(CSV_PAGE, left)})
        for r in rows:
            after_ts, after_id = r["timestamp"], r.pop("_row")
            yield r
        left -= len(rows)
        if len(rows) < CSV_PAGE:
            return


def run_link(base: str, run_id: str | None) -> str | None:
    if not run_id or not base.startswith(("http://", "https://")):
        return None
    return f"{base.rstrip('/')}/runs/{run_id}"


def figure(db: Database, p: DrilldownParams, settings: Settings) -> dict:
    """The drill-down answer (see the module docstring)."""
    base = settings.dagster_ui_url
    rows = report_rows(db, p)
    truncated = len(rows) > MAX_REPORT_ROWS
    rows = rows[:MAX_REPORT_ROWS]
    # one refresh row per run and domain: the run's refreshed_at is the same for all its windows
    runs: dict[str | None, dict] = {}
    for r in rows:
        run = runs.setdefault(r["run_id"], {"run_id": r["run_id"], "refreshed_at": r["refreshed_at"], "windows": 0,
                                            "url": run_link(base, r["run_id"])})
        run["windows"] += 1
    known = [k for k in runs if k]
    if known:
        for rec in db.query("SELECT run_id, job_name, status, partition, recorded_at FROM pipeline_runs "
                            "WHERE run_id = ANY(%(ids)s)", {"ids": known}):
            runs[rec.pop("run_id")].update(rec)
    return {
        "figure": p.figure(),
        "report": {"table": p.spec.table, "dimension": p.spec.dimension, "totals": report_totals(db, p),
                   "rows": rows[::-1], "rows_truncated": truncated},
        "runs": sorted(runs.values(), key=lambda r: str(r["refreshed_at"] or ""), reverse=True),
        "dagster_ui_url": base,
        "raw": raw_page(db, p),
        "csv": f"/api/drilldown/raw.csv?{urlencode(p.query_args())}",
    }


# ------------------------------------------------------------------ CSV
def build_blueprint() -> Blueprint:
    """``/api/drilldown/raw.csv`` (the JSON endpoint is in ``dashboard.api.ENDPOINTS``)."""
    bp = Blueprint("drilldown", __name__)

    @bp.get("/api/drilldown/raw.csv")
    def raw_csv():
        p = parse(DrilldownCsvParams, request.args)
        db = current_app.extensions["salespulse"]["db"]
        columns = [*RAW_COLUMNS[p.spec.raw_table], *(("matched_quantity", "matched_revenue") if p.spec.matched else ()),
                   *ORIGIN_COLUMNS]
        rows = raw_stream(db, p)
        first = next(rows, None)  # a failing query answers 503 JSON here, before the 200 is sent

        def lines():
            yield csv_line(columns)
            if first is not None:
                yield csv_line(first[c] for c in columns)
                for r in rows:
                    yield csv_line(r[c] for c in columns)

        name = f"{p.domain}-{p.report}-{p.window_start:%Y%m%dT%H%M}-{p.minutes}m.csv"
        return Response(stream_with_context(lines()), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})

    return bp


def openapi_paths(parameters: Callable[[type], list], error: Callable[[str], dict]) -> dict:
    """The CSV endpoint's OpenAPI entry (the JSON one comes from ``ENDPOINTS``)."""
    return {"/api/drilldown/raw.csv": {"get": {
        "operationId": "drilldown_raw_csv", "tags": ["drilldown"],
        "summary": "The raw events or orders behind a figure as CSV (streamed, oldest first, at most `limit` rows), "
                   "each with its topic, partition and offset.",
        "parameters": parameters(DrilldownCsvParams),
        "responses": {
            "200": {"description": "CSV with a header line", "content": {"text/csv": {"schema": {"type": "string"}}}},
            "400": error("invalid parameter (the `parameter` field names it)"),
            "401": error("missing or wrong bearer token (when DASHBOARD_TOKEN is set)"),
            "429": error("rate limit exceeded"),
            "503": error("database unavailable"),
        },
    }}}

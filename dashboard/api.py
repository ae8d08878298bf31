"""JSON API blueprints: e-commerce, restaurant, pipeline, health.

Each endpoint is declared once in :data:`ENDPOINTS` (path, parameter model,
query function, description); the same table drives the routes and the
OpenAPI document, so the two cannot drift apart.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from flask import Blueprint, current_app, jsonify, request

from dashboard import drilldown, queries
from dashboard.restatements import RestatementParams, restated_points
from dashboard.checks import pipeline_checks
from dashboard.db import DatabaseUnavailable
from dashboard.freshness import pipeline_freshness
from dashboard.processes import local_processes
from dashboard.params import (
    EcommerceTimelineParams, ItemParams, LimitParams, NoParams, Params, PeakHoursParams, PipelineParams,
    RangeAllParams, TimelineParams, TimeRange, parse,
    FreshnessParams,
)


@dataclass(frozen=True)
class Endpoint:
    blueprint: str
    path: str
    name: str
    params: type[Params]
    fn: Callable
    summary: str
    tag: str
    extra: dict = field(default_factory=dict)
    with_settings: bool = False  # fn(db, params, settings)


ENDPOINTS: list[Endpoint] = [
    Endpoint("ecommerce", "/api/metrics/summary", "summary", RangeAllParams, queries.ecommerce_summary,
             "E-commerce totals: events, revenue, orders, units, conversion rate, average order value, active users.",
             "ecommerce"),
    Endpoint("ecommerce", "/api/metrics/timeline", "timeline", EcommerceTimelineParams, queries.ecommerce_timeline,
             "E-commerce time series per bucket (events by type, purchases, revenue, active users).", "ecommerce"),
    Endpoint("ecommerce", "/api/metrics/top-products", "top_products", LimitParams, queries.ecommerce_top_products,
             "Top products by revenue in the window (range=all reads the `top_products` view).", "ecommerce"),
    Endpoint("ecommerce", "/api/metrics/by-category", "by_category", RangeAllParams, queries.ecommerce_by_category,
             "Sales by category in the window (range=all reads the `sales_by_category` view).", "ecommerce"),
    Endpoint("ecommerce", "/api/metrics/event-types", "event_types", TimeRange, queries.ecommerce_event_types,
             "Event counts by type in the window.", "ecommerce"),
    Endpoint("ecommerce", "/api/metrics/realtime", "realtime", NoParams, queries.ecommerce_realtime,
             "The last 60 seconds from the raw tables (indexed time range): events, users, orders, revenue.",
             "ecommerce"),
    Endpoint("restaurant", "/api/restaurant/summary", "summary", TimeRange, queries.restaurant_summary,
             "Restaurant totals: orders, items sold, revenue, average ticket.", "restaurant"),
    Endpoint("restaurant", "/api/restaurant/timeline", "timeline", TimelineParams, queries.restaurant_timeline,
             "Restaurant time series per bucket (orders, items, revenue, average ticket).", "restaurant"),
    Endpoint("restaurant", "/api/restaurant/top-items", "top_items", ItemParams, queries.restaurant_top_items,
             "Top menu items by revenue or quantity.", "restaurant"),
    Endpoint("restaurant", "/api/restaurant/by-category", "by_category", TimeRange, queries.restaurant_by_category,
             "Restaurant sales by menu category.", "restaurant"),
    Endpoint("restaurant", "/api/restaurant/channels", "channels", TimeRange, queries.restaurant_channels,
             "Channel mix (dine_in, takeaway, delivery): orders, revenue, average ticket.", "restaurant"),
    Endpoint("restaurant", "/api/restaurant/peak-hours", "peak_hours", PeakHoursParams, queries.restaurant_peak_hours,
             "Orders and revenue by hour of day (in `tz`) over the window; the peak hour.", "restaurant"),
    Endpoint("restaurant", "/api/restaurant/realtime", "realtime", NoParams, queries.restaurant_realtime,
             "The last 60 seconds from the raw `orders` table (indexed time range).", "restaurant"),
    Endpoint("pipeline", "/api/pipeline/status", "status", PipelineParams, None,
             "Pipeline health: consumer lag and throughput per topic, dead letters with reasons, "
             "last report time, recent Dagster runs, Dagster UI link, and `freshness`: per domain the newest "
             "report window against its target and whether runs are queued behind runs making no progress, "
             "as last recorded by the reports_current sensor, with the age of that record; `processes`: the "
             "local stack's processes as its supervisor sees them (restarting ones with why), null elsewhere.",
             "pipeline"),
    Endpoint("pipeline", "/api/pipeline/freshness", "freshness", FreshnessParams, pipeline_freshness,
             "Freshness per domain, each measure with a state (ok / late / stale, or unknown without data) "
             "against the FRESHNESS_* targets: `rows` event time -> row visible p50/p95 over the rows stored in "
             "the last minute (late events left out), `reports` the newest report window (as of, age, behind "
             "the newest event), `lag` the consumer lag last recorded. Same rule as the Dagster reports_fresh "
             "checks.", "pipeline", with_settings=True),
    Endpoint("pipeline", "/api/pipeline/checks", "checks", PipelineParams, pipeline_checks,
             "Reconciliation and alert checks (pipeline_checks_job, every minute): the latest outcome of each "
             "check and asset of the last day (failing first) with its offending windows, the failing "
             "evaluations of the window (`limit`), and the alert webhook notifications sent in it.", "pipeline"),
    Endpoint("pipeline", "/api/restatements", "restatements", RestatementParams, restated_points,
             "Restated points of a domain's timeline (same buckets as its `/timeline`): per bucket the minute "
             "windows whose figures changed after they had been reported (late or out-of-order rows), the net "
             "change of raw rows counted, and the latest restatement's time and Dagster run.", "pipeline",
             extra={"example": {"domain": "ecommerce", "range": "1h"}}),
    Endpoint("drilldown", "/api/drilldown", "figure", drilldown.DrilldownParams, drilldown.figure,
             "Drill-down of one figure (a report's value for a span of minute windows, e.g. a category's "
             "revenue at 14:05): the report rows and totals, the Dagster run that computed each window with its "
             "Dagster UI link, and the raw events or orders behind it, paged, each with its Kafka topic, "
             "partition and offset; `csv` links the CSV export.", "drilldown", with_settings=True,
             extra={"example": {"domain": "ecommerce", "report": "category", "window_start": "2026-01-01T14:05Z",
                                "value": "Electronics"}}),
]


class ResponseCache:
    """A tiny per-process TTL cache of API answers for relative windows.

    The report tables change once a minute and every open page polls every 5 s,
    so answers for the same (endpoint, parameters) are shared for ``ttl``
    seconds. Answers for explicit ``from``/``to`` windows are cached too (same
    key, same answer). ``ttl=0`` disables it. Only answers that were computed
    are kept (at most ``max_entries``): a computation that fails (database
    down, a query timing out) leaves nothing behind, so parameters that fail
    cannot grow it.
    """

    def __init__(self, ttl: float, max_entries: int = 512):
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: dict = {}
        self._computing: dict = {}
        self._lock = threading.Lock()

    def get_or_compute(self, key, compute: Callable[[], bytes]) -> bytes:
        if self.ttl <= 0:
            return compute()
        hit = self._fresh(key)
        if hit is not None:
            return hit
        # single flight: one thread computes a missing/expired key, the others wait for it
        with self._lock:
            key_lock = self._computing.setdefault(key, threading.Lock())
        try:
            with key_lock:
                hit = self._fresh(key)
                if hit is not None:
                    return hit
                value = compute()
                now = time.monotonic()
                with self._lock:
                    if len(self._data) >= self.max_entries:
                        self._data = {k: v for k, v in self._data.items() if v[0] > now}
                        if len(self._data) >= self.max_entries:
                            self._data.clear()
                    self._data[key] = (now + self.ttl, value)
                return value
        finally:  # computed, found or failed: the in-flight marker goes (a failed key kept it before)
            with self._lock:
                if self._computing.get(key) is key_lock:
                    self._computing.pop(key)

    def __len__(self) -> int:
        """Keys held: kept answers and computations in flight."""
        with self._lock:
            return len(self._data) + len(self._computing)

    def _fresh(self, key):
        with self._lock:
            hit = self._data.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        return None


def _make_view(ep: Endpoint):
    def view():
        params = parse(ep.params, request.args)
        ext = current_app.extensions["salespulse"]
        db = ext["db"]
        if ep.fn is None:  # pipeline status, with the local stack's processes when one runs here
            settings = ext["settings"]

            def compute():
                return {**queries.pipeline_status(db, params, settings.dagster_ui_url),
                        "processes": local_processes(settings.salespulse_state_dir)}
        elif ep.with_settings:
            compute = partial(ep.fn, db, params, ext["settings"])
        else:
            compute = partial(ep.fn, db, params)
        # the serialized body is what is cached: encoding a large answer costs more than reusing it
        body = ext["cache"].get_or_compute((ep.path, params.cache_key()),
                                           lambda: current_app.json.dumps(compute()).encode())
        return current_app.response_class(body, mimetype="application/json", headers={"Cache-Control": "no-store"})

    view.__name__ = ep.name
    view.__doc__ = ep.summary
    return view


def build_blueprints() -> list[Blueprint]:
    bps = {name: Blueprint(name, __name__) for name in ("ecommerce", "restaurant", "pipeline")}
    bps["drilldown"] = drilldown.build_blueprint()  # + its CSV route
    for ep in ENDPOINTS:
        bps[ep.blueprint].add_url_rule(ep.path, ep.name, _make_view(ep), methods=["GET"])
    return list(bps.values())


health_bp = Blueprint("health", __name__)


@health_bp.get("/health")
def health():
    """Liveness + database check; always open (no token, no rate limit)."""
    db = current_app.extensions["salespulse"]["db"]
    try:
        db.ping()
    except DatabaseUnavailable as exc:
        return jsonify({"status": "error", "database": "unavailable", "message": str(exc)}), 503
    return jsonify({"status": "ok", "database": "ok"})

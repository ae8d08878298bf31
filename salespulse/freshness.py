"""Freshness: how old the data behind each domain's numbers is, and its state.

The one rule. It drives the dashboard (``GET /api/pipeline/freshness`` and its
table, the pipeline page's notice through what ``freshness_sensor`` records,
the "data as of" line under each chart), ``salespulse status``, the Dagster
``reports_fresh`` and ``reports_current`` checks of each report asset, the
report assets' Dagster freshness policy and ``kafka_lag_sensor``'s flag, so
they all agree on the same database state. Targets come from the settings
(``FRESHNESS_*``); :data:`RECORD_MAX_AGE_S` is how long a record of the
Dagster daemon stays current.

Per domain, three measures, each judged against its own target:

* ``rows`` — event time → row visible: ``ingested_at − "timestamp"`` of the
  rows stored in the last :data:`WINDOW_S` seconds, p50 and p95 (negative
  values, an event clock ahead of the database's, count as 0). A row stamped
  more than ``FRESHNESS_LATE_EVENT_S`` before it was stored is *late* data (a
  device that was offline, a producer retrying for minutes, a replay of old
  offsets): it is left out of the percentiles, since it says when the event
  happened, not how fast the pipeline is (its minute is restated by the
  reports). This bound also keeps the query on the ``"timestamp"`` index (no
  index on ``ingested_at`` is needed). Judged: p95.
  No row stored in the last minute: ``unknown`` (an idle stream is not late;
  a stuck consumer shows in the lag).
* ``reports`` — the newest report window: its data is as of
  ``least(window_start + 1 min, computed_at)`` (a window still open when it was
  computed holds the rows up to then). ``age_s`` is now − that instant, the
  "data as of … ago" of the charts. Judged: ``behind_s``, how far that instant
  trails the newest raw event (capped at now), i.e. the age when new data keeps
  coming, and 0 when nothing newer arrived (an idle stream does not make
  reports stale). Raw rows but no report window at all: ``stale``; neither:
  ``unknown``.
* ``lag`` — the consumer lag of the domain's topic as last recorded by the
  Dagster ``kafka_lag_sensor`` (``pipeline_observations``, every 30 s). A
  record older than :data:`RECORD_MAX_AGE_S` says nothing about now:
  ``unknown`` (the sensor or the daemon is not running).

State rule (:func:`state`): ``ok`` while the value is at most the target,
``late`` up to ``FRESHNESS_STALE_FACTOR`` × the target, ``stale`` beyond;
``unknown`` without a value. A domain's state is the worst known one.
Dagster maps ``late`` to a failed check of severity WARN, ``stale`` to ERROR.

Everything is measured on the database's clock in one statement per domain.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Callable

from salespulse.catalog import DOMAINS

#: rows stored in the last this many seconds make the latency sample
WINDOW_S = 60
#: a record the Dagster daemon refreshes every minute or more often (the lag
#: observations of kafka_lag_sensor every 30 s, what freshness_sensor records for
#: the pipeline page, the minute checks' results) older than this says nothing
#: about now: the daemon or the sensor is not running (three missed minutes)
RECORD_MAX_AGE_S = 180
#: states from the least to the most severe (``unknown`` never outweighs a known state)
STATES = ("unknown", "ok", "late", "stale")


@dataclass(frozen=True)
class Targets:
    rows_s: float
    reports_s: float
    lag_messages: int
    stale_factor: float
    late_event_s: float

    @classmethod
    def from_settings(cls, settings) -> "Targets":
        return cls(settings.freshness_rows_target_s, settings.freshness_reports_target_s,
                   settings.freshness_lag_target_messages, settings.freshness_stale_factor,
                   settings.freshness_late_event_s)


def state(value: float | None, target: float, stale_factor: float) -> str:
    """``ok`` up to ``target``, ``late`` up to ``target × stale_factor``, ``stale`` beyond; ``unknown`` for None."""
    if value is None:
        return "unknown"
    if value <= target:
        return "ok"
    if value <= target * stale_factor:
        return "late"
    return "stale"


def worst(states) -> str:
    return max(states, key=STATES.index, default="unknown")


#: ``query(sql, params) -> rows as dicts``: the dashboard's ``Database.query`` or :func:`cursor_query`
Query = Callable[[str, dict], list[dict]]


def cursor_query(cur) -> Query:
    """A :data:`Query` over a DB-API cursor (Dagster's psycopg2 connections)."""
    def run(sql: str, params: dict) -> list[dict]:
        cur.execute(sql, params)
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
    return run


_SQL = """
SELECT lat.samples, lat.p50, lat.p95,
       (SELECT max("timestamp") FROM {raw}) AS newest_event,
       r.window_start, r.computed_at, o.observed_at, o.lag
FROM (SELECT count(*) AS samples,
             percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS p50,
             percentile_cont(0.95) WITHIN GROUP (ORDER BY s) AS p95
      FROM (SELECT GREATEST(extract(epoch FROM ingested_at - "timestamp"), 0) AS s FROM {raw}
            WHERE "timestamp" >= %(now)s - %(horizon)s * INTERVAL '1 second'
              AND ingested_at > %(now)s - %(window)s * INTERVAL '1 second' AND ingested_at <= %(now)s
              AND ingested_at - "timestamp" <= %(late)s * INTERVAL '1 second') latency) lat
LEFT JOIN LATERAL (SELECT window_start, computed_at FROM {overview}
                   ORDER BY window_start DESC LIMIT 1) r ON TRUE
LEFT JOIN LATERAL (SELECT observed_at, lag FROM pipeline_observations WHERE topic = %(topic)s
                   ORDER BY observed_at DESC LIMIT 1) o ON TRUE
"""


def _seconds(delta: timedelta) -> float:
    return round(delta.total_seconds(), 2)


def _round(value) -> float | None:
    return None if value is None else round(float(value), 2)


def measure(query: Query, domain: str, targets: Targets, now: datetime) -> dict:
    """The three measures of ``domain`` at ``now`` (the database's clock), each with its state."""
    d = DOMAINS[domain]
    (row,) = query(_SQL.format(raw=d.raw_table, overview=d.overview), {
        "now": now, "window": WINDOW_S, "late": targets.late_event_s,
        "horizon": WINDOW_S + targets.late_event_s, "topic": d.topic})
    factor = targets.stale_factor
    newest_event = min(row["newest_event"], now) if row["newest_event"] else None

    p95 = _round(row["p95"]) if row["samples"] else None
    rows = {
        "p50_s": _round(row["p50"]) if row["samples"] else None, "p95_s": p95,
        "samples": row["samples"], "window_s": WINDOW_S,
        "late_event_s": targets.late_event_s,
        "newest_event_at": newest_event,
        "newest_event_age_s": _seconds(now - newest_event) if newest_event else None,
        "target_s": targets.rows_s, "stale_after_s": targets.rows_s * factor,
        "state": state(p95, targets.rows_s, factor),
    }

    window_start, computed_at = row["window_start"], row["computed_at"]
    if window_start is None:
        as_of = age = None
        behind = float("inf") if newest_event else None
    else:
        as_of = min(window_start + timedelta(minutes=1), computed_at)
        age = _seconds(now - as_of)
        behind = max(_seconds(newest_event - as_of), 0.0) if newest_event else 0.0
    reports = {
        "newest_window_start": window_start, "computed_at": computed_at, "as_of": as_of, "age_s": age,
        "behind_s": None if behind == float("inf") else behind, "has_window": window_start is not None,
        "target_s": targets.reports_s, "stale_after_s": targets.reports_s * factor,
        "state": state(behind, targets.reports_s, factor),
    }

    observed_at = row["observed_at"]
    observation_age = _seconds(now - observed_at) if observed_at else None
    current = observation_age is not None and observation_age <= RECORD_MAX_AGE_S
    lag = {
        "topic": d.topic, "messages": row["lag"], "observed_at": observed_at,
        "observation_age_s": observation_age, "observation_max_age_s": RECORD_MAX_AGE_S,
        "target_messages": targets.lag_messages, "stale_after_messages": targets.lag_messages * factor,
        "state": state(row["lag"] if current else None, targets.lag_messages, factor),
    }
    return {"domain": domain, "state": worst(m["state"] for m in (rows, reports, lag)),
            "rows": rows, "reports": reports, "lag": lag}


def measure_all(query: Query, targets: Targets, domains: list[str] | None = None) -> dict:
    """Every domain (or ``domains``) at one instant of the database's clock."""
    (clock,) = query("SELECT now() AS now", {})
    now = clock["now"]
    found = {name: measure(query, name, targets, now) for name in (domains or DOMAINS)}
    return {"as_of": now, "state": worst(m["state"] for m in found.values()),
            "targets": asdict(targets), "domains": found}


def minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min"


def reports_verdict(measured: dict) -> tuple[str, str]:
    """``(state, sentence)`` of a domain's reports measure (:func:`measure`):
    what ``salespulse status``, the ``reports_current`` check and the pipeline
    page's notice say."""
    r = measured["reports"]
    bounds = f"ok ≤ {minutes(r['target_s'])}, stale > {minutes(r['stale_after_s'])}"
    if not r["has_window"]:
        what = ("no report window yet, though raw rows arrived" if r["state"] == "stale"
                else "no raw rows and no report window yet")
    else:
        behind = r["behind_s"] or 0.0
        what = (f"newest report window {r['newest_window_start']:%Y-%m-%d %H:%M} UTC, {behind / 60:.1f} min "
                "behind the newest event")
    return r["state"], f"{measured['domain']} reports {r['state']}: {what} ({bounds})"

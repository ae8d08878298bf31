"""``GET /api/restatements``: which points of a timeline were restated.

A restatement is a report minute window whose figures changed after it had
been reported closed (late or out-of-order rows; recorded in
``report_restatements`` by the report refresh that changed it, see
``orchestration/reports/windows.py``). The answer is bucketed exactly like the
domain's ``/timeline`` (same ``range``/``from``/``to``/``bucket`` rules, same
bucket origin), so the charts can mark the restated bars and say when and by
which Dagster run each was restated.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dashboard.db import Database
from dashboard.params import TimelineParams
from dashboard.queries import ORIGIN, _meta, _window


class RestatementParams(TimelineParams):
    domain: Literal["ecommerce", "restaurant"] = Field(
        ..., description="The domain whose timeline is marked: ecommerce or restaurant.")


def restated_points(db: Database, p: RestatementParams) -> dict:
    """Per timeline bucket holding restated windows: how many windows, how many
    restatements, the net change of raw rows counted, and the latest one (when,
    which run). Buckets without restatements are left out."""
    width = p.bucket_width()
    rows = db.query(
        """SELECT date_bin(%(bucket)s, window_start, %(origin)s) AS t,
                  count(DISTINCT window_start)::INT AS windows, count(*)::INT AS restatements,
                  sum(rows_after - rows_before)::BIGINT AS rows_changed,
                  max(restated_at) AS last_restated_at,
                  (array_agg(run_id ORDER BY restated_at DESC, id DESC))[1] AS last_run_id
           FROM report_restatements
           WHERE domain = %(domain)s AND window_start >= %(start)s AND window_start < %(end)s
           GROUP BY 1 ORDER BY 1""",
        {**_window(p), "bucket": width, "origin": ORIGIN, "domain": p.domain})
    return {**_meta(p), "domain": p.domain, "bucket_seconds": int(width.total_seconds()),
            "source": "report_restatements", "points": rows}

"""``GET /api/pipeline/freshness``: per domain, how old the data is and its state.

The measures and the ok / late / stale rule are ``salespulse.freshness``'s
(the Dagster ``reports_fresh`` checks use the same), with the targets of this
app's settings (``FRESHNESS_*``).
"""

from __future__ import annotations

from dashboard.db import Database
from dashboard.params import FreshnessParams
from salespulse.freshness import Targets, measure_all


def pipeline_freshness(db: Database, p: FreshnessParams, settings) -> dict:
    return measure_all(db.query, Targets.from_settings(settings), [p.domain] if p.domain else None)

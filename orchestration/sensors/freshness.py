"""``freshness_sensor``: the ``reports_fresh`` checks evaluated every minute.

The health job runs the ``reports_fresh`` checks every five minutes; this
sensor (daemon, outside the run queue) records the same evaluation of both
report assets every minute, so the Dagster UI shows what the dashboard's
``/api/pipeline/freshness`` shows (same rule, same ``FRESHNESS_*`` targets:
``salespulse.freshness``), and even while the run queue is full.
"""

from dagster import AssetCheckEvaluation, DefaultSensorStatus, SensorEvaluationContext, SensorResult, sensor

from orchestration.assets.reports import REPORT_ASSET_BY_DOMAIN
from orchestration.checks import freshness_result
from orchestration.resources import PostgresResource
from salespulse.freshness import Targets, cursor_query, measure_all


def freshness_evaluations(postgres: PostgresResource) -> list[AssetCheckEvaluation]:
    """One ``reports_fresh`` evaluation per report asset, measured at one instant."""
    with postgres.connection() as conn, conn.cursor() as cur:
        found = measure_all(cursor_query(cur), Targets.from_settings(postgres.settings()),
                            list(REPORT_ASSET_BY_DOMAIN))
    evaluations = []
    for domain, measured in found["domains"].items():
        result = freshness_result(measured)
        evaluations.append(AssetCheckEvaluation(
            asset_key=REPORT_ASSET_BY_DOMAIN[domain].key, check_name="reports_fresh", passed=result.passed,
            severity=result.severity, description=result.description, metadata=result.metadata))
    return evaluations


@sensor(
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description=("Every minute, outside the run queue: records the reports_fresh check of both report assets "
                 "(the dashboard's freshness rule and FRESHNESS_* targets)."),
)
def freshness_sensor(context: SensorEvaluationContext, postgres: PostgresResource):
    evaluations = freshness_evaluations(postgres)
    failing = [e.description for e in evaluations if not e.passed]
    return SensorResult(asset_events=evaluations,
                        skip_reason=("NOT FRESH: " + " | ".join(failing)) if failing else "fresh")

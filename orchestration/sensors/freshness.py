"""``freshness_sensor``: the freshness rule evaluated every minute, outside the run queue.

The health job runs the ``reports_fresh`` and ``reports_current`` checks every
five minutes, inside the run queue; this sensor (daemon) measures once per
tick (``salespulse.freshness``, the ``FRESHNESS_*`` targets; the Dagster run
queue) and

* records both checks of every report asset, so the Dagster UI shows what the
  dashboard's ``/api/pipeline/freshness`` shows, even while the run queue is
  full or blocked;
* writes what it found for the dashboard's pipeline page
  (``orchestration.checks.current.record``).

Its tick message names what is not current (``reports_current``: reports late
or stale, a blocked queue); the rows and lag measures are in the
``reports_fresh`` evaluations.
"""

from dagster import AssetCheckEvaluation, DefaultSensorStatus, SensorEvaluationContext, SensorResult, sensor

from orchestration.checks.current import CHECK_NAME, REPORT_KEYS, Observed, evaluate, observe, record, severity
from orchestration.checks.freshness import freshness_result
from orchestration.resources import PostgresResource


def freshness_evaluations(observed: Observed) -> list[AssetCheckEvaluation]:
    """One ``reports_fresh`` evaluation per report asset, from one measurement."""
    evaluations = []
    for domain, measured in observed.freshness["domains"].items():
        result = freshness_result(measured)
        evaluations.append(AssetCheckEvaluation(
            asset_key=REPORT_KEYS[domain], check_name="reports_fresh", passed=result.passed,
            severity=result.severity, description=result.description, metadata=result.metadata))
    return evaluations


@sensor(
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description=("Every minute, outside the run queue: records the reports_fresh and reports_current checks of "
                 "every report asset (the freshness rule and FRESHNESS_* targets of the dashboard), and what it "
                 "found in pipeline_report_freshness / pipeline_run_queue for the dashboard's pipeline page."),
)
def freshness_sensor(context: SensorEvaluationContext, postgres: PostgresResource):
    observed = observe(context.instance, postgres)
    record(postgres, observed)
    current = evaluate(context.instance, postgres, observed)
    events = [*freshness_evaluations(observed), *(
        AssetCheckEvaluation(asset_key=REPORT_KEYS[domain], check_name=CHECK_NAME, passed=passed,
                             severity=severity(metadata), description=description, metadata=metadata)
        for domain, (passed, description, metadata) in current.items())]
    failing = [f"{domain}: {description}" for domain, (passed, description, _m) in current.items() if not passed]
    return SensorResult(asset_events=events,
                        skip_reason=("NOT CURRENT: " + " | ".join(failing)) if failing else "reports current")

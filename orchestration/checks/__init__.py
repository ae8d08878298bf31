"""Asset checks, one module per kind, composed here into the lists the jobs and
``definitions.py`` use:

* ``window.py`` — with every refresh run, for its partition: revenue
  reconciles, windows complete;
* ``freshness.py`` and ``current.py`` — the freshness rule: ``reports_fresh``
  and ``reports_current`` (health job every five minutes, ``freshness_sensor``
  every minute);
* ``integrity.py`` — dead-letter rate, ingest-ledger contiguity, raw-table
  consistency (health job);
* ``reconcile.py`` and ``alerts.py`` — every minute (``pipeline_checks_job``):
  reports vs raw tables vs ingest ledger, revenue drop, funnel break, dead
  letters; their outcomes recorded and notified by ``outcomes.py``.
"""

from orchestration.checks.alerts import alert_checks
from orchestration.checks.current import REPORTS_CURRENT
from orchestration.checks.freshness import REPORTS_FRESH
from orchestration.checks.integrity import dead_letter_rate_check, integrity_checks
from orchestration.checks.reconcile import reconcile_checks
from orchestration.checks.window import window_checks

#: the pipeline as a whole (pipeline_health_checks_job, every five minutes)
health_checks = [*REPORTS_FRESH.values(), *REPORTS_CURRENT.values(), dead_letter_rate_check, *integrity_checks]
#: reconciliation and alerts (pipeline_checks_job, every minute; not part of every refresh run)
minute_checks = [*reconcile_checks, *alert_checks]
all_checks = [*window_checks, *health_checks, *minute_checks]

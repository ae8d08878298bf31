"""Dagster runs whose worker is gone: find them, end them, and say so.

A run is executed by a *run worker*, a child process of the code server
(``dagster api grpc``) that launched it; the server's address is in the run's
``.dagster/grpc_info`` tag and ``GetCurrentRuns`` lists the runs it is
executing. When the stack dies (``kill -9``, power cut, OOM kill, a
``dagster-code`` container replaced), the worker goes with it but the run
stays ``STARTED`` in the instance for ever: the default run launcher cannot
check a worker's health, so run monitoring leaves it, and two such runs hold
both ``max_concurrent_runs`` slots, so nothing queued ever starts again.

This module uses Dagster's own APIs to end them:

* :func:`repair` — every in-flight run (``STARTING``, ``STARTED``,
  ``CANCELING``) whose code server is unreachable or does not list it is
  reported failed (``CANCELING`` ones canceled) with a readable reason. Run
  before the daemon starts, every in-flight run is judged this way, so a
  start after a crash frees the queue at once; while the daemon runs, it is
  repeated every :data:`SWEEP_SECONDS` for ``STARTED``/``CANCELING`` runs
  (a ``STARTING`` run may be mid-launch; the daemon's start timeout covers it).
* :func:`end_in_flight` — a stop: each in-flight run is terminated through
  the run launcher (the code server interrupts its worker) and whatever has
  not finished within a few seconds is reported canceled, "stack stopping".
* :func:`queue_health` — what ``salespulse status`` and the ``reports_current``
  asset check show: runs in flight, how long since each last logged an event,
  and runs queued behind runs making no progress.

``salespulse dagster-daemon`` (:mod:`salespulse.dagster_daemon`) is the
daemon wrapper that calls these at start, while running and at stop.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import timezone

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter


log = logging.getLogger(__name__)

GRPC_INFO_TAG = ".dagster/grpc_info"
PARTITION_TAG = "dagster/partition"
IN_FLIGHT = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
QUEUED = [DagsterRunStatus.QUEUED]
#: how often the wrapper re-checks STARTED runs while the daemon runs
SWEEP_SECONDS = 30
#: a run in flight that logged nothing for this long counts as making no progress
STALL_SECONDS = 300
STOP_REASON = "stack stopping"


@dataclass
class Repaired:
    run_id: str
    job_name: str
    partition: str | None
    was: str  # status before the repair
    now: str  # FAILURE or CANCELED
    reason: str


def _server_key(run: DagsterRun) -> tuple | None:
    info = run.tags.get(GRPC_INFO_TAG)
    if not info:
        return None
    grpc = json.loads(info)
    return grpc.get("host") or "localhost", grpc.get("port"), grpc.get("socket"), bool(grpc.get("use_ssl"))


def _describe(key: tuple) -> str:
    host, port, socket, _ssl = key
    return f"{host}:{port}" if port else f"socket {socket}"


def current_runs(key: tuple) -> set[str] | None:
    """Run ids the code server at ``key`` is executing; None if it does not answer."""
    from dagster._grpc.client import DagsterGrpcClient
    from dagster._grpc.types import GetCurrentRunsResult
    from dagster._serdes import deserialize_value

    host, port, socket, ssl = key
    try:
        client = DagsterGrpcClient(port=port, socket=socket, host=host, use_ssl=ssl)
        result = deserialize_value(client.get_current_runs(), GetCurrentRunsResult)
    except Exception as exc:  # unreachable, refused, a server of another version: no worker of ours there
        log.info("code server %s does not answer: %s", _describe(key), str(exc).splitlines()[0][:200])
        return None
    return set(result.current_runs)


def open_instance(settings) -> DagsterInstance:
    """The Dagster instance of ``settings.dagster_home_path`` (DAGSTER_HOME, or the local stack's default)."""
    home = settings.dagster_home_path
    if not (home / "dagster.yaml").exists():
        raise FileNotFoundError(f"no dagster.yaml in {home}")
    return DagsterInstance.from_config(str(home))


def orphans(instance: DagsterInstance, statuses=IN_FLIGHT) -> list[tuple[DagsterRun, str]]:
    """In-flight runs whose worker is gone, each with why it is judged so.

    The runs are read *before* their code servers are asked, so a run launched
    meanwhile is not among them; a run that finished meanwhile is re-read and
    skipped.
    """
    runs = list(instance.get_runs(filters=RunsFilter(statuses=list(statuses))))
    answers: dict[tuple, set[str] | None] = {}
    found = []
    for run in runs:
        key = _server_key(run)
        if key is None:
            why = "it was never handed to a code server (the daemon stopped while launching it)"
        else:
            if key not in answers:
                answers[key] = current_runs(key)
            running = answers[key]
            if running is not None and run.run_id in running:
                continue
            why = (f"its code server ({_describe(key)}) is gone" if running is None
                   else f"its code server ({_describe(key)}) is not running it")
        fresh = instance.get_run_by_id(run.run_id)
        if fresh is not None and fresh.status in statuses:
            found.append((fresh, why))
    return found


def repair(instance: DagsterInstance, *, at_start: bool) -> list[Repaired]:
    """Report every in-flight run whose worker is gone failed (canceling ones canceled).

    ``at_start``: no daemon runs yet, so ``STARTING`` runs are judged too.
    """
    statuses = IN_FLIGHT if at_start else [DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
    done = []
    for run, why in orphans(instance, statuses):
        reason = (f"Run worker gone: {why}, so this run can never finish. Marked "
                  f"{'canceled' if run.status == DagsterRunStatus.CANCELING else 'failed'} by "
                  f"salespulse dagster-daemon ({'at start' if at_start else 'while running'}) "
                  "so queued runs can start; the minute schedule / new-data sensor refresh its partition again.")
        if run.status == DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message=reason)
            now = "CANCELED"
        else:
            instance.report_run_failed(run, message=reason)
            now = "FAILURE"
        log.warning("repaired run %s (%s, partition %s): %s -> %s: %s", run.run_id, run.job_name,
                    run.tags.get(PARTITION_TAG), run.status.value, now, why)
        done.append(Repaired(run.run_id, run.job_name, run.tags.get(PARTITION_TAG), run.status.value, now, reason))
    return done


def end_in_flight(instance: DagsterInstance, reason: str = STOP_REASON, wait_s: float = 8.0) -> list[Repaired]:
    """Terminate every in-flight run, wait up to ``wait_s`` for it to end, then
    report the rest canceled with ``reason`` (nothing is left in flight)."""
    runs = list(instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT)))
    for run in runs:
        instance.report_engine_event(f"{reason}: terminating this run", run)
        try:
            instance.run_launcher.terminate(run.run_id)
        except Exception as exc:  # its code server is gone: reported canceled below
            log.info("terminate %s: %s", run.run_id, str(exc).splitlines()[0][:200])
    deadline = time.monotonic() + wait_s
    pending = {run.run_id: run for run in runs}
    ended = []
    while pending:
        for run_id in list(pending):
            fresh = instance.get_run_by_id(run_id)
            if fresh is None or fresh.is_finished:
                run = pending.pop(run_id)
                ended.append(Repaired(run_id, run.job_name, run.tags.get(PARTITION_TAG), run.status.value,
                                      fresh.status.value if fresh else "DELETED", reason))
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    for run_id, run in pending.items():
        fresh = instance.get_run_by_id(run_id) or run
        if not fresh.is_finished:
            instance.report_run_canceled(fresh, message=f"Run canceled: {reason} (its worker did not end in "
                                                        f"{wait_s:g} s after the termination request).")
        ended.append(Repaired(run_id, run.job_name, run.tags.get(PARTITION_TAG), run.status.value, "CANCELED",
                              reason))
    return ended


@dataclass
class InFlight:
    run_id: str
    job_name: str
    status: str
    partition: str | None
    idle_seconds: float  # since its newest event


@dataclass
class QueueHealth:
    in_flight: list[InFlight]
    queued: int
    oldest_queued_seconds: float | None

    @property
    def stalled(self) -> list[InFlight]:
        return [r for r in self.in_flight if r.idle_seconds > STALL_SECONDS]

    @property
    def blocked(self) -> bool:
        """Runs are queued behind runs that make no progress."""
        return self.queued > 0 and bool(self.stalled)

    def summary(self) -> str:
        parts = [f"{len(self.in_flight)} in flight", f"{self.queued} queued"]
        if self.oldest_queued_seconds is not None:
            parts.append(f"oldest queued {self.oldest_queued_seconds:.0f} s")
        for r in self.stalled:
            parts.append(f"run {r.run_id[:8]} ({r.job_name}, {r.status}) silent for {r.idle_seconds:.0f} s")
        if self.blocked:
            parts.append("QUEUE BLOCKED behind runs making no progress")
        return ", ".join(parts)


def queue_health(instance: DagsterInstance, now: float | None = None) -> QueueHealth:
    now = time.time() if now is None else now
    in_flight = []
    for record in instance.get_run_records(filters=RunsFilter(statuses=IN_FLIGHT)):
        run = record.dagster_run
        logs = instance.event_log_storage.get_logs_for_run(run.run_id, limit=1, ascending=False)
        last = logs[0].timestamp if logs else record.update_timestamp.timestamp()
        in_flight.append(InFlight(run.run_id, run.job_name, run.status.value, run.tags.get(PARTITION_TAG),
                                  max(now - last, 0.0)))
    queued = list(instance.get_run_records(filters=RunsFilter(statuses=QUEUED)))
    oldest = min((r.create_timestamp for r in queued), default=None)
    return QueueHealth(in_flight, len(queued),
                       None if oldest is None else max(now - oldest.replace(tzinfo=oldest.tzinfo or timezone.utc)
                                                       .timestamp(), 0.0))


def status_lines(settings) -> list[tuple[str, bool, str]]:
    """(name, ok, detail) for ``salespulse status``: each domain's reports by the
    freshness rule (``salespulse.freshness``: ok while current, not ok when late
    or stale) and the run queue."""
    import psycopg2

    from salespulse.freshness import Targets, cursor_query, measure_all, reports_verdict

    lines = []
    try:
        conn = psycopg2.connect(settings.database_url, connect_timeout=3)
        try:
            with conn.cursor() as cur:
                found = measure_all(cursor_query(cur), Targets.from_settings(settings))
            for domain, measured in found["domains"].items():
                state, sentence = reports_verdict(measured)
                lines.append((f"reports {domain}", state in ("ok", "unknown"), sentence))
        finally:
            conn.close()
    except psycopg2.Error as exc:
        lines.append(("reports", False, str(exc).strip().splitlines()[0]))
    try:
        with open_instance(settings) as instance:
            health = queue_health(instance)
        lines.append(("dagster runs", not health.blocked, health.summary()))
    except FileNotFoundError as exc:
        lines.append(("dagster runs", False, str(exc)))
    except Exception as exc:  # the instance's database is down
        lines.append(("dagster runs", False, str(exc).strip().splitlines()[0][:200]))
    return lines

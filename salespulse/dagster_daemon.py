"""``salespulse dagster-daemon``: the Dagster daemon, with no run left behind.

The local stack and the compose ``dagster-daemon`` service both run this
instead of ``dagster-daemon run``:

1. **start**: before the daemon exists, every run in flight whose worker is
   gone is reported failed with the reason (:func:`salespulse.dagster_runs.repair`),
   so a stack killed with ``kill -9`` frees its queue on the next start;
2. **running**: ``dagster-daemon run ARGS`` is a child in its own process
   group; every ``--sweep`` seconds runs whose code server no longer runs
   them (a replaced ``dagster-code`` container) are repaired the same way.
   If the daemon exits, so does this wrapper (with its code), and the
   supervisor restarts both — which repairs again;
3. **stop** (SIGTERM/SIGINT): the runs in flight are ended first — terminated
   through the run launcher, reported canceled "stack stopping" if they do
   not end within ``--run-grace`` seconds — and only then the daemon's group
   gets SIGTERM (SIGKILL after ``--daemon-grace``); a last pass reports
   canceled whatever the daemon launched meanwhile. A supervisor must allow
   ``run-grace + daemon-grace + 5`` seconds (:func:`stop_seconds`).

The daemon's group is killed with the wrapper: it receives SIGTERM if the
wrapper dies (``PR_SET_PDEATHSIG``), so a supervisor's SIGKILL of the
wrapper's group still stops the daemon and its code servers.

``salespulse dagster-runs`` shows the run queue's health and repairs on demand.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from salespulse.parent_death import die_with_parent

log = logging.getLogger("salespulse.dagster_daemon")

RUN_GRACE_S = 8.0
DAEMON_GRACE_S = 8.0


def stop_seconds(run_grace: float = RUN_GRACE_S, daemon_grace: float = DAEMON_GRACE_S) -> int:
    """What a supervisor must allow between SIGTERM and SIGKILL."""
    return int(run_grace + daemon_grace + 5)


def _daemon_command(args: list[str]) -> list[str]:
    exe = Path(sys.executable).parent / "dagster-daemon"
    return [str(exe) if exe.exists() else (shutil.which("dagster-daemon") or "dagster-daemon"), "run", *args]


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def run(daemon_args: list[str], *, sweep_s: float, run_grace: float, daemon_grace: float) -> int:
    from dagster import DagsterInstance

    from salespulse.dagster_runs import STOP_REASON, end_in_flight, repair

    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())

    instance = DagsterInstance.get()  # DAGSTER_HOME
    repaired = repair(instance, at_start=True)
    log.info("start: %d orphaned run(s) repaired", len(repaired))
    if stopping.is_set():
        return 0
    daemon = subprocess.Popen(_daemon_command(daemon_args), start_new_session=True, preexec_fn=die_with_parent)
    log.info("dagster-daemon started (pid %d)", daemon.pid)
    while not stopping.wait(sweep_s):
        if daemon.poll() is not None:
            log.warning("dagster-daemon exited with %s", daemon.returncode)
            _signal_group(daemon, signal.SIGKILL)  # its code servers, if any are left
            return daemon.returncode or 1
        try:
            repair(instance, at_start=False)
        except Exception:  # the database may be restarting: next sweep
            log.exception("run sweep failed")

    log.info("stopping: ending the runs in flight, then the daemon")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut this short
    try:
        ended = end_in_flight(instance, STOP_REASON, wait_s=run_grace)
        log.info("stop: %d run(s) ended: %s", len(ended), ", ".join(f"{r.run_id[:8]} {r.now}" for r in ended))
    except Exception:
        log.exception("could not end the runs in flight")
    _signal_group(daemon, signal.SIGTERM)
    try:
        daemon.wait(daemon_grace)
    except subprocess.TimeoutExpired:
        log.warning("dagster-daemon still up after %.0f s: SIGKILL", daemon_grace)
    _signal_group(daemon, signal.SIGKILL)  # code servers and run workers it may have left
    daemon.wait()
    try:
        late = end_in_flight(instance, STOP_REASON, wait_s=0)
        if late:
            log.info("stop: %d run(s) launched while stopping reported canceled", len(late))
    except Exception:
        log.exception("could not end the runs launched while stopping")
    instance.dispose()
    return 0


def _cmd_daemon(args) -> int:
    daemon_args = [a for a in args.daemon_args]
    if daemon_args[:1] == ["--"]:
        daemon_args = daemon_args[1:]
    return run(daemon_args, sweep_s=args.sweep, run_grace=args.run_grace, daemon_grace=args.daemon_grace)


def _cmd_runs(args) -> int:
    from salespulse.dagster_runs import open_instance, queue_health, repair
    from salespulse.settings import get_settings

    try:
        instance = open_instance(get_settings())
    except FileNotFoundError as exc:
        print(f"error: {exc} (set DAGSTER_HOME, or start the local stack once)", file=sys.stderr)
        return 2
    with instance:
        if args.repair:
            for r in repair(instance, at_start=False):
                print(f"repaired {r.run_id} ({r.job_name}, partition {r.partition}): {r.was} -> {r.now}")
        health = queue_health(instance)
        for r in health.in_flight:
            print(f"{r.status:<10} {r.run_id}  {r.job_name}  partition={r.partition}  last event {r.idle_seconds:.0f} s ago")
        print(health.summary())
        return 1 if health.blocked else 0


def register(subparsers) -> None:
    from salespulse.dagster_runs import SWEEP_SECONDS

    daemon = subparsers.add_parser(
        "dagster-daemon", help="dagster-daemon run, repairing orphaned runs at start and ending runs at stop",
        description=__doc__.split("\n\n")[0])
    daemon.add_argument("--sweep", type=float, default=SWEEP_SECONDS, help="seconds between orphan sweeps")
    daemon.add_argument("--run-grace", type=float, default=RUN_GRACE_S,
                        help="seconds runs get to end after the termination request at stop")
    daemon.add_argument("--daemon-grace", type=float, default=DAEMON_GRACE_S,
                        help="seconds the daemon gets after SIGTERM before SIGKILL")
    daemon.add_argument("daemon_args", nargs=argparse.REMAINDER,
                        help="arguments of `dagster-daemon run` after --, e.g. -- -w workspace.yaml")
    daemon.set_defaults(func=_cmd_daemon)
    runs = subparsers.add_parser("dagster-runs", help="runs in flight and queued; exit 1 if the queue is blocked")
    runs.add_argument("--repair", action="store_true",
                      help="report failed the STARTED runs whose code server no longer runs them")
    runs.set_defaults(func=_cmd_runs)

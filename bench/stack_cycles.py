"""Stop/start cycles of the whole local stack (issue 9): ``make cycles``, or
``.venv/bin/python bench/stack_cycles.py [--cycles 20] [--kill-every 5] [--seed S]``.

Starts ``salespulse stack up`` (own state directory and free ports, so a
``make run`` on this machine is never touched) and, for each cycle:

1. waits until the reports are current: every domain's reports ``ok`` by the
   freshness rule (``salespulse.freshness``, what ``salespulse status`` and the
   ``reports_current`` check use), and both
   overview tables written *after* this start (a refresh really ran);
2. lets the stack run 0-60 s more, so the stop lands at a random moment of the
   minute (often while a minute run is in flight);
3. stops it the way users do: SIGTERM (Ctrl-C), or every ``--kill-every``-th
   cycle SIGKILL to the whole ``make run`` process group (a crash / OOM kill).

It prints one line per cycle (time to current reports, orphaned runs the next
start repaired, runs the stop ended, processes left behind) and, last, one
JSON object. Exit code 1 if a start took longer than ``--target-s`` (120 s) to
current reports, a process outlived a stop, or a start found a run left in
flight by a SIGTERM stop.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from salespulse.catalog import DOMAINS  # noqa: E402
from salespulse.freshness import Targets, cursor_query, measure_all  # noqa: E402
from salespulse.settings import Settings  # noqa: E402
from tests.support.stack import LocalStack  # noqa: E402

REPAIRED_AT_START = re.compile(r"start: (\d+) orphaned run\(s\) repaired")
ENDED_AT_STOP = re.compile(r"stop: (\d+) run\(s\) ended")


def reports_current(stack: LocalStack, started: datetime) -> bool:
    try:
        conn = psycopg2.connect(stack.admin_url, connect_timeout=3)
    except psycopg2.Error:
        return False  # not up yet
    try:
        with conn.cursor() as cur:
            found = measure_all(cursor_query(cur), Targets.from_settings(Settings()))
            written = []
            for domain in DOMAINS.values():
                cur.execute(f"SELECT max(computed_at) FROM {domain.overview}")
                written.append(cur.fetchone()[0])
    except psycopg2.Error:
        return False  # migrations still running
    finally:
        conn.close()
    return all(d["reports"]["state"] in ("ok", "unknown") for d in found["domains"].values()) and all(w is not None and w > started for w in written)


def stop(stack: LocalStack, kill: bool) -> tuple[float, list[int]]:
    t0 = time.monotonic()
    if kill:
        os.killpg(stack.proc.pid, signal.SIGKILL)  # `make run`'s group: supervisord and its launcher
        stack.proc.wait()
        deadline = time.monotonic() + 30  # the parent-death signals take their processes' stop paths
        while stack_processes(stack) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftovers = stack_processes(stack)
        stack.kill_leftovers()
    else:
        _rc, leftovers = stack.stop()
    return time.monotonic() - t0, leftovers


def stack_processes(stack: LocalStack) -> list[int]:
    from tests.support.stack import marked_processes

    return marked_processes(stack.marker)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--kill-every", type=int, default=5, help="every Nth stop is a SIGKILL (0: never)")
    parser.add_argument("--target-s", type=float, default=120.0, help="a start must reach current reports within this")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="give up waiting for current reports")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-state", action="store_true")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    log = Path(tempfile.mkdtemp(prefix="salespulse-cycles-")) / "stack.log"
    stack = LocalStack(log)
    print(f"state {stack.state}, log {log}")
    rows, failures = [], []
    try:
        for cycle in range(1, args.cycles + 1):
            offset = log.stat().st_size if log.exists() else 0
            started = datetime.now(timezone.utc)
            t0 = time.monotonic()
            stack.start()
            try:
                stack.wait_for(lambda: reports_current(stack, started), args.timeout_s, "current reports", 2.0)
                to_current = time.monotonic() - t0
            except AssertionError as exc:
                to_current = float("inf")
                failures.append(f"cycle {cycle}: {str(exc).splitlines()[0]}")
            new_text = log.read_text(errors="replace")[offset:]
            repaired = sum(int(n) for n in REPAIRED_AT_START.findall(new_text))
            time.sleep(rng.uniform(0, 60))
            kill = args.kill_every > 0 and cycle % args.kill_every == 0
            stop_text_from = log.stat().st_size
            stop_s, leftovers = stop(stack, kill)
            ended = sum(int(n) for n in ENDED_AT_STOP.findall(log.read_text(errors="replace")[stop_text_from:]))
            previous_kill = bool(rows) and rows[-1]["stop"] == "SIGKILL"
            row = {"cycle": cycle, "to_current_s": round(to_current, 1), "orphans_repaired": repaired,
                   "stop": "SIGKILL" if kill else "SIGTERM", "stop_s": round(stop_s, 1), "runs_ended_at_stop": ended,
                   "leftover_processes": len(leftovers)}
            rows.append(row)
            print(f"cycle {cycle:>2}: current reports after {to_current:6.1f} s; repaired at start {repaired}; "
                  f"{row['stop']} stop in {stop_s:5.1f} s, runs ended {ended}, processes left {len(leftovers)}",
                  flush=True)
            if to_current > args.target_s:
                failures.append(f"cycle {cycle}: reports current after {to_current:.1f} s > {args.target_s:.0f} s")
            if leftovers:
                failures.append(f"cycle {cycle}: {len(leftovers)} process(es) outlived the stop")
            if repaired and cycle > 1 and not previous_kill:
                failures.append(f"cycle {cycle}: the start repaired {repaired} run(s) a SIGTERM stop left in flight")
    finally:
        if stack.proc is not None and stack.proc.poll() is None:
            stack.stop()
        stack.kill_leftovers()
        if not args.keep_state:
            stack.remove_state()
    finite = [r["to_current_s"] for r in rows if r["to_current_s"] != float("inf")]
    summary = {
        "cycles": len(rows),
        "sigkill_stops": sum(r["stop"] == "SIGKILL" for r in rows),
        "orphans_repaired": sum(r["orphans_repaired"] for r in rows),
        "runs_ended_at_stop": sum(r["runs_ended_at_stop"] for r in rows),
        "longest_to_current_s": max(finite, default=None),
        "median_to_current_s": sorted(finite)[len(finite) // 2] if finite else None,
        "leftover_processes": sum(r["leftover_processes"] for r in rows),
        "failures": failures,
        "passed": not failures and len(rows) == args.cycles,
    }
    for failure in failures:
        print("FAIL", failure)
    print(json.dumps(summary))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""A soak of the real local stack: ``make soak`` or
``.venv/bin/python bench/soak.py --minutes 60 --rate 200``.

Starts ``salespulse stack up`` on its own state folder and free ports (a
``make run`` on this machine is never touched), with every retention window
scaled down through the ordinary settings (``--window-minutes``, by default a
sixth of the run), so the steady state is reached inside the run. After the
stack is up it adds one more e-commerce producer at ``--rate`` events/s (0:
none, the stack's default rates only). Every minute it samples:

* each store's size (``salespulse.status.store_sizes``: the same list and
  bounds ``salespulse status`` shows);
* each supervised process's memory (PSS of its process tree, so the shared
  buffers of PostgreSQL are not counted once per backend) and CPU (its tree's
  user + system time, exited children included), and the whole stack's;
* what the embedded broker holds and its rotations, the Spark Connect
  server's live sessions, Dagster's runs and event-log rows;
* rows-visible p95 of the last minute (``salespulse.freshness``, what
  ``/api/pipeline/freshness`` serves).

It prints a table as it goes and ends with one JSON line; slopes are least
squares over the samples of the run's second half. Nothing here asserts a
figure: the aims are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.stack import REPO, LocalStack  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: retention settings scaled down for the soak (same code paths); days
WINDOW_SETTINGS = ("DEAD_LETTER_RETENTION_DAYS", "OPS_HISTORY_RETENTION_DAYS", "LEDGER_RETENTION_DAYS",
                   "DAGSTER_RUN_RETENTION_DAYS", "DAGSTER_FAILED_RUN_RETENTION_DAYS")


# -- processes -------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, utime+stime+cutime+cstime in ticks) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    return table


def _tree(root: int, table: dict[int, tuple[int, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(pid)
            todo += children.get(pid, [])
    return out


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def sample_processes(stack: LocalStack) -> dict[str, tuple[float, float]]:
    """name -> (memory MB, CPU seconds so far) per supervised process, and "stack" for all of them."""
    table = _proc_table()
    out = {}
    for info in stack.rpc().supervisor.getAllProcessInfo():
        if not info.get("pid"):
            continue
        pids = _tree(info["pid"], table)
        out[info["name"]] = (sum(_pss_kb(p) for p in pids) / 1024,
                             sum(table[p][1] for p in pids) / CLOCK_TICKS)
    supervisord = int((stack.state / "supervisor" / "supervisord.pid").read_text())
    pids = _tree(supervisord, table)
    out["stack"] = (sum(_pss_kb(p) for p in pids) / 1024, sum(table[p][1] for p in pids) / CLOCK_TICKS)
    return out


# -- the stack's own figures -------------------------------------------------------
def sample_database(stack: LocalStack) -> dict:
    from salespulse.freshness import Targets, cursor_query, measure_all
    from salespulse.settings import Settings
    from salespulse.status import store_sizes

    settings = Settings(**_settings_env(stack))
    with psycopg2.connect(stack.admin_url, connect_timeout=5) as conn:
        stores = {s.name: s for s in store_sizes(conn, settings)}
        with conn.cursor() as cur:
            fresh = measure_all(cursor_query(cur), Targets.from_settings(settings))
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM events")
            events = cur.fetchone()[0]
            # messages the ledger's ranges still account for one by one (older ones are trimmed)
            cur.execute("SELECT coalesce(sum(stored + duplicates + dead_lettered), 0) FROM ingest_ledger_ranges")
            ledger_messages = cur.fetchone()[0]
    p95 = [d["rows"]["p95_s"] for d in fresh["domains"].values() if d["rows"]["p95_s"] is not None]
    dagster_url = stack.admin_url.rsplit("/", 1)[0] + "/dagster"
    with psycopg2.connect(dagster_url, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM event_logs), "
                    "(SELECT coalesce(max(id), 0) FROM runs)")
        runs, event_rows, runs_created = cur.fetchone()
    return {"stores": stores, "rows_visible_p95_s": max(p95) if p95 else None, "events": events,
            "ledger_messages": ledger_messages,
            "dagster_runs": runs, "dagster_event_rows": event_rows, "dagster_runs_created": runs_created}


def _settings_env(stack: LocalStack) -> dict:
    env = stack.client_env
    return {k.lower(): v for k, v in env.items() if k.lower() in _settings_fields()}


def _settings_fields() -> set[str]:
    from salespulse.settings import Settings

    return set(Settings.model_fields)


def broker_state(stack: LocalStack) -> dict:
    from salespulse.broker_rotation import RotationFiles

    state = RotationFiles(stack.state).load_state()
    return {"held": state.held_messages if state else None, "rotations": state.rotations if state else 0,
            "last_pause_s": state.last_pause_s if state else None, "aborted": state.aborted if state else 0}


def spark_sessions(stack: LocalStack) -> int | None:
    """Live Spark Connect sessions: ``SessionHolder`` objects alive in the server's
    JVM (``jcmd GC.class_histogram``, which runs a full GC first: live objects only)."""
    spark = next((i for i in stack.rpc().supervisor.getAllProcessInfo() if i["name"] == "spark"), None)
    if not spark or not spark.get("pid"):
        return None
    table = _proc_table()
    java = [p for p in _tree(spark["pid"], table) if Path(f"/proc/{p}/comm").read_text().strip() == "java"]
    if not java:
        return None
    try:
        out = subprocess.run(["jcmd", str(java[0]), "GC.class_histogram"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[-1] == "org.apache.spark.sql.connect.service.SessionHolder":
            return int(parts[1])
    return 0


# -- arithmetic ----------------------------------------------------------------------
def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (minute, value) points, per hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return None if var == 0 else round(60 * sum((x - mx) * (y - my) for x, y in points) / var, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--rate", type=float, default=200, help="extra e-commerce events/s (0: none)")
    parser.add_argument("--window-minutes", type=float, help="retention windows (default: a sixth of the run)")
    parser.add_argument("--warmup-minutes", type=float, default=5, help="not sampled for the slopes either way")
    parser.add_argument("--keep-state", action="store_true")
    args = parser.parse_args(argv)
    window_days = (args.window_minutes or max(args.minutes / 6, 5)) / 1440
    log = Path(tempfile.mkdtemp(prefix="salespulse-soak-")) / "stack.log"
    stack = LocalStack(log)
    for name in WINDOW_SETTINGS:
        stack.env[name] = f"{window_days:.6f}"
    stack.env["LEDGER_ROLLUP_MINUTES"] = str(max(1, round(window_days * 1440 / 2)))  # before the trim
    # dead letters the reconciliation still reads are kept: its look-back is a window too
    stack.env["RECONCILE_MINUTES"] = "5"
    print(f"state {stack.state}, log {log}, retention windows {window_days * 1440:.1f} min", flush=True)
    producer = None
    samples: list[dict] = []
    try:
        stack.start()
        stack.wait_for(lambda: stack.ready_marker.exists(), 300, "the stack's set-up", 2.0)
        if args.rate > 0:
            env = {**stack.client_env, "METRICS_PORT": "0"}
            producer = subprocess.Popen([sys.executable, "-m", "services.producer", "--domain", "ecommerce",
                                         "--rate", str(args.rate)], cwd=REPO, env=env,
                                        stdout=open(log.with_name("producer.log"), "ab"), stderr=subprocess.STDOUT)
        started = time.monotonic()
        minute = 0
        try:
            while time.monotonic() - started < args.minutes * 60:
                minute += 1
                time.sleep(max(0.0, started + minute * 60 - time.monotonic()))
                sample = take_sample(stack, minute)
                samples.append(sample)
                print_row(sample, header=minute == 1)
                if producer is not None and producer.poll() is not None:
                    raise SystemExit(f"the extra producer exited ({producer.returncode}) at minute {minute}: "
                                     f"see {log.with_name('producer.log')}")
        except KeyboardInterrupt:  # Ctrl-C: stop early, still summarise what was sampled
            print(f"interrupted after {len(samples)} samples", flush=True)
    finally:
        if producer is not None:
            producer.terminate()
            producer.wait(60)
        if stack.proc is not None and stack.proc.poll() is None:
            stack.stop()
        stack.kill_leftovers()
        if not args.keep_state:
            stack.remove_state()
    print(json.dumps(summary(samples, args)), flush=True)
    return 0


def take_sample(stack: LocalStack, minute: int) -> dict:
    sample = {"minute": minute, "processes": sample_processes(stack), "broker": broker_state(stack),
              "spark_sessions": spark_sessions(stack)}
    try:
        sample.update(sample_database(stack))
    except psycopg2.Error as exc:
        print(f"minute {minute}: database sample failed: {exc}", flush=True)
    return sample


def print_row(sample: dict, header: bool) -> None:
    procs = sample["processes"]
    names = sorted(procs)
    if header:
        print("min  p95_s  events     held  rot  spark runs  ev_rows  " + "  ".join(f"{n[:10]:>10}" for n in names)
              + "   (MB / cpu s)", flush=True)
    stores = sample.get("stores", {})
    print(f"{sample['minute']:>3}  {sample.get('rows_visible_p95_s') or 0:5.2f}  {sample.get('events', 0):>9}  "
          f"{sample['broker']['held'] or 0:>6}  {sample['broker']['rotations']:>3}  "
          f"{sample['spark_sessions'] if sample['spark_sessions'] is not None else '-':>5} "
          f"{sample.get('dagster_runs', 0):>5}  {sample.get('dagster_event_rows', 0):>7}  "
          + "  ".join(f"{procs[n][0]:5.0f}/{procs[n][1]:4.0f}" for n in names), flush=True)
    print("     stores MB: " + ", ".join(f"{name} {s.bytes / 1e6:.2f}" for name, s in stores.items()), flush=True)


def summary(samples: list[dict], args) -> dict:
    full = [s for s in samples if "stores" in s]
    if not full:
        return {"minutes": args.minutes, "events_per_s": args.rate, "error": "no complete sample"}
    half = [s for s in full if s["minute"] > max(args.minutes / 2, args.warmup_minutes)]
    first, last = full[0], full[-1]
    stores = sorted(last["stores"])
    procs = sorted(set(last["processes"]))

    def store_slope(name):
        return slope_per_hour([(s["minute"], s["stores"][name].bytes / 1e6) for s in half if name in s["stores"]])

    def rss_slope(name):
        return slope_per_hour([(s["minute"], s["processes"][name][0]) for s in half if name in s["processes"]])

    def cpu_share(name):
        pts = [(s["minute"], s["processes"][name][1]) for s in half if name in s["processes"]]
        if len(pts) < 2:
            return None
        return round((pts[-1][1] - pts[0][1]) / ((pts[-1][0] - pts[0][0]) * 60), 3)

    last_store = last["stores"]
    raw = [n for n in stores if last_store[n].kind == "raw"]
    events = max(last.get("events", 0), 1)
    runs_half = [(s["minute"], s["dagster_runs_created"]) for s in half]
    p95s = [s["rows_visible_p95_s"] for s in full if s["minute"] > args.warmup_minutes
            and s.get("rows_visible_p95_s") is not None]
    return {
        "minutes": args.minutes, "events_per_s": args.rate,
        "store_mb_first": {n: round(first["stores"][n].bytes / 1e6, 3) for n in stores if n in first["stores"]},
        "store_mb_last": {n: round(last_store[n].bytes / 1e6, 3) for n in stores},
        "store_mb_per_hour_last_half": {n: store_slope(n) for n in stores},
        "store_pct_per_hour_last_half": {n: (round(100 * store_slope(n) / (last_store[n].bytes / 1e6), 2)
                                             if store_slope(n) is not None and last_store[n].bytes else None)
                                         for n in stores},
        "rss_mb_last": {n: round(last["processes"][n][0], 1) for n in procs},
        "rss_mb_per_hour_last_half": {n: rss_slope(n) for n in procs},
        "cpu_share_last_half": {n: cpu_share(n) for n in procs},
        "rows_visible_p95_s_max": max(p95s) if p95s else None,
        "ledger_bytes_per_event": round(last_store["ingest ledger"].bytes / max(last["ledger_messages"], 1), 1),
        "raw_bytes_per_event": round(sum(last_store[n].bytes for n in raw) / events, 1),
        "dagster_runs_per_hour": slope_per_hour(runs_half),
        "spark_sessions_max": max((s["spark_sessions"] or 0) for s in full),
        "broker_held_max": max((s["broker"]["held"] or 0) for s in full),
        "broker_rotations": last["broker"]["rotations"], "broker_rotations_aborted": last["broker"]["aborted"],
        "broker_last_pause_s": last["broker"]["last_pause_s"],
    }


if __name__ == "__main__":
    sys.exit(main())

"""``salespulse status``: the health of each part of the stack, one line each.

Works for the embedded stack and for external services alike: every check
goes through the configured URLs (settings), not through process ids. When a
local stack (``salespulse stack up``) runs on this machine, one more line per
supervised process gives supervisord's view: running, restarting (and why),
or down. Any line that is not up makes the exit code 1.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

import psycopg2

from salespulse.db import pending_migrations
from salespulse.ops.healthcheck import probe_http, probe_tcp
from salespulse.settings import Settings, get_settings


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _check_postgres(settings: Settings) -> Check:
    try:
        pending = pending_migrations(settings.database_url)
    except psycopg2.Error as exc:
        return Check("postgres", False, str(exc).strip().splitlines()[0])
    if pending:
        return Check("postgres", False, f"pending migrations: {', '.join(pending)}")
    return Check("postgres", True, "reachable, migrations up to date")


def _check_broker(settings: Settings) -> Check:
    from confluent_kafka import KafkaException

    from salespulse.contracts import all_topic_partitions
    from salespulse.kafka import admin_client, existing_topics

    try:
        present = existing_topics(admin_client(settings.kafka_bootstrap_servers, log_level=0), timeout=3)
    except KafkaException as exc:
        return Check("broker", False, str(exc))
    missing = [t for t in all_topic_partitions() if t not in present]
    if missing:
        return Check("broker", False, f"missing topics: {', '.join(missing)}")
    return Check("broker", True, f"{len(present)} topics" + rotation_summary(settings))


def rotation_summary(settings: Settings) -> str:
    """The embedded broker's rotations (salespulse/broker_rotation.py), if this machine runs it."""
    import time

    from salespulse.broker_rotation import RotationFiles

    state = RotationFiles(settings.salespulse_state_dir).load_state()
    if state is None:
        return ""
    text = f"; holds {state.held_messages:,} messages (rotated at {state.threshold:,}), {state.rotations} rotations"
    if state.last_rotation_at:
        text += (f", last at {time.strftime('%H:%M:%S', time.localtime(state.last_rotation_at))}"
                 f" (producers paused {state.last_pause_s} s)")
    if state.aborted:
        text += f", {state.aborted} given up (last: {state.last_abort_reason})"
    return text


def _check_tcp(name: str, host: str, port: int) -> Check:
    reason = probe_tcp(host, port, timeout=2)
    if reason is not None:
        return Check(name, False, f"{host}:{port}: {reason}")
    return Check(name, True, f"listening on {host}:{port}")


def _check_http(name: str, url: str) -> Check:
    reason, body = probe_http(url, timeout=3, read=2000)
    if reason is not None:
        return Check(name, False, f"{url}: {reason}")
    try:
        detail = json.loads(body).get("status", "ok")
    except (ValueError, AttributeError):
        detail = "ok"
    return Check(name, True, f"{url}: {detail}")


def _check_processes(settings: Settings) -> list[Check]:
    """One line per process of a local stack's supervisord (none if no stack runs here)."""
    try:
        from salespulse.stack.supervise import process_states
    except ModuleNotFoundError:  # the app image has no embedded stack (.dockerignore)
        return []
    states = process_states(settings.salespulse_state_dir) or []
    return [Check(f"process {p.name}", p.ok, f"{p.state.lower()}: {p.detail}") for p in states]


def _check_partitions(settings: Settings) -> Check:
    """The raw tables' month partitions and retention (salespulse.partitions)."""
    from salespulse.partitions import summary

    try:
        with psycopg2.connect(settings.database_url, connect_timeout=3) as conn, conn.cursor() as cur:
            return Check("raw partitions", True, summary(cur, settings.raw_retention_days))
    except psycopg2.Error as exc:
        return Check("raw partitions", False, str(exc).strip().splitlines()[0])


def _check_reports(settings: Settings) -> list[Check]:
    """Report lag per domain and the Dagster run queue (salespulse.dagster_runs)."""
    from salespulse.dagster_runs import status_lines

    return [Check(*line) for line in status_lines(settings)]


def check_all(settings: Settings) -> list[Check]:
    spark = urlsplit(settings.spark_remote)  # sc://host:port/;params: urlsplit reads any scheme's host
    return [
        _check_postgres(settings),
        _check_partitions(settings),
        _check_broker(settings),
        _check_tcp("spark-connect", spark.hostname or "127.0.0.1", spark.port or 15002),
        _check_http("producer-ecommerce", f"http://127.0.0.1:{settings.producer_ecommerce_metrics_port}/health"),
        _check_http("producer-restaurant", f"http://127.0.0.1:{settings.producer_restaurant_metrics_port}/health"),
        _check_http("consumer", f"http://127.0.0.1:{settings.consumer_metrics_port}/health"),
        _check_http("dagster", f"http://127.0.0.1:{settings.dagster_port}/server_info"),
        _check_http("dashboard", f"http://127.0.0.1:{settings.dashboard_port}/health"),
        *_check_processes(settings),
        *_check_reports(settings),
    ]


def _cmd_status(args) -> int:
    results = check_all(get_settings())
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{'UP  ' if r.ok else 'DOWN'}  {r.name:<{width}}  {r.detail}")
    print_stores(get_settings())
    return 0 if all(r.ok for r in results) else 1


def print_stores(settings: Settings) -> None:
    """Each store's size and what bounds it (nothing when the database is down: its line says so)."""
    try:
        with psycopg2.connect(settings.database_url, connect_timeout=3) as conn:
            sizes = store_sizes(conn, settings)
    except psycopg2.Error:
        return
    width = max(len(s.name) for s in sizes)
    print("stores (size on disk, rows, bound):")
    for s in sizes:
        rows = "" if s.rows is None else f"{s.rows:,}"
        print(f"      {s.name:<{width}}  {s.bytes / 1e6:9.1f} MB  {rows:>13} rows  {s.bound}")


def register(subparsers) -> None:
    subparsers.add_parser("status", help="health of each part of the stack").set_defaults(func=_cmd_status)


# -- what grows, and its bound ---------------------------------------------------
@dataclass(frozen=True)
class Store:
    """A store of the stack: its tables (partitions count with their parent) and its bound."""

    name: str
    kind: str  # "raw": grows with the data kept (RAW_RETENTION_DAYS); "bounded": a window; "reports"
    tables: tuple[str, ...]
    bound: str  # the settings that bound it


@dataclass(frozen=True)
class StoreSize:
    name: str
    kind: str
    bytes: int
    bound: str
    rows: int | None = None  # exact for the bounded stores, an estimate (planner statistics) for the others


def stores(settings: Settings | None = None) -> list[Store]:
    """Every store in the application database (the one list ``status`` and the
    soak read); with ``settings`` each bound also says its current values."""
    from salespulse.bounded_stores import OPS_TABLES

    def bound(*fields: str) -> str:
        if settings is None:
            return ", ".join(f.upper() for f in fields)
        return ", ".join(f"{f.upper()}={getattr(settings, f):g}" for f in fields)

    return [
        Store("raw tables", "raw", ("events", "transactions", "orders", "order_items", "products"),
              bound("raw_retention_days")),
        Store("raw keys", "raw", ("event_keys", "order_keys"), bound("raw_retention_days")),
        Store("daily aggregates", "raw", ("daily_event_totals", "daily_product_sales", "daily_aggregates_state"),
              "one row per day and product (kept for the all-time figures)"),
        Store("reports", "reports", ("report_*_minute",), "RAW_RETENTION_DAYS (with their raw rows)"),
        Store("ingest ledger", "bounded", ("ingest_streams", "ingest_ledger_ranges", "ingest_ledger_rollup"),
              bound("ledger_rollup_minutes", "ledger_retention_days")),
        Store("dead letters", "bounded", ("dead_letters",),
              bound("dead_letter_retention_days", "dead_letter_max_mb", "dead_letter_payload_max_bytes")
              + " (the last RECONCILE_MINUTES + 15 min are kept: the checks read them)"),
        Store("pipeline records", "bounded", tuple(t.table for t in OPS_TABLES),
              bound("ops_history_retention_days") + " (the newest row per check, topic and dropped table kept)"),
    ]


def store_sizes(conn, settings: Settings) -> list[StoreSize]:
    """Each store's bytes on disk (tables, indexes, TOAST, partitions), the
    tables no store names as "other tables", and Dagster's database and compute logs."""
    with conn.cursor() as cur:
        cur.execute("""
            SELECT coalesce(p.relname, c.relname), sum(pg_total_relation_size(c.oid)),
                   sum(greatest(c.reltuples, 0))::bigint
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_class p ON p.oid = pg_partition_root(c.oid) AND p.oid <> c.oid
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'm') GROUP BY 1""")
        found = cur.fetchall()
        sizes = {name: size for name, size, _ in found}
        estimates = {name: int(rows) for name, _, rows in found}
        cur.execute("SELECT coalesce(sum(pg_database_size(datname)), 0) FROM pg_database WHERE datname = 'dagster'")
        dagster_bytes = cur.fetchone()[0]
        out = []
        for store in stores(settings):  # a table name may be a pattern (fnmatch)
            names = [t for t in list(sizes) if any(fnmatch.fnmatchcase(t, pattern) for pattern in store.tables)]
            rows = 0
            for t in names:  # the bounded stores are counted (small by design), the others estimated
                if store.kind == "bounded":
                    cur.execute(f'SELECT count(*) FROM public."{t}"')
                    rows += cur.fetchone()[0]
                else:
                    rows += estimates[t]
            out.append(StoreSize(store.name, store.kind, sum(int(sizes.pop(t)) for t in names), store.bound, rows))
    conn.rollback()  # read only
    out.append(StoreSize("other tables", "bounded", sum(int(v) for v in sizes.values()),
                         "fixed size (" + ", ".join(sorted(sizes)) + ")"))
    out.append(StoreSize("dagster database", "bounded", int(dagster_bytes),
                         ", ".join(f"{f.upper()}={getattr(settings, f, '?'):g}" if hasattr(settings, f)
                                   else f.upper() for f in ("dagster_run_retention_days",
                                                            "dagster_failed_run_retention_days"))))
    logs = settings.dagster_home_path / "storage"
    out.append(StoreSize("dagster compute logs", "bounded", _folder_bytes(logs), "deleted with their runs"))
    return out


def _folder_bytes(path) -> int:
    import os

    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total

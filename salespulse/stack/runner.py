"""The local stack: every SalesPulse process on this machine under supervisord.

``salespulse stack up`` (what ``make run`` calls) writes a supervisord
configuration for :func:`plan` and execs supervisord in the foreground
(see :mod:`salespulse.stack.supervise` and docs/stack.md):

* a process that exits, whatever its exit code, is restarted (with a growing
  back-off if it keeps exiting within seconds); ``salespulse status`` shows it
  as restarting. Only Ctrl-C / SIGTERM stops the stack.
* start order is the priority order below; stop order is its reverse, one
  group at a time, each given ``stop_wait`` seconds before SIGKILL: producers,
  consumer (which drains the in-memory broker, ``CONSUMER_DRAIN_ON_STOP_S``),
  Dagster, dashboard, set-up monitor, Spark, PostgreSQL, broker.
* every process's output goes to the terminal, each line prefixed with the
  process's name (:mod:`salespulse.stack.launch`).

The infrastructure (broker, PostgreSQL, Spark Connect) starts at once; the
``setup`` process waits for it, applies migrations, checks the topics and
writes the Dagster instance config, then stays up as the stack's health
monitor. Every client runs as ``python -m salespulse.stack.launch --wait
MARKER NAME -- CMD``, which blocks until that set-up is done and then execs CMD.

A service whose URL is given in the environment (``DATABASE_URL``,
``KAFKA_BOOTSTRAP_SERVERS``, ``SPARK_REMOTE``) is used as is: its embedded
counterpart is not started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from salespulse.dagster_daemon import stop_seconds
from salespulse.private_dir import NotPrivate, private_dir
from salespulse.settings import Settings, get_settings
from salespulse.stack.postgres import EmbeddedPostgres

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: How long the stack's consumer keeps consuming after SIGTERM while it has lag
#: (the embedded broker holds messages in memory only); unless set explicitly.
STACK_CONSUMER_DRAIN_S = 15.0
#: Seconds the Dagster daemon's runs in flight, then the daemon itself, get at stop.
RUN_GRACE_S, DAEMON_GRACE_S = 4, 5


@dataclass
class Service:
    name: str
    command: list[str]
    priority: int  # start in ascending, stop in descending order
    url: str = ""
    needs_setup: bool = True  # held by `launch --wait` until set-up is done
    env: dict[str, str] = field(default_factory=dict)
    group: str = ""  # programs of one group start and stop together
    stop_wait: int = 5  # seconds from SIGTERM to SIGKILL (of the process group)
    start_secs: int = 3  # an exit sooner than this counts as a failed start (back-off)


#: Set by ``stack up`` for its processes: the embedded services it started (their
#: URLs are in the children's environment too, so the URLs alone no longer tell).
EMBEDDED_ENV = "SALESPULSE_STACK_EMBEDDED"


def embedded_flags(environ=os.environ) -> dict[str, bool]:
    """Which infrastructure the stack starts itself (no URL in the environment)."""
    if EMBEDDED_ENV in environ:
        started = set(environ[EMBEDDED_ENV].split(","))
        return {name: name in started for name in ("postgres", "broker", "spark")}
    return {
        "postgres": "DATABASE_URL" not in environ,
        "broker": "KAFKA_BOOTSTRAP_SERVERS" not in environ,
        "spark": "SPARK_REMOTE" not in environ,
    }


def plan(settings: Settings, environ=os.environ) -> list[Service]:
    """The processes of the local stack, in start order (priority); stopped in reverse.

    The worst-case stop time is the sum of the groups' ``stop_wait``
    (:func:`worst_case_stop_seconds`); a clean stop takes a fraction of it.
    """
    py = sys.executable
    embedded = embedded_flags(environ)
    services: list[Service] = []
    if embedded["broker"]:
        port = settings.embedded_broker_port
        services.append(Service("broker", [py, "-m", "salespulse.stack.broker", str(port)], 10,
                                url=f"kafka://127.0.0.1:{port}", needs_setup=False, stop_wait=2))
    if embedded["postgres"]:
        services.append(Service(
            "postgres", [py, "-m", "salespulse.stack.postgres", str(settings.salespulse_state_dir),
                         str(settings.embedded_pg_port), "2"], 20,
            url=f"postgresql://127.0.0.1:{settings.embedded_pg_port}/salespulse", needs_setup=False, stop_wait=6))
    if embedded["spark"]:
        services.append(Service("spark", [py, "-m", "salespulse.stack.spark"], 30,
                                url=f"sc://127.0.0.1:{settings.spark_connect_port}", needs_setup=False, stop_wait=8))
    services.append(Service("setup", [py, "-m", "salespulse.cli", "stack", "setup", "--watch"], 40,
                            needs_setup=False, stop_wait=3))
    services.append(Service("dashboard", [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{settings.dashboard_port}",
                                          "-w", "2", "--threads", "4", "--graceful-timeout", "3",
                                          "--no-control-socket", "dashboard:create_app()"], 50,
                            url=f"http://127.0.0.1:{settings.dashboard_port}", stop_wait=4))
    workspace = str(REPO_ROOT / "workspace.yaml")
    daemon_stop = stop_seconds(RUN_GRACE_S, DAEMON_GRACE_S)
    services += [
        Service("dagster-webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1",
                                      "-p", str(settings.dagster_port), "-w", workspace], 60,
                url=f"http://127.0.0.1:{settings.dagster_port}", group="dagster", stop_wait=daemon_stop),
        # the daemon behind a wrapper that ends the runs in flight before it stops it
        Service("dagster-daemon", [py, "-m", "salespulse.cli", "dagster-daemon", "--run-grace", str(RUN_GRACE_S),
                                   "--daemon-grace", str(DAEMON_GRACE_S), "--", "-w", workspace], 60,
                group="dagster", stop_wait=daemon_stop),
    ]
    drain = settings.consumer_drain_on_stop_s if "CONSUMER_DRAIN_ON_STOP_S" in environ else STACK_CONSUMER_DRAIN_S
    consumer = _metered("consumer", [py, "-m", "services.consumer"], settings.consumer_metrics_port, 70)
    consumer.env["CONSUMER_DRAIN_ON_STOP_S"] = f"{drain:g}"
    consumer.stop_wait = int(drain) + 3  # the drain, then finish the batch, commit, leave the group
    services.append(consumer)
    for domain, port in (("ecommerce", settings.producer_ecommerce_metrics_port),
                         ("restaurant", settings.producer_restaurant_metrics_port)):
        producer = _metered(f"producer-{domain}", [py, "-m", "services.producer", "--domain", domain], port, 80)
        producer.group = "producers"
        services.append(producer)
    return services


def worst_case_stop_seconds(services: list[Service]) -> int:
    """Groups stop one after the other; the members of a group at the same time."""
    waits: dict[str, int] = {}
    for service in services:
        key = service.group or service.name
        waits[key] = max(waits.get(key, 0), service.stop_wait)
    return sum(waits.values())


def _metered(name: str, command: list[str], port: int, priority: int) -> Service:
    """A stream service with its /health and /metrics on ``port``."""
    return Service(name, command, priority, url=f"http://127.0.0.1:{port}/metrics",
                   env={"METRICS_PORT": str(port)})


def embedded_urls(settings: Settings, environ=os.environ) -> dict[str, str]:
    """The connection variables of the embedded services this stack starts.

    Every client process gets them, so the stack's own ports (``EMBEDDED_PG_PORT``,
    ``EMBEDDED_BROKER_PORT``, ``SPARK_CONNECT_PORT``) are the only place to move it.
    """
    embedded = embedded_flags(environ)
    urls = {}
    if embedded["postgres"]:
        # the same cluster the stack's postgres process runs (see plan())
        urls["DATABASE_URL"] = EmbeddedPostgres(settings.salespulse_state_dir, settings.embedded_pg_port).admin_url
    if embedded["broker"]:
        urls["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{settings.embedded_broker_port}"
    if embedded["spark"]:
        urls["SPARK_REMOTE"] = f"sc://127.0.0.1:{settings.spark_connect_port}"
    return urls


def child_environment(settings: Settings) -> dict[str, str]:
    env = {**os.environ, **embedded_urls(settings)}
    env[EMBEDDED_ENV] = ",".join(name for name, on in embedded_flags().items() if on)
    env["DAGSTER_HOME"] = str(settings.dagster_home_path)
    env.setdefault("DAGSTER_UI_URL", f"http://127.0.0.1:{settings.dagster_port}")  # the dashboard's link
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("JAVA_HOME", settings.java_home)
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def up(args) -> int:
    """Write supervisord's config for this run and become supervisord (foreground)."""
    from salespulse.stack import supervise

    settings = get_settings()
    try:
        private_dir(settings.salespulse_state_dir)  # ours and 0700, or refused (salespulse/private_dir.py)
    except NotPrivate as exc:
        print(f"salespulse stack: {exc}", file=sys.stderr)
        return 2
    services = plan(settings)
    for service in services:
        wait = ["--wait", str(ready_marker(settings))] if service.needs_setup else []
        service.command = [sys.executable, "-m", "salespulse.stack.launch", *wait, service.name,
                           "--", *service.command]
    config = supervise.supervisor_dir(settings.salespulse_state_dir) / "supervisord.conf"
    config.parent.mkdir(exist_ok=True)
    config.write_text(supervise.render_config(services, settings.salespulse_state_dir, REPO_ROOT))
    # the children inherit supervisord's environment
    env = child_environment(settings)
    os.environ.clear()
    os.environ.update(env)
    os.environ["SALESPULSE_STACK_RUN"] = uuid.uuid4().hex  # ties `--wait` to this run's set-up
    sys.stdout.flush()
    supervise.exec_supervisord(config)
    return 1  # not reached


def print_summary(settings: Settings) -> None:
    rows = [(s.name, s.url or "-") for s in plan(settings)]
    width = max(len(n) for n, _ in rows)
    print("SalesPulse local stack — what runs where:", flush=True)
    print("  a DEVELOPMENT stack: 127.0.0.1 only, dashboard without a token; "
          "to deploy, use docker-compose.yml (docs/operations.md)", flush=True)
    for name, url in rows:
        print(f"  {name:<{width}}  {url}", flush=True)
    print(f"  dashboard UI  http://127.0.0.1:{settings.dashboard_port}   "
          f"Dagster UI  http://127.0.0.1:{settings.dagster_port}", flush=True)
    print("  state: " + str(settings.salespulse_state_dir) + "   health: salespulse status   stop: Ctrl-C",
          flush=True)


def setup(args) -> int:
    """Wait for the infrastructure, migrate, create topics, write Dagster config."""
    from salespulse.db import migrate
    from salespulse.kafka import ensure_topics

    settings = get_settings()
    applied = migrate(settings)
    print("migrations applied: " + (", ".join(applied) or "none pending"), flush=True)
    topics = ensure_topics(settings.kafka_bootstrap_servers, timeout=60)
    print("topics ready: " + ", ".join(f"{n}({p})" for n, p in topics.items()), flush=True)
    try:
        from salespulse.stack.dagster_home import prepare_dagster_home
    except ModuleNotFoundError:
        pass
    else:
        print(f"dagster home: {prepare_dagster_home(settings)}", flush=True)
    ready_marker(settings).write_text(os.environ.get("SALESPULSE_STACK_RUN", "manual"))
    print_summary(settings)
    if not args.watch:
        return 0
    return watch(settings)


def watch(settings: Settings) -> int:
    """Stay up as the stack's health monitor: one status line a minute."""
    from salespulse.status import check_all

    def _stop(signum, frame):
        raise _Stopping  # at once, even in the middle of a health check

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        time.sleep(30)
        while True:
            try:
                down = [r.name for r in check_all(settings) if not r.ok]
                print("health: " + ("all up" if not down else "DOWN: " + ", ".join(down)), flush=True)
            except Exception as exc:  # noqa: BLE001 - a monitor that dies would stop nothing but itself
                print(f"health: check failed: {exc!r}", flush=True)
            time.sleep(60)
    except _Stopping:
        return 0
    finally:
        ready_marker(settings).unlink(missing_ok=True)


class _Stopping(Exception):
    """Raised by the set-up monitor's signal handler."""


def ready_marker(settings: Settings) -> Path:
    return settings.salespulse_state_dir / "stack.ready"


def exec_process(args) -> int:
    """``stack exec [--wait] NAME -- CMD``: what supervisord runs (see :mod:`salespulse.stack.launch`)."""
    from salespulse.stack.launch import launch

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    launch(args.name, command, ready_marker(get_settings()) if args.wait else None)
    return 1  # not reached: launch execs


def wait_then_exec(args) -> int:
    """``stack wait -- CMD``: ``stack exec --wait`` without a name prefix."""
    args.wait, args.name = True, None
    return exec_process(args)


def reset(args) -> int:
    """Delete the local state dir (database, Dagster home); the stack must be stopped."""
    settings = get_settings()
    if not args.yes:
        print(f"this deletes {settings.salespulse_state_dir}; re-run with --yes", file=sys.stderr)
        return 2
    shutil.rmtree(settings.salespulse_state_dir, ignore_errors=True)
    print(f"removed {settings.salespulse_state_dir}")
    return 0


def register(subparsers) -> None:
    stack = subparsers.add_parser("stack", help="run the local stack").add_subparsers(dest="stack_cmd", required=True)
    stack.add_parser("up", help="start every service under supervisord; Ctrl-C stops them all").set_defaults(
        func=up)
    p = stack.add_parser("setup", help="migrate, create topics, write Dagster config")
    p.add_argument("--watch", action="store_true", help="then stay up as the health monitor")
    p.set_defaults(func=setup)
    p = stack.add_parser("wait", help="wait for set-up, then exec the command")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(func=wait_then_exec)
    p = stack.add_parser("exec", help="run a stack process: prefix its output with NAME, optionally after set-up "
                       "(stack exec [--wait] NAME -- CMD)")
    p.add_argument("name")
    p.add_argument("--wait", action="store_true", help="wait for this run's set-up first")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(func=exec_process)
    p = stack.add_parser("reset", help="delete local state (stop the stack first)")
    p.add_argument("--yes", action="store_true")
    p.set_defaults(func=reset)

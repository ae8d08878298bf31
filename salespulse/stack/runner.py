"""The local stack: every SalesPulse process on this machine under one supervisor.

``salespulse stack up`` (what ``make run`` calls) supervises the processes with
honcho's ``Manager`` (the Procfile runner as a library, so the process list can
depend on the environment): output multiplexed with a name per line, and on
Ctrl-C / SIGTERM every process group gets SIGTERM, then SIGKILL after a grace
period. If any process exits, the whole stack stops (nothing half-running).

Start-up order without a dependency graph: the infrastructure (PostgreSQL,
broker, Spark Connect) starts at once; the ``setup`` process waits for it,
applies migrations, creates every topic with its partition count and writes
the Dagster instance config, then stays up as the stack's health monitor.
Every client is wrapped in ``salespulse stack wait -- CMD``, which blocks until
that set-up is done and then execs CMD (with default signal dispositions, so
CMD stops on SIGTERM even when started from a non-interactive shell).

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

import honcho.manager
from honcho.printer import Printer

from salespulse.settings import Settings, get_settings
from salespulse.stack.postgres import EmbeddedPostgres

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: Seconds between SIGTERM and SIGKILL: enough for a consumer to finish its
#: batch and for the infrastructure's own delayed shutdown (see postgres/broker).
honcho.manager.KILL_WAIT = 20


@dataclass
class Service:
    name: str
    command: list[str]
    url: str = ""
    needs_setup: bool = True  # wrapped in `stack wait` until set-up is done
    env: dict[str, str] = field(default_factory=dict)


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
    """The processes of the local stack, in start order."""
    py = sys.executable
    embedded = embedded_flags(environ)
    services: list[Service] = []
    if embedded["postgres"]:
        services.append(Service(
            "postgres", [py, "-m", "salespulse.stack.postgres", str(settings.salespulse_state_dir),
                         str(settings.embedded_pg_port)],
            url=f"postgresql://127.0.0.1:{settings.embedded_pg_port}/salespulse", needs_setup=False))
    if embedded["broker"]:
        port = settings.embedded_broker_port
        services.append(Service("broker", [py, "-m", "salespulse.stack.broker", str(port)],
                                url=f"kafka://127.0.0.1:{port}", needs_setup=False))
    if embedded["spark"]:
        services.append(Service("spark", [py, "-m", "salespulse.stack.spark"],
                                url=f"sc://127.0.0.1:{settings.spark_connect_port}", needs_setup=False))
    services.append(Service("setup", [py, "-m", "salespulse.cli", "stack", "setup", "--watch"], needs_setup=False))
    services += [
        _metered("producer-ecommerce", [py, "-m", "services.producer", "--domain", "ecommerce"],
                 settings.producer_ecommerce_metrics_port),
        _metered("producer-restaurant", [py, "-m", "services.producer", "--domain", "restaurant"],
                 settings.producer_restaurant_metrics_port),
        _metered("consumer", [py, "-m", "services.consumer"], settings.consumer_metrics_port),
        Service("dagster-webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1",
                                      "-p", str(settings.dagster_port), "-w", str(REPO_ROOT / "workspace.yaml")],
                url=f"http://127.0.0.1:{settings.dagster_port}"),
        Service("dagster-daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")]),
        Service("dashboard", [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{settings.dashboard_port}",
                              "-w", "2", "--threads", "4", "--graceful-timeout", "10", "dashboard:create_app()"],
                url=f"http://127.0.0.1:{settings.dashboard_port}"),
    ]
    return services


def _metered(name: str, command: list[str], port: int) -> Service:
    """A stream service with its /health and /metrics on ``port``."""
    return Service(name, command, url=f"http://127.0.0.1:{port}/metrics", env={"METRICS_PORT": str(port)})


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


def _shell(command: list[str]) -> str:
    import shlex
    return "exec " + shlex.join(command)


def up(args) -> int:
    settings = get_settings()
    settings.salespulse_state_dir.mkdir(parents=True, exist_ok=True)
    settings.salespulse_state_dir.chmod(0o755)
    manager = honcho.manager.Manager(Printer(sys.stdout))
    base_env = child_environment(settings)
    base_env["SALESPULSE_STACK_RUN"] = uuid.uuid4().hex  # ties `stack wait` to this run's set-up
    for service in plan(settings):
        command = service.command
        if service.needs_setup:
            command = [sys.executable, "-m", "salespulse.cli", "stack", "wait", "--", *command]
        manager.add_process(service.name, _shell(command), env={**base_env, **service.env}, cwd=str(REPO_ROOT))
    manager.loop()
    return manager.returncode or 0


def print_summary(settings: Settings) -> None:
    rows = [(s.name, s.url or "-") for s in plan(settings)]
    width = max(len(n) for n, _ in rows)
    print("SalesPulse local stack — what runs where:", flush=True)
    for name, url in rows:
        print(f"  {name:<{width}}  {url}", flush=True)
    print(f"  dashboard UI  http://127.0.0.1:{settings.dashboard_port}   "
          f"Dagster UI  http://127.0.0.1:{settings.dagster_port}", flush=True)
    print("  state: " + str(settings.salespulse_state_dir) + "   stop: Ctrl-C", flush=True)


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

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    next_check = time.monotonic() + 30
    while not stop:
        time.sleep(0.5)
        if time.monotonic() >= next_check:
            results = check_all(settings)
            down = [r.name for r in results if not r.ok]
            print("health: " + ("all up" if not down else "DOWN: " + ", ".join(down)), flush=True)
            next_check = time.monotonic() + 60
    ready_marker(settings).unlink(missing_ok=True)
    return 0


def ready_marker(settings: Settings) -> Path:
    return settings.salespulse_state_dir / "stack.ready"


def wait_then_exec(args) -> int:
    """Block until this run's set-up is done (the ready marker holds our run id), then exec."""
    settings = get_settings()
    marker = ready_marker(settings)
    run_id = os.environ.get("SALESPULSE_STACK_RUN", "manual")
    while not (marker.exists() and marker.read_text() == run_id):
        time.sleep(0.3)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    command = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    os.execvp(command[0], command)


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
    stack.add_parser("up", help="start every service; Ctrl-C stops them all").set_defaults(func=up)
    p = stack.add_parser("setup", help="migrate, create topics, write Dagster config")
    p.add_argument("--watch", action="store_true", help="then stay up as the health monitor")
    p.set_defaults(func=setup)
    p = stack.add_parser("wait", help="wait for set-up, then exec the command")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(func=wait_then_exec)
    p = stack.add_parser("reset", help="delete local state (stop the stack first)")
    p.add_argument("--yes", action="store_true")
    p.set_defaults(func=reset)

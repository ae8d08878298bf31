"""Static validation of the production deployment (no Docker engine runs here):
docker-compose.yml, Dockerfile, .dockerignore, .env.example and docker/**.

* the compose file is valid against the official Compose Specification JSON
  schema (vendored from a PyPI package, see tests/data/README.md), before and
  after interpolation with .env.example;
* images are pinned; long-running services have health checks and are waited
  for with ``service_healthy``; only the UIs are published; the consumer scales;
* every command names a real entry point of this code base (or of a pinned
  dependency), and every environment variable set is one something reads;
* the Dockerfile's sources exist and are in the build context;
* the Dagster instance config and the PostgreSQL init script work against a
  real PostgreSQL (the conftest fixture).
"""

from __future__ import annotations

import configparser
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import uuid
import zipfile
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import psycopg2
import pytest
import yaml

from salespulse.settings import Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
SCHEMA_FILE = REPO / "tests" / "data" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
DOCKERFILE = REPO / "Dockerfile"

#: The only published ports: container port -> service.
UI_PORTS = {5000: "dashboard", 8080: "dagster-ui"}
#: The Kafka cluster: three KRaft nodes, each a broker and a controller.
KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")

#: Environment variables set for third-party images or read by files other
#: than salespulse.settings (each with what reads it). Everything else set on a
#: SalesPulse container must be a salespulse.settings.Settings field.
THIRD_PARTY_ENV = {
    # apache/kafka image: KAFKA_* become server.properties entries; CLUSTER_ID formats the KRaft log dir
    **{node: (re.compile(r"^KAFKA_[A-Z0-9_]+$"), {"CLUSTER_ID"}) for node in KAFKA_NODES},
    # postgres image: POSTGRES_*; DAGSTER_PG_* are read by docker/postgres/initdb/10-dagster.sql
    "postgres": (re.compile(r"^POSTGRES_(USER|PASSWORD|DB|INITDB_ARGS)$"),
                 {"DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"}),
    # redis image: redis-cli (the health check) reads its password from REDISCLI_AUTH;
    # docker/redis/redis-start.sh (its entry point) hands REDIS_PASSWORD to redis-server on stdin
    "redis": (re.compile(r"^(REDISCLI_AUTH|REDIS_PASSWORD)$"), set()),
    # nginx image: read by docker/nginx/dagster-ui-start.sh (its entry point) and the health check
    "dagster-ui": (re.compile(r"^DAGSTER_UI_(USER|PASSWORD)$"), set()),
}
#: Third-party images given a command line (redis-server's options; nginx in the foreground).
THIRD_PARTY_COMMANDS = {"redis": "redis-server", "dagster-ui": "nginx"}
#: Read by docker/dagster/dagster.yaml ({env: ...}) in the Dagster containers.
DAGSTER_STORAGE_ENV = {"DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB", "DAGSTER_PG_USERNAME",
                       "DAGSTER_PG_PASSWORD"}

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
                  r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")


# ---------------------------------------------------------------- loading
def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = value.strip()
    return env


def referenced_variables(text: str) -> dict[str, list[tuple[str | None, str | None]]]:
    found: dict[str, list] = {}
    for m in _VAR.finditer(text):
        name = m.group("name") or m.group("bare")
        if name:
            found.setdefault(name, []).append((m.group("op"), m.group("arg")))
    return found


def interpolate(value, env: dict[str, str]):
    """Compose-style interpolation (${V}, ${V:-d}, ${V-d}, ${V:?e}, ${V?e}, ${V:+a}, $$)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg")
        present = name in env
        val = env.get(name, "")
        if op in (":-", "-"):
            return val if (val if op == ":-" else present) else arg
        if op in (":?", "?"):
            if not (val if op == ":?" else present):
                raise KeyError(f"required variable {name}: {arg}")
            return val
        if op in (":+", "+"):
            return arg if (val if op == ":+" else present) else ""
        return val

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def env_example():
    return read_env_file(REPO / ".env.example")


@pytest.fixture(scope="module")
def compose(raw, env_example):
    return interpolate(raw, env_example)


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def one_shot(service: dict) -> bool:
    return str(service.get("restart", "no")) == "no"


def command_of(service: dict) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


def healthcheck_command(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test)
    if test[0] == "CMD-SHELL":
        return shlex.split(test[1])
    assert test[0] == "CMD", test
    return list(test[1:])


def our_image(service: dict) -> bool:
    return "build" in service


# ---------------------------------------------------------------- schema
def test_vendored_schema_is_the_published_one():
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert json.loads(SCHEMA_FILE.read_text())["title"] == "Compose Specification"


def test_compose_file_is_valid_against_the_compose_specification(raw, compose):
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    for doc in (raw, compose):
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_check_catches_mistakes(raw):
    schema = json.loads(SCHEMA_FILE.read_text())
    broken = json.loads(json.dumps(raw))
    broken["services"]["consumer"]["depends_on"]["kafka-1"]["condition"] = "service_ready"
    broken["services"]["dashboard"]["helthcheck"] = {}
    messages = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(broken)]
    assert len(messages) >= 2


# ---------------------------------------------------------------- .env
def test_every_variable_comes_from_env_example_or_has_a_default(env_example):
    for name, uses in referenced_variables(COMPOSE_FILE.read_text()).items():
        for op, _arg in uses:
            if op in (":-", "-"):
                continue
            assert name in env_example, f"${{{name}}} is required by docker-compose.yml but not in .env.example"


def test_env_example_has_placeholders_not_secrets():
    env = read_env_file(REPO / ".env.example")
    secrets = [k for k in env if re.search(r"PASSWORD|SECRET|TOKEN", k)]
    assert secrets
    for key in secrets:
        assert env[key] == "" or env[key].startswith("change-me"), f"{key} in .env.example must be a placeholder"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO).returncode == 0
    assert ignored, ".env must be gitignored"
    assert subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=REPO).returncode != 0


def test_required_credentials_fail_loudly_when_missing(raw, env_example):
    for name in [k for k in env_example if "PASSWORD" in k]:
        env = dict(env_example)
        del env[name]
        with pytest.raises(KeyError, match=name):
            interpolate(raw, env)


def test_no_password_has_a_default():
    for name, uses in referenced_variables(COMPOSE_FILE.read_text()).items():
        if re.search(r"PASSWORD|SECRET", name):
            assert all(op == ":?" for op, _ in uses), f"${{{name}}} must be required (${{{name}:?...}})"


def test_dashboard_is_closed_unless_opened_explicitly(raw, env_example):
    """Without a token compose refuses to interpolate (the token is required like
    every secret); given an empty one, as a user could, the dashboard gets
    DASHBOARD_AUTH=token and no token, which the app refuses to start with
    (tests/test_dashboard_auth.py)."""
    from dashboard.auth import required_token

    env = {k: v for k, v in env_example.items() if k not in ("DASHBOARD_TOKEN", "DASHBOARD_AUTH")}
    with pytest.raises(KeyError, match="DASHBOARD_TOKEN"):
        interpolate(raw, env)
    dash = interpolate(raw, {**env, "DASHBOARD_TOKEN": "given"})["services"]["dashboard"]["environment"]
    dash = {k: v for k, v in dash.items() if k != "DASHBOARD_TOKEN"}
    settings = Settings(**{k.lower(): v for k, v in dash.items() if k.lower() in Settings.model_fields})
    with pytest.raises(RuntimeError, match="DASHBOARD_TOKEN"):
        required_token(settings)
    with pytest.raises(RuntimeError, match="placeholder"):  # .env.example copied as is
        required_token(Settings(dashboard_auth="token", dashboard_token=env_example["DASHBOARD_TOKEN"]))
    assert dash["DASHBOARD_RATE_LIMIT_STORAGE"].startswith("redis://")
    assert urlsplit(dash["DASHBOARD_RATE_LIMIT_STORAGE"]).hostname == "redis"


# ---------------------------------------------------------------- images
def dockerfile_stages() -> dict[str, str]:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    stages = {}
    for image, name in re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        stages[name.lower() if name else image] = image
    return stages


def pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def test_every_image_is_pinned(services):
    stages = dockerfile_stages()
    for name, service in services.items():
        assert "image" in service, f"{name}: no image"
        assert pinned(service["image"]), f"{name}: image {service['image']} is not pinned"
        if our_image(service):
            assert service["build"]["context"] == "."
            assert service["build"]["target"] in stages, f"{name}: no Dockerfile stage {service['build']['target']}"
            assert service["image"].startswith(f"salespulse/{service['build']['target']}:")
    # base images of the Dockerfile too (stages built FROM another stage are fine)
    for stage, image in stages.items():
        assert image in stages or pinned(image), f"Dockerfile stage {stage}: {image} not pinned"
    for node in KAFKA_NODES:
        assert services[node]["image"].startswith("apache/kafka:3.9.")
    assert re.fullmatch(r"postgres:15\.\d+(-\w+)?", services["postgres"]["image"])


# ---------------------------------------------------------------- health and order
def test_every_long_running_service_has_a_healthcheck(services):
    long_running = [n for n, s in services.items() if not one_shot(s)]
    assert set(long_running) >= {*KAFKA_NODES, "postgres", "redis", "spark-master", "spark-worker", "spark-connect",
                                 "dagster-code", "dagster-webserver", "dagster-daemon",
                                 "producer-ecommerce", "producer-restaurant", "consumer", "dashboard"}
    for name in long_running:
        service = services[name]
        assert service["restart"] in ("unless-stopped", "always"), name
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check["test"][0] != "NONE", f"{name}: no healthcheck"
        assert healthcheck_command(service), name
    one_shots = {n for n, s in services.items() if one_shot(s)}
    assert one_shots == {"kafka-init", "migrate", "ops"}
    assert all("healthcheck" not in services[n] for n in one_shots)


def test_depends_on_waits_for_health_or_completion(services):
    for name, service in services.items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            want = "service_completed_successfully" if one_shot(services[dep]) else "service_healthy"
            assert spec["condition"] == want, f"{name} -> {dep}: {spec['condition']} (want {want})"
    needs = {
        "kafka-init": set(KAFKA_NODES), "migrate": {"postgres"},
        "consumer": {"kafka-init", "migrate"}, "producer-ecommerce": {"kafka-init"},
        "producer-restaurant": {"kafka-init"}, "dashboard": {"migrate"},
        "dagster-code": {"migrate", "spark-connect"}, "dagster-webserver": {"dagster-code"},
        "dagster-daemon": {"dagster-code"}, "spark-connect": {"spark-master"},
    }
    for name, deps in needs.items():
        assert deps <= set(services[name].get("depends_on", {})), f"{name} must wait for {deps}"


def test_only_the_uis_are_published_and_the_consumer_scales(services, compose):
    published = {}
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: container_name prevents --scale"
        for port in service.get("ports", []):
            text = str(port)
            host, _, container = text.rpartition(":")
            published[int(container.split("/")[0])] = name
            assert host, f"{name}: publish {text} with an explicit host port"
    assert published == UI_PORTS
    # no authentication of its own: reached only through the basic-auth proxy (tests/test_dagster_ui_proxy.py)
    assert "ports" not in services["dagster-webserver"]
    assert services["dagster-ui"]["depends_on"] == {"dagster-webserver": {"condition": "service_healthy"}}
    consumer = services["consumer"]
    assert "ports" not in consumer and "hostname" not in consumer
    # the data plane has no route out; only the UIs are on a published (non-internal) network
    # (who shares which network: test_networks_follow_need_to_reach)
    for name, service in services.items():
        nets = set(service.get("networks", []))
        assert nets, f"{name}: on no network (compose's default one joins everything)"
        public = {n for n in nets if not compose["networks"][n].get("internal")}
        assert bool(public) == (name in UI_PORTS.values()), name


def test_data_lives_in_named_volumes(services, compose):
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    for node in KAFKA_NODES:
        assert f"{node}-data:/var/lib/kafka/data" in services[node]["volumes"]
    for name in ("dagster-code", "dagster-webserver", "dagster-daemon"):
        assert "dagster-storage:/opt/dagster/storage" in services[name]["volumes"]
    assert set(compose["volumes"]) == {"postgres-data", *(f"{n}-data" for n in KAFKA_NODES), "dagster-storage"}
    init = next(v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v)
    assert (REPO / init.split(":")[0]).is_dir()


# ---------------------------------------------------------------- commands
def console_scripts() -> dict[str, str]:
    scripts = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == "console_scripts":
                scripts[ep.name] = dist.metadata["Name"].lower()
    return scripts


def runtime_requirements() -> set[str]:
    names = set()
    for line in (REPO / "docker" / "requirements-runtime.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[\[=<>~ ]", line)[0].lower().replace("_", "-"))
    return names


def pyspark_home() -> Path:
    return Path(importlib.util.find_spec("pyspark").origin).parent


def jar_has_class(class_name: str) -> bool:
    entry = class_name.replace(".", "/") + ".class"
    for jar in (pyspark_home() / "jars").glob("spark-*.jar"):
        with zipfile.ZipFile(jar) as z:
            if entry in z.namelist():
                return True
    return False


def check_python_module(module: str) -> None:
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"python -m {module}: no such module"
    if spec.submodule_search_locations:  # a package: needs __main__
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"python -m {module}: no __main__"
    else:
        assert "__main__" in Path(spec.origin).read_text(), f"python -m {module}: no main guard"
    importlib.import_module(module)


def check_command(argv: list[str], scripts: dict[str, str]) -> None:
    exe = argv[0]
    if exe == "python":
        assert argv[1] == "-m", argv
        check_python_module(argv[2])
        options = [a for a in argv[3:] if a.startswith("--")]
        if options:  # every option is one the module's own --help offers
            usage = subprocess.run([sys.executable, "-m", argv[2], "--help"], capture_output=True, text=True,
                                   timeout=120, cwd=REPO)
            assert usage.returncode == 0, usage.stderr
            for option in options:
                assert re.search(rf"(^|[\s\[]){re.escape(option)}\b", usage.stdout), f"{argv[2]}: no {option}"
        if argv[2] == "services.producer":
            assert argv[3:5] == ["--domain", argv[4]] and argv[4] in ("ecommerce", "restaurant")
            float(argv[argv.index("--rate") + 1])
        return
    if exe == "salespulse":
        project = tomllib.loads((REPO / "pyproject.toml").read_text())
        assert project["project"]["scripts"]["salespulse"] == "salespulse.cli:main"
        from salespulse.cli import build_parser

        if argv[1:] == ["--help"]:
            assert build_parser().format_help()
            return
        args = build_parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown subcommand
        assert callable(args.func)
        return
    if exe in ("spark-class", "spark-submit"):
        assert (pyspark_home() / "bin" / exe).is_file(), exe
        cls = argv[1] if exe == "spark-class" else argv[argv.index("--class") + 1]
        assert jar_has_class(cls), f"{cls} is in none of pyspark's jars"
        return
    if exe == "gunicorn":
        module, _, factory = argv[-1].partition(":")
        assert factory.endswith("()"), argv[-1]
        app_factory = getattr(importlib.import_module(module), factory[:-2])
        assert callable(app_factory)
    elif exe == "dagster" and argv[1:3] == ["api", "grpc"]:
        module = argv[argv.index("-m") + 1]
        definitions = importlib.import_module(module)
        from dagster import Definitions

        assert any(isinstance(v, Definitions) for v in vars(definitions).values()), f"{module} has no Definitions"
    # a console script of a package the image installs
    assert exe in scripts, f"{exe}: no such console script"
    assert scripts[exe] in runtime_requirements(), f"{exe} comes from {scripts[exe]}, not in the image"


def test_every_command_names_a_real_entry_point(services):
    scripts = console_scripts()
    for name, service in services.items():
        if not our_image(service):
            if name in THIRD_PARTY_COMMANDS:
                assert command_of(service)[0] == THIRD_PARTY_COMMANDS[name], name
            else:
                assert "command" not in service, f"{name}: third-party image runs its own entry point"
            continue
        argv = command_of(service)
        assert argv, f"{name}: no command"
        check_command(argv, scripts)
        if "healthcheck" in service and our_image(service):
            check_command(healthcheck_command(service), scripts)


def test_healthchecks_probe_the_port_each_service_listens_on(services):
    def probe_port(service):
        probe = healthcheck_command(service)
        if probe[:3] == ["python", "-m", "salespulse.ops.healthcheck"]:
            return urlsplit(probe[3]).port
        if probe[:3] == ["dagster", "api", "grpc-health-check"]:
            return int(probe[probe.index("-p") + 1])
        return None

    for name in ("producer-ecommerce", "producer-restaurant", "consumer"):
        assert probe_port(services[name]) == int(services[name]["environment"]["METRICS_PORT"]), name
    dash = command_of(services["dashboard"])
    assert dash[dash.index("--bind") + 1] == f"0.0.0.0:{probe_port(services['dashboard'])}" == "0.0.0.0:5000"
    web = command_of(services["dagster-webserver"])
    assert int(web[web.index("-p") + 1]) == probe_port(services["dagster-webserver"]) == 3000
    code = command_of(services["dagster-code"])
    assert int(code[code.index("-p") + 1]) == probe_port(services["dagster-code"]) == 4000
    assert probe_port(services["spark-master"]) == int(command_of(services["spark-master"])[-1])  # --webui-port
    assert probe_port(services["spark-connect"]) == spark_defaults()["spark.connect.grpc.binding.port"] == 15002


def spark_defaults() -> dict:
    values = {}
    for line in (REPO / "docker" / "spark" / "spark-defaults.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split(None, 1)
            values[key] = int(value) if value.isdigit() else value
    return values


def test_spark_gets_the_jdbc_driver_everywhere():
    conf = spark_defaults()
    jar = Settings().jdbc_jar if not os.environ.get("JDBC_JAR") else "/usr/share/java/postgresql.jar"
    assert jar == "/usr/share/java/postgresql.jar"
    for key in ("spark.jars", "spark.driver.extraClassPath", "spark.executor.extraClassPath"):
        assert conf[key] == jar
    assert "libpostgresql-jdbc-java" in DOCKERFILE.read_text()


# ---------------------------------------------------------------- environment
def test_every_environment_variable_is_one_something_reads(services):
    fields = {name.upper() for name in Settings.model_fields}
    dagster_yaml = (REPO / "docker" / "dagster" / "dagster.yaml").read_text()
    init_sql = (REPO / "docker" / "postgres" / "initdb" / "10-dagster.sql").read_text()
    for var in DAGSTER_STORAGE_ENV:
        assert f"env: {var}" in dagster_yaml
    for var in THIRD_PARTY_ENV["postgres"][1]:
        assert f"\\getenv" in init_sql and f" {var}" in init_sql
    for name, service in services.items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: use a mapping for environment"
        for var in env:
            if name in THIRD_PARTY_ENV:
                pattern, extra = THIRD_PARTY_ENV[name]
                assert pattern.match(var) or var in extra, f"{name}: {var} is not read by the {name} image"
            else:
                assert var in fields or var in DAGSTER_STORAGE_ENV, f"{name}: {var} is read by nothing"
                if var in DAGSTER_STORAGE_ENV:
                    assert name.startswith("dagster-"), f"{name}: {var} is only read by Dagster"


def test_connections_point_at_the_compose_services(services):
    advertised = [urlsplit(services[n]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")[0]
                           .replace("PLAINTEXT://", "//")) for n in KAFKA_NODES]
    bootstrap = ",".join(f"{a.hostname}:{a.port}" for a in advertised)
    for name, service in services.items():
        env = service.get("environment", {})
        if "KAFKA_BOOTSTRAP_SERVERS" in env:
            assert env["KAFKA_BOOTSTRAP_SERVERS"] == bootstrap, name  # every broker of the cluster
        if "SPARK_REMOTE" in env:
            assert env["SPARK_REMOTE"] == "sc://spark-connect:15002", name
        if "DATABASE_URL" in env:
            url = urlsplit(env["DATABASE_URL"])
            assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/" + services["postgres"]["environment"]["POSTGRES_DB"])
            # least privilege: only migrations and operations hold the admin password
            assert (url.password is not None) == (name in ("migrate", "ops")), name
    for node, address in zip(KAFKA_NODES, advertised):
        assert address.hostname == node and services[node].get("hostname") == node
    roles = {"consumer": "INGEST_DB_PASSWORD", "dashboard": "DASHBOARD_DB_PASSWORD",
             "dagster-code": "ANALYTICS_DB_PASSWORD"}
    for name, var in roles.items():
        assert var in services[name]["environment"], name
    workspace = yaml.safe_load((REPO / "docker" / "dagster" / "workspace.yaml").read_text())
    grpc = workspace["load_from"][0]["grpc_server"]
    assert (grpc["host"], grpc["port"]) == ("dagster-code", 4000)
    local = yaml.safe_load((REPO / "workspace.yaml").read_text())
    assert grpc["location_name"] == local["load_from"][0]["python_module"]["location_name"]


def test_kafka_is_kraft_with_explicit_topics(services):
    for node in KAFKA_NODES:
        env = services[node]["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # kafka-init creates them with their partitions
        assert env["KAFKA_LOG_RETENTION_HOURS"] == "168"
    assert command_of(services["kafka-init"]) == ["salespulse", "topics"]
    from salespulse.kafka import RETENTION_MS
    from salespulse.contracts import all_topic_partitions

    assert RETENTION_MS == 7 * 24 * 3600 * 1000
    assert all_topic_partitions() == {"ecommerce.events": 6, "ecommerce.events.dlq": 1,
                                      "restaurant.orders": 3, "restaurant.orders.dlq": 1}


def test_kafka_is_a_three_node_cluster_with_a_quorum_of_three(services):
    """Three combined broker+controller nodes of one cluster, each its own id,
    disk and advertised address, all three voters of the KRaft quorum."""
    envs = {node: services[node]["environment"] for node in KAFKA_NODES}
    assert sorted(int(env["KAFKA_NODE_ID"]) for env in envs.values()) == [1, 2, 3]
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1
    voters = {f"{env['KAFKA_NODE_ID']}@{node}:9093" for node, env in envs.items()}
    for node, env in envs.items():
        assert set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters, node
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{node}:9092"
        assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"].split(",")
        # internal topics (consumer offsets, transactions) and any default: 3 replicas, 2 in sync
        assert (env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"], env["KAFKA_DEFAULT_REPLICATION_FACTOR"],
                env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == ("3", "3", "3")
        assert (env["KAFKA_MIN_INSYNC_REPLICAS"], env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == ("2", "2")
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
    assert len({v for node in KAFKA_NODES for v in services[node]["volumes"]}) == 3  # a disk each
    # a service that waits for Kafka waits for the three
    waiting = [n for n, s in services.items() if set(KAFKA_NODES) & set(s.get("depends_on", {}))]
    assert {"kafka-init", "consumer", "producer-ecommerce"} <= set(waiting)
    for name in waiting:
        assert set(KAFKA_NODES) <= set(services[name]["depends_on"]), name


def test_topic_configs_the_setup_applies(services):
    """What `salespulse topics` (kafka-init) creates with compose's environment:
    3 replicas and min.insync.replicas=2 (one broker may be lost and acks=all
    writes still go on); with the local defaults (one tansu broker): 1 and 1."""
    from salespulse.contracts import all_topic_partitions
    from salespulse.kafka import RETENTION_MS, producer_config, topic_specs

    def rendered(env: dict) -> dict:
        settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()
                                               if k.lower() in Settings.model_fields})
        return {s.topic: (s.num_partitions, s.replication_factor, s.config) for s in topic_specs(settings=settings)}

    init_env = services["kafka-init"]["environment"]
    for env, (replicas, in_sync) in ((init_env, (3, 2)), ({}, (1, 1))):
        specs = rendered(env)
        assert set(specs) == set(all_topic_partitions())
        for topic, (parts, factor, config) in specs.items():
            assert (parts, factor) == (all_topic_partitions()[topic], replicas), topic
            assert config == {"retention.ms": str(RETENTION_MS), "min.insync.replicas": str(in_sync)}, topic
    assert len(KAFKA_NODES) >= 3 and 2 <= 3 - 1  # one broker lost: 2 replicas left, still min.insync
    # every service that reaches Kafka renders the same (producers and the consumer create missing topics too)
    for name, service in services.items():
        env = service.get("environment", {})
        if "KAFKA_BOOTSTRAP_SERVERS" in env:
            assert rendered(env) == rendered(init_env), name
    with pytest.raises(ValueError, match="exceeds"):
        topic_specs(settings=Settings(topic_replication_factor=1, topic_min_insync_replicas=2))
    # the producers wait for every in-sync replica, without duplicates from their retries
    config = producer_config("kafka-1:9092")
    assert config["acks"] == "all" and config["enable.idempotence"] is True


#: Who connects to whom (client -> servers). A network joins a server with its
#: clients; nothing else may share a network with an internet-facing service.
NEEDS = {
    **{node: set(KAFKA_NODES) - {node} for node in KAFKA_NODES},  # replication and the KRaft quorum
    "kafka-init": set(KAFKA_NODES),
    "migrate": {"postgres"},
    "ops": {"postgres", *KAFKA_NODES},
    "producer-ecommerce": set(KAFKA_NODES),
    "producer-restaurant": set(KAFKA_NODES),
    "consumer": {"postgres", *KAFKA_NODES},
    "spark-master": set(),
    "spark-worker": {"spark-master", "spark-connect", "postgres"},  # executors <-> driver; JDBC
    "spark-connect": {"spark-master", "spark-worker", "postgres"},
    "dagster-code": {"postgres", "spark-connect", *KAFKA_NODES},
    "dagster-webserver": {"postgres", "dagster-code"},
    "dagster-daemon": {"postgres", "dagster-code"},
    "dagster-ui": {"dagster-webserver"},
    "dashboard": {"postgres", "redis"},
    "postgres": set(),
    "redis": set(),
}
#: Reachable from the internet (published) or one proxy hop behind it: these share
#: a network with exactly what they need (or what needs them), nothing more.
EXPOSED = ("dashboard", "dagster-ui", "dagster-webserver")


def neighbours(compose: dict) -> dict[str, set[str]]:
    """Service -> the services it shares at least one network with."""
    members: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        for net in service.get("networks", []):
            members.setdefault(net, set()).add(name)
    return {name: set().union(*(members[n] for n in s.get("networks", []))) - {name}
            for name, s in compose["services"].items()}


def test_networks_follow_need_to_reach(compose):
    services = compose["services"]
    assert set(NEEDS) == set(services), "a service was added or removed: declare what it needs to reach"
    reach = neighbours(compose)
    for client, servers in NEEDS.items():
        for server in servers:
            assert server in reach[client], f"{client} needs {server} but shares no network with it"
    for name in EXPOSED:
        wanted = NEEDS[name] | {other for other, servers in NEEDS.items() if name in servers}
        assert reach[name] == wanted, f"{name} shares a network with {sorted(reach[name] - wanted)}"
    assert reach["dashboard"] == {"postgres", "redis"}
    for name in ("dashboard", "dagster-ui"):
        assert not reach[name] & {*KAFKA_NODES, "spark-master", "spark-worker", "spark-connect", "dagster-code"}
    # Redis holds the limiter's counters: the dashboard is its only client
    assert reach["redis"] == {"dashboard"}
    # only the published services' own networks route out, one service each
    for net, spec in compose["networks"].items():
        users = {n for n, s in services.items() if net in s.get("networks", [])}
        if not (spec or {}).get("internal"):
            assert len(users) == 1 and users <= set(UI_PORTS.values()), f"{net}: {users}"


def test_the_matrix_check_catches_a_shared_network(compose):
    broken = json.loads(json.dumps(compose))
    broken["services"]["dashboard"]["networks"].append("kafka")
    assert {"kafka-1", "consumer"} <= neighbours(broken)["dashboard"]


def test_published_ports_bind_to_loopback_unless_an_address_is_set(raw, env_example):
    def bindings(env):
        out = {}
        for name, service in interpolate(raw, env)["services"].items():
            for port in service.get("ports", []):
                host_ip, host_port, container = str(port).split(":")
                out[name] = (host_ip, int(host_port), int(container))
        return out

    unset = {k: v for k, v in env_example.items() if k != "BIND_ADDRESS"}
    assert bindings(unset) == {"dashboard": ("127.0.0.1", 5000, 5000), "dagster-ui": ("127.0.0.1", 3000, 8080)}
    assert env_example.get("BIND_ADDRESS", "127.0.0.1") == "127.0.0.1"
    opened = bindings({**unset, "BIND_ADDRESS": "192.0.2.10"})
    assert {ip for ip, _, _ in opened.values()} == {"192.0.2.10"}


def test_dashboard_trusts_forwarded_headers_from_named_addresses_only(raw, env_example):
    def allowed(env):
        argv = command_of(interpolate(raw, env)["services"]["dashboard"])
        return argv[argv.index("--forwarded-allow-ips") + 1]

    assert allowed({k: v for k, v in env_example.items() if k != "DASHBOARD_FORWARDED_ALLOW_IPS"}) == "127.0.0.1"
    assert allowed({**env_example, "DASHBOARD_FORWARDED_ALLOW_IPS": "10.0.0.5"}) == "10.0.0.5"
    assert "*" not in COMPOSE_FILE.read_text().split("--forwarded-allow-ips")[1].split("]")[0]


# ---------------------------------------------------------------- Dockerfile
def dockerignore_patterns() -> list[str]:
    return [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines()
            if l.strip() and not l.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        hit = any(fnmatch("/".join(parts[:i]), pattern) or fnmatch("/".join(parts[:i]), pattern.replace("**/", ""))
                  for i in range(1, len(parts) + 1))
        if hit:
            result = not negate
    return result


def test_dockerfile_sources_exist_and_are_in_the_build_context():
    patterns = dockerignore_patterns()
    for required in (".git", ".venv", "tests", "artifacts", "salespulse/stack"):
        assert ignored(required, patterns), f".dockerignore must exclude {required}"
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    copies = [l.split()[1:] for l in text.splitlines() if l.strip().upper().startswith("COPY ")]
    assert copies
    checked = 0
    for args in copies:
        if any(a.startswith("--from=") for a in args):
            continue
        sources = [a for a in args if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file"
            assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
            checked += 1
    assert checked >= 8
    assert "tests" not in {a for args in copies for a in args}


def test_dockerfile_is_multi_stage_with_a_slim_final_image():
    stages = dockerfile_stages()
    assert list(stages)[:3] == ["builder", "app", "spark"]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm", stages["builder"])
    assert stages["app"] == stages["builder"]  # the final image starts from slim, not from the builder
    text = DOCKERFILE.read_text()
    app_stage = text.split(" AS app")[1].split(" AS spark")[0]
    assert "openjdk" not in app_stage  # Java only in the spark image
    assert "pip wheel" in text and "--no-index --find-links /wheels" in text
    assert "USER salespulse" in app_stage
    # Spark's jars are moved out of the venv in the builder and copied into the spark image only
    assert "pyspark/jars /opt/spark-jars" in text
    spark_stage = text.split(" AS spark")[1]
    assert "COPY --from=builder /opt/spark-jars $SPARK_HOME/jars" in spark_stage
    assert "spark-jars" not in app_stage
    assert (pyspark_home() / "jars" / "spark-connect_2.13-4.3.0.jar").is_file()


# ---------------------------------------------------------------- Dagster + PostgreSQL, for real
def test_dagster_instance_matches_the_local_stack_but_for_storage():
    from salespulse.stack.dagster_home import dagster_config

    docker = yaml.safe_load((REPO / "docker" / "dagster" / "dagster.yaml").read_text())
    local = dagster_config(Settings())
    for key, value in local.items():
        if key != "storage":
            assert docker.get(key) == value, f"dagster.yaml {key} differs from the local stack's"
    db = docker["storage"]["postgres"]["postgres_db"]
    assert db["scheme"] == local["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert {v["env"] for k, v in db.items() if isinstance(v, dict)} == DAGSTER_STORAGE_ENV


def test_postgres_init_script_and_dagster_instance_work_on_a_real_server(postgres, tmp_path, monkeypatch):
    from salespulse.ops.pg import pg_tool

    suffix = uuid.uuid4().hex[:8]
    user, db, password = f"dagster_{suffix}", f"dagster_{suffix}", f"pw-{suffix}"
    admin = urlsplit(postgres.admin_url)
    env = dict(os.environ, PGPASSWORD=admin.password, DAGSTER_PG_USERNAME=user, DAGSTER_PG_PASSWORD=password,
               DAGSTER_PG_DB=db)
    psql = [pg_tool("psql"), "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-h", admin.hostname, "-p", str(admin.port),
            "-U", admin.username, "-d", admin.path.lstrip("/"),
            "-f", str(REPO / "docker" / "postgres" / "initdb" / "10-dagster.sql")]
    result = subprocess.run(psql, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    # without a password the script refuses (the image then fails its first start loudly)
    no_password = {k: v for k, v in env.items() if k != "DAGSTER_PG_PASSWORD"}
    no_password["DAGSTER_PG_USERNAME"] = f"x_{suffix}"
    failed = subprocess.run(psql, env=no_password, capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "DAGSTER_PG_PASSWORD is not set" in failed.stderr

    # the instance config of the compose stack, pointed at this server
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = (REPO / "docker" / "dagster" / "dagster.yaml").read_text().replace("/opt/dagster/storage",
                                                                                   str(tmp_path / "storage"))
    (home / "dagster.yaml").write_text(config)
    for key, value in {"DAGSTER_PG_HOST": admin.hostname, "DAGSTER_PG_PORT": str(admin.port),
                       "DAGSTER_PG_DB": db, "DAGSTER_PG_USERNAME": user, "DAGSTER_PG_PASSWORD": password,
                       "DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(key, value)
    from dagster import DagsterInstance
    from dagster_postgres import PostgresRunStorage

    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert list(instance.get_runs()) == []
        assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
    conn = psycopg2.connect(host=admin.hostname, port=admin.port, user=user, password=password, dbname=db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = %s", (user,))
            assert cur.fetchone()[0] >= 5  # runs, event_logs, ... created by the dagster role
    finally:
        conn.close()

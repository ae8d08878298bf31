"""The compose Spark cluster, run for real: the ``spark`` image's services.

Every service of docker-compose.yml built from the Dockerfile's ``spark``
target (spark-master, spark-worker, spark-connect) is started with its real
command and waits on its real health check, in dependency order, in the image's
environment: the app image's runtime-only venv (whose pyspark carries the Spark
jars, as the spark image's SPARK_HOME does), the spark stage's ENV lines,
SPARK_CONF_DIR holding docker/spark/*. Then the report code runs one refresh
from the app image's environment with the dagster-code service's own settings
(SPARK_REMOTE=sc://spark-connect:15002, its database role), and the reports
equal SQL over the raw tables.

Beyond the shared translation (tests/support/compose_local.py), only what makes a
container's network this machine's loopback: SPARK_LOCAL_IP=127.0.0.1 and, in
the local copy of spark-defaults.conf, 127.0.0.1 instead of 0.0.0.0 (a
container listens on its own interfaces; here nothing should listen beyond
this machine).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest
import yaml

from orchestration.reports.sql_reference import sql_revenue
from tests.support.compose_local import (
    REPO, Stack, Translator, build_runtime_venv, built_from, compose_env, dependency_order, image_env,
    listening_ports,
)
from tests.conftest import free_port
from tests.test_compose import COMPOSE_FILE, interpolate
from tests.test_spark_cluster import jvms_under, wait_jvms_gone_under
from tests.test_reports import (
    END, OVERVIEW_COLS, T0, Seeder, assert_same_rows, expected_ecommerce_overview, report, seed_ecommerce,
    seed_restaurant,
)

pytestmark = pytest.mark.slow(reason="compose Spark cluster: spark-master, spark-worker and spark-connect JVMs from the spark image's services")

#: One refresh of both domains, as the refresh job's op does it, in the dagster-code environment.
REFRESH = """
import json, sys
from datetime import datetime
from orchestration.reports import refresh_ecommerce_reports, refresh_restaurant_reports, spark_session
from urllib.parse import urlsplit
from salespulse.settings import ROLE_ANALYTICS, get_settings
start, end = (datetime.fromisoformat(a) for a in sys.argv[1:3])
settings = get_settings()
spark = spark_session()
rows = {**refresh_ecommerce_reports(spark, settings, start, end).rows,
        **refresh_restaurant_reports(spark, settings, start, end).rows}
print(json.dumps({"master": spark.conf.get("spark.master"), "user": urlsplit(settings.role_url(ROLE_ANALYTICS)).username,
                  "rows": rows}))
"""


def spark_conf_dir(conf: Path, translate: Translator) -> None:
    """docker/spark/* as the image has them in SPARK_CONF_DIR, mapped here."""
    conf.mkdir(parents=True)
    for source in (REPO / "docker" / "spark").iterdir():
        (conf / source.name).write_text(translate(source.read_text()).replace("0.0.0.0", "127.0.0.1"))
    with open(conf / "spark-defaults.conf", "a") as defaults:
        defaults.write("\n# this machine only (a container listens on its own interfaces)\n"
                       "spark.connect.grpc.binding.address 127.0.0.1\n")


@pytest.fixture(scope="module")
def spark_cluster(postgres, tmp_path_factory):
    venv = build_runtime_venv()
    state = tmp_path_factory.mktemp("compose-spark")
    db = "compose_spark"
    postgres.create_database(db)
    text = COMPOSE_FILE.read_text()
    services = interpolate(yaml.safe_load(text), compose_env(postgres.admin_url, db))["services"]
    spark = [n for n in dependency_order(services) if built_from(services[n], "spark")]
    assert spark, "no service built from the spark target"

    # each spark service's ports: its health check's, and every spark-master:7077 the file names
    ports = {("postgres", 5432): int(postgres.admin_url.rsplit(":", 1)[1].split("/")[0])}
    for name in spark:
        for port in listening_ports(services[name]) + [int(p) for p in re.findall(rf"\b{name}:(\d+)", text)]:
            ports.setdefault((name, port), free_port())
    paths = {f"/opt/spark/{d}": str(state / d) for d in ("conf", "work", "scratch")}
    paths.update({"/opt/dagster": str(state / "dagster"), "/var/lib/salespulse": str(state / "salespulse")})
    translate = Translator(ports, paths, hosts=set(spark))
    spark_conf_dir(state / "conf", translate)
    spark_env = {k: translate(v) for k, v in image_env(venv, state, "spark").items()}
    spark_env["SPARK_LOCAL_IP"] = "127.0.0.1"
    cluster = Stack(services, translate, spark_env, str(state))
    app = Stack(services, translate, {k: translate(v) for k, v in image_env(venv, state).items()}, str(REPO))
    cluster.app, cluster.work_dir, cluster.url = app, state / "work", postgres.admin_url.rsplit("/", 1)[0] + "/" + db
    migrated = app.run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    try:
        for name in spark:
            cluster.start(name)
            cluster.wait_healthy(name)
        yield cluster
    finally:
        cluster.stop()
    # master, worker, the executors it launched and the driver: every JVM gone
    wait_jvms_gone_under(state, 30)


def test_spark_services_pass_their_compose_healthcheck(spark_cluster):
    assert set(spark_cluster.procs) == {"spark-master", "spark-worker", "spark-connect"}
    for name, proc in spark_cluster.procs.items():
        assert proc.poll() is None, f"{name} exited:\n{spark_cluster.log_tail(name)}"
    assert len(jvms_under(spark_cluster.work_dir.parent)) >= 3  # master, worker, driver (checked gone at the end)
    log = {name: (spark_cluster.logs / f"{name}.log").read_text(errors="replace") for name in spark_cluster.procs}
    master_port = spark_cluster.translate.ports[("spark-master", 7077)]
    assert "Registering worker 127.0.0.1" in log["spark-master"]
    assert f"Successfully registered with master spark://127.0.0.1:{master_port}" in log["spark-worker"]


def test_report_refresh_runs_on_the_compose_cluster(spark_cluster):
    url = spark_cluster.url
    seeder = Seeder(url)
    seed_ecommerce(seeder)
    seed_restaurant(seeder)
    seeder.conn.close()

    out = spark_cluster.app.run("dagster-code", ["python", "-c", REFRESH, T0.isoformat(), END.isoformat()],
                                timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    done = json.loads(out.stdout.strip().splitlines()[-1])
    master_port = spark_cluster.translate.ports[("spark-master", 7077)]
    assert done["master"] == f"spark://127.0.0.1:{master_port}"  # the connect server's master, not local[*]
    assert done["user"] == "salespulse_analytics"  # dagster-code's own role, not the admin
    assert done["rows"]["report_ecommerce_overview_minute"] == 3
    assert done["rows"]["report_restaurant_overview_minute"] == 3

    assert_same_rows(report(url, "report_ecommerce_overview_minute", OVERVIEW_COLS, "window_start"),
                     expected_ecommerce_overview(url))
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for domain in ("ecommerce", "restaurant"):
            cur.execute(f"SELECT window_start, revenue FROM report_{domain}_overview_minute ORDER BY 1")
            windows = cur.fetchall()
            assert [w for w, _ in windows] == [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=4)]
            assert sum(r for _, r in windows) == sql_revenue(conn, domain, T0, END), domain
    conn.close()
    # the work ran in executors the worker launched (its SPARK_WORKER_DIR)
    assert list(spark_cluster.work_dir.glob("app-*/*/stderr")), "no executor ran on the worker"

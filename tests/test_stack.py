"""The local stack's plan, supervisord configuration and process wrappers (fast tests).

The whole stack with real processes (start, restart, ordered stop) is
exercised by tests/test_stack_supervision.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

from salespulse.contracts import all_topic_partitions
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def test_embedded_services_are_reached_on_the_stack_ports():
    from salespulse.settings import Settings
    from salespulse.stack.runner import embedded_urls, plan

    settings = Settings(embedded_pg_port=41001, embedded_broker_port=41002, spark_connect_port=41003)
    assert embedded_urls(settings, environ={}) == {
        "DATABASE_URL": "postgresql://salespulse:salespulse@127.0.0.1:41001/salespulse",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:41002",
        "SPARK_REMOTE": "sc://127.0.0.1:41003",
    }
    # a URL in the environment means: use that service, start no embedded one
    given = {"DATABASE_URL": "postgresql://u:p@db.example:5432/x", "SPARK_REMOTE": "sc://spark.example:15002"}
    assert embedded_urls(settings, environ=given) == {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:41002"}
    names = [s.name for s in plan(settings, environ=given)]
    assert "postgres" not in names and "spark" not in names and "broker" in names


def test_stack_processes_know_what_the_supervisor_started(monkeypatch):
    from salespulse.settings import Settings
    from salespulse.stack.runner import child_environment, embedded_flags, plan

    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "SPARK_REMOTE", "SALESPULSE_STACK_EMBEDDED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPARK_REMOTE", "sc://spark.example:15002")
    env = child_environment(Settings())
    assert env["DATABASE_URL"].endswith("@127.0.0.1:55432/salespulse") and "KAFKA_BOOTSTRAP_SERVERS" in env
    # inside the stack (the set-up process prints the summary) the URLs are set,
    # yet postgres and the broker are still the stack's own
    assert embedded_flags(env) == {"postgres": True, "broker": True, "spark": False}
    assert [s.name for s in plan(Settings(), environ=env)][:2] == ["broker", "postgres"]


def test_stop_order_is_the_reverse_of_the_priorities_and_bounded():
    from salespulse.settings import Settings
    from salespulse.stack.runner import plan, worst_case_stop_seconds

    services = plan(Settings(), environ={})
    by_priority = [s.name for s in sorted(services, key=lambda s: s.priority, reverse=True)]
    assert by_priority == ["producer-ecommerce", "producer-restaurant", "consumer", "dagster-webserver",
                           "dagster-daemon", "dashboard", "setup", "spark", "postgres", "broker"]
    assert {s.group for s in services if s.group} == {"producers", "dagster"}
    assert worst_case_stop_seconds(services) <= 60
    consumer = next(s for s in services if s.name == "consumer")
    assert consumer.env["CONSUMER_DRAIN_ON_STOP_S"] == "15" and consumer.stop_wait > 15
    # an explicit drain is kept, and the stop wait follows it
    consumer = next(s for s in plan(Settings(consumer_drain_on_stop_s=5), environ={"CONSUMER_DRAIN_ON_STOP_S": "5"})
                    if s.name == "consumer")
    assert consumer.env["CONSUMER_DRAIN_ON_STOP_S"] == "5" and consumer.stop_wait == 8


def test_supervisord_config_has_restart_policy_groups_and_escaped_values(tmp_path):
    from salespulse.stack.runner import Service
    from salespulse.stack.supervise import render_config

    services = [Service("a", ["/bin/echo", "100% sure", "x y"], 10, env={"K": "v%1"}),
                Service("b1", ["/bin/true"], 20, group="bees", stop_wait=7),
                Service("b2", ["/bin/true"], 20, group="bees", stop_wait=7)]
    conf = render_config(services, tmp_path, tmp_path)
    section_a = conf.split("[program:a]")[1].split("[program:")[0]
    assert "command=/bin/echo '100%% sure' 'x y'" in section_a
    assert 'environment=K="v%%1"' in section_a
    for line in ("autorestart=true", "stopasgroup=true", "killasgroup=true", "priority=10",
                 "stdout_logfile=/dev/stdout"):
        assert line in section_a
    assert "[group:bees]\nprograms=b1,b2\npriority=20" in conf
    assert "stopwaitsecs=7" in conf.split("[program:b1]")[1]


def test_stack_exec_prefixes_every_line_with_the_process_name():
    run = subprocess.run([sys.executable, "-m", "salespulse.cli", "stack", "exec", "demo", "--",
                          "sh", "-c", "echo one; echo two >&2"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = sorted(run.stdout.splitlines())
    assert [l.split("|", 1)[0].strip() for l in lines] == ["demo", "demo"]
    assert sorted(l.split("| ", 1)[1] for l in lines) == ["one", "two"]


def test_a_launched_process_is_stopped_when_its_supervisor_is_killed(tmp_path):
    """kill -9 of supervisord (here: a stand-in parent) leaves no orphan behind."""
    pid_file = tmp_path / "child.pid"
    parent_code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-m', 'salespulse.stack.launch', "
                   "'', '--', 'sh', '-c', 'echo $$ > %s; trap \"echo term > %s.sig; exit 0\" TERM; "
                   "while :; do sleep 0.1; done']); time.sleep(600)" % (pid_file, pid_file))
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, "the launched process never started"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        parent.kill()
        parent.wait()
        while _alive(child):
            assert time.monotonic() < deadline + 30, "the launched process outlived its supervisor"
            time.sleep(0.1)
        assert (tmp_path / "child.pid.sig").read_text().strip() == "term"  # stopped through its SIGTERM path
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie waiting for its (new) parent to reap it counts as gone
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return bool(stat) and stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_cli_works_without_supervisor_or_honcho():
    """The production image ships neither: every other command must still run."""
    code = ("import sys; sys.modules['supervisor'] = None; sys.modules['honcho'] = None; "
            "from salespulse.cli import main; sys.exit(main(['contracts']))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "ecommerce.events" in json.loads(run.stdout)


def test_the_embedded_broker_opens_its_port_only_with_its_topics():
    """Clients bootstrap through the public port; the broker they then use already has every topic."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "salespulse.stack.broker", str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "ready on" in line:
                break
        assert any("broker topics:" in l for l in lines), lines  # created before the port opened
        metadata = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
        assert {t: len(metadata.topics[t].partitions) for t in all_topic_partitions()} == all_topic_partitions()
        assert [b.port for b in metadata.brokers.values()] != [port]  # the private, advertised port
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    assert rc == 0

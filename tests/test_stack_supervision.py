"""The local stack under supervisord, with real processes (tests run in file order, on one
stack; tests 2-4 start it themselves if no earlier test left it running).

1. a client that produces before the stack exists: the topics still get their
   partition counts and none of its messages is lost;
2. every part reports healthy in ``salespulse status``; "what runs where" is printed;
   no process's arguments hold a password (``ps`` shows them to every local user);
3. a SIGKILLed consumer is restarted, and status says so while it is;
4. SIGTERM stops the processes group by group in the documented order, none
   left behind; then the same stack is started and stopped twice more.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
import uuid

import pytest
from confluent_kafka import Producer

from salespulse.contracts import all_topic_partitions
from salespulse.stack.supervise import describe_process
from tests.support.stack import LocalStack, count_rows, marked_processes
from tests.support.consumer import ecommerce_event, restaurant_order

pytestmark = pytest.mark.slow(reason='whole stack: three `salespulse stack up` cycles of every process, a SIGKILL, ordered SIGTERM stops')

#: supervisord's stop order (rank per process; equal ranks stop together)
STOP_RANK = {"producer-ecommerce": 0, "producer-restaurant": 0, "consumer": 1, "dagster-webserver": 2,
             "dagster-daemon": 2, "dashboard": 3, "setup": 4, "spark": 5, "postgres": 6, "broker": 7}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = LocalStack(tmp_path_factory.mktemp("stack") / "stack.log")
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.stop()
    s.kill_leftovers()
    s.remove_state()


def _started(stack: LocalStack) -> LocalStack:
    """The module's stack, started (and its set-up done) if no earlier test left it running:
    each test stands alone (``-k``, a failed earlier test)."""
    if stack.proc is None or stack.proc.poll() is not None:
        started = time.time()
        stack.start()
        stack.wait_for(lambda: stack.ready_marker.exists() and stack.ready_marker.stat().st_mtime >= started, 240,
                       "the stack's set-up done")
    return stack


def _all_running(stack: LocalStack) -> bool:
    states = stack.states()
    return set(states) == set(STOP_RANK) and all(state == "RUNNING" for state, _ in states.values())


def _assert_stops_in_order(stack: LocalStack) -> None:
    rc, leftovers = stack.stop()
    assert rc in (0, 143, -15), stack.tail()
    assert leftovers == [], f"processes left after SIGTERM: {leftovers}"
    sequence = stack.stop_sequence()
    assert sorted(sequence) == sorted(STOP_RANK), sequence
    ranks = [STOP_RANK[name] for name in sequence]
    assert ranks == sorted(ranks), f"stop order {sequence}"


def test_a_client_producing_before_the_stack_starts_loses_nothing(stack):
    assert stack.proc is None, "the first test of the module: the stack must not exist yet"
    run = uuid.uuid4().hex[:8]
    events = [ecommerce_event(i, event_type="search", run=run) for i in range(40)]
    orders = [restaurant_order(i) for i in range(10)]
    delivered, failed = [], []

    def report(err, msg):
        (failed if err else delivered).append(err or msg.offset())

    # what a user's script does: produce at once, librdkafka retrying the connection
    producer = Producer({"bootstrap.servers": stack.bootstrap, "enable.idempotence": True,
                         "message.timeout.ms": 240_000, "reconnect.backoff.max.ms": 1000})
    for ev in events:
        producer.produce("ecommerce.events", json.dumps(ev).encode(), key=ev["user_id"].encode(), on_delivery=report)
    for order in orders:
        producer.produce("restaurant.orders", json.dumps(order).encode(), key=order["order_id"].encode(),
                         on_delivery=report)
    stop_polling = threading.Event()
    poller = threading.Thread(target=lambda: [producer.poll(0.2) for _ in iter(stop_polling.is_set, True)])
    poller.start()
    try:
        stack.start()
        stack.wait_for(lambda: len(delivered) + len(failed) == 50, 240, "the early messages delivered")
    finally:
        stop_polling.set()
        poller.join()
    assert failed == []

    from salespulse.kafka import admin_client, existing_topics

    present = existing_topics(admin_client(stack.bootstrap))
    assert {t: present.get(t) for t in all_topic_partitions()} == all_topic_partitions()
    ids = [ev["event_id"] for ev in events]
    order_ids = [o["order_id"] for o in orders]
    stack.wait_for(lambda: count_rows(stack.admin_url, "SELECT count(*) FROM events WHERE event_id::text = ANY(%s)",
                                      (ids,)) == 40, 240, "the early events in PostgreSQL")
    stack.wait_for(lambda: count_rows(stack.admin_url, "SELECT count(*) FROM orders WHERE order_id::text = ANY(%s)",
                                      (order_ids,)) == 10, 60, "the early orders in PostgreSQL")


def test_every_part_is_healthy_and_the_summary_printed(stack):
    _started(stack)
    stack.wait_for(lambda: stack.status().returncode == 0, 240, "every part healthy in `salespulse status`",
                   interval=2)
    assert _all_running(stack)
    assert "what runs where" in stack.tail(10**7)


def test_no_secret_is_in_the_stack_processes_arguments(stack):
    """Every process of the local stack (embedded PostgreSQL, broker, Spark, Dagster,
    dashboard, consumer, producers): its arguments hold neither a role's password
    nor a URL with the admin password (`ps` shows arguments to every local user)."""
    from salespulse.settings import LOCAL_ADMIN_PASSWORD, LOCAL_ADMIN_USER, LOCAL_ROLE_PASSWORDS
    from tests.support.cmdline import arguments_holding, process_count

    _started(stack)
    stack.wait_for(lambda: _all_running(stack), 240, "every process running")
    pids = marked_processes(stack.marker)
    assert process_count(pids) >= len(STOP_RANK)
    secrets = [*LOCAL_ROLE_PASSWORDS.values(), f"{LOCAL_ADMIN_USER}:{LOCAL_ADMIN_PASSWORD}@"]
    assert arguments_holding(secrets, pids) == {}


def _pipeline_status(stack) -> dict:
    """The local stack's dashboard (no token on 127.0.0.1) answering /api/pipeline/status."""
    url = f"http://127.0.0.1:{stack.ports['DASHBOARD_PORT']}/api/pipeline/status"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def test_a_killed_consumer_is_restarted_and_status_shows_it(stack):
    _started(stack)
    rpc = stack.rpc()
    old_pid = rpc.supervisor.getProcessInfo("consumer")["pid"]
    stored_before = count_rows(stack.admin_url, "SELECT count(*) FROM events")
    os.kill(old_pid, signal.SIGKILL)
    seen = []

    def restarted():
        # one snapshot for state and pid: two calls could straddle the respawn
        info = rpc.supervisor.getProcessInfo("consumer")
        described = describe_process(info)
        seen.append((described.state, described.detail))
        return described.state == "RUNNING" and info["pid"] != old_pid

    stack.wait_for(restarted, 120, "the consumer running again", interval=0.1)
    restarting = [detail for state, detail in seen if state != "RUNNING"]
    assert any("restarting" in detail for detail in restarting), seen
    assert "exited: consumer (terminated by SIGKILL; not expected)" in stack.supervisor_log.read_text()
    # the new consumer works: the producers' events keep arriving
    stack.wait_for(lambda: count_rows(stack.admin_url, "SELECT count(*) FROM events") > stored_before, 120,
                   "events stored by the restarted consumer")

    # a process that is not running makes `salespulse status` fail and name it
    rpc.supervisor.stopProcess("producers:producer-restaurant")
    try:
        status = stack.status()
        pipeline = _pipeline_status(stack)
    finally:
        rpc.supervisor.startProcess("producers:producer-restaurant")
    # ... and so does the dashboard's pipeline page (its API; the page turns each into a notice line)
    processes = {p["name"]: p for p in pipeline["processes"]}
    assert processes["producer-restaurant"]["running"] is False and processes["producer-restaurant"]["state"] == "STOPPED"
    assert processes["consumer"]["running"] is True
    assert status.returncode == 1, status.stdout + status.stderr
    line = next(l for l in status.stdout.splitlines() if "process producer-restaurant" in l)
    assert line.startswith("DOWN") and "stopped" in line
    assert any(l.startswith("UP") and "process consumer" in l for l in status.stdout.splitlines()), status.stdout
    assert stack.proc.poll() is None  # the stack itself stayed up throughout


def test_sigterm_stops_in_order_and_the_stack_starts_again(stack):
    _started(stack)
    _assert_stops_in_order(stack)
    for _ in range(2):
        started = time.time()
        stack.start()
        # this run's set-up is done (its ready marker is new), every process is up
        stack.wait_for(lambda: stack.ready_marker.exists() and stack.ready_marker.stat().st_mtime >= started, 180,
                       "set-up done after a restart")
        stack.wait_for(lambda: _all_running(stack), 60, "every process RUNNING after a restart")
        before = count_rows(stack.admin_url, "SELECT count(*) FROM events")
        stack.wait_for(lambda: count_rows(stack.admin_url, "SELECT count(*) FROM events") > before, 120,
                       "new events after a restart")
        _assert_stops_in_order(stack)

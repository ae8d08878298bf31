"""Rotation of the embedded broker (salespulse/broker_rotation.py): restarted empty
once it holds a set number of messages, with producers paused and the consumer
drained first; nothing lost. Real tansu, real producer and consumer processes,
real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from confluent_kafka import Producer

from salespulse.broker_rotation import ProducerPause, RotationFiles, RotationState, Rotator, held_messages
from salespulse.contracts import ECOMMERCE_TOPIC, TOPICS
from salespulse.kafka import producer_config
from salespulse.lag import group_lag
from salespulse.stack.broker import BrokerProcess
from tests.conftest import free_port
from tests.support.consumer import (
    REPO,
    kill_process,
    query,
    start_consumer_process,
    unique_group,
    wait_until,
)

DATA_TOPICS = {t.name: t.partitions for t in TOPICS.values()}


def _rotator(tmp_path, broker: BrokerProcess, group: str, threshold: int, timeout_s: float = 20.0) -> Rotator:
    bootstrap = f"127.0.0.1:{broker.port}"
    return Rotator(RotationFiles(tmp_path), threshold,
                   observe=lambda: group_lag(bootstrap, group, DATA_TOPICS, timeout=5.0),
                   restart=broker.restart, timeout_s=timeout_s)


def _start_producer(tmp_path, bootstrap: str, count: int, rate: float) -> subprocess.Popen:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "SALESPULSE_STATE_DIR": str(tmp_path),
           "METRICS_PORT": "0"}
    log = open(tmp_path / "producer.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "services.producer", "--domain", "ecommerce", "--rate", str(rate),
                             "--count", str(count), "--seed", "7"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_rotations_under_load_lose_nothing_and_empty_the_broker(settings, database_url, tmp_path):
    broker = BrokerProcess(free_port())
    broker.ensure_topics()
    bootstrap = f"127.0.0.1:{broker.port}"
    group = unique_group("rotate")
    count = 3_000
    consumer = start_consumer_process({"DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                                       "CONSUMER_GROUP": group}, tmp_path / "consumer.log")
    producer = _start_producer(tmp_path, bootstrap, count, rate=400)
    rotator = _rotator(tmp_path, broker, group, threshold=800)
    held_after = []
    try:
        while producer.poll() is None:
            if rotator.check():
                held_after.append(held_messages(rotator.observe()))
            time.sleep(0.5)
        assert producer.returncode == 0
        wait_until(lambda: query(database_url, "SELECT count(*) FROM events")[0][0] >= count, 120, 0.5,
                   "every produced event stored")
    finally:
        kill_process(producer)
        kill_process(consumer, 15)
        broker.stop()
    assert rotator.state.rotations >= 2, rotator.state
    # what a rotation leaves: an empty broker (the producers' first messages at most)
    assert min(held_after) < 800
    assert rotator.state.last_pause_s is not None
    assert set(rotator.state.last_phases_s) == {"producers", "drain", "restart"}
    # every event once: none lost in a rotation, none stored twice
    assert query(database_url, "SELECT count(*), count(DISTINCT event_id) FROM events")[0] == (count, count)
    saved = RotationFiles(tmp_path).load_state()
    assert saved.rotations == rotator.state.rotations and not RotationFiles(tmp_path).pause_file.exists()
    producer_log = (tmp_path / "producer.log").read_text()
    assert "paused for a broker rotation" in producer_log


def test_an_unregistered_producer_that_keeps_sending_makes_the_rotation_give_up(tmp_path):
    """The broker is restarted only once nothing moves: messages from a producer
    that never paused are never dropped by a rotation."""
    broker = BrokerProcess(free_port())
    broker.ensure_topics()
    bootstrap = f"127.0.0.1:{broker.port}"
    group = unique_group("norotate")
    stop = threading.Event()

    def keep_sending():  # knows nothing of the pause folder
        producer = Producer(producer_config(bootstrap))
        while not stop.is_set():
            producer.produce(ECOMMERCE_TOPIC.name, key=b"k", value=b"{}")
            producer.poll(0.01)
        producer.flush(10)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        rotator = _rotator(tmp_path, broker, group, threshold=1, timeout_s=3.0)
        wait_until(lambda: held_messages(rotator.observe()) > 0, 30, 0.2, "messages held")
        held_before = held_messages(rotator.observe())
        assert rotator.check() is False
        assert rotator.state.aborted == 1 and "behind" in rotator.state.last_abort_reason
        assert held_messages(rotator.observe()) >= held_before  # nothing dropped
    finally:
        stop.set()
        sender.join(30)
        broker.stop()
    assert not RotationFiles(tmp_path).pause_file.exists()


class _FakePublisher:
    """Only for the pause protocol's unit test below: records flush/rebuild calls."""

    def __init__(self, undelivered: int = 0):
        self.undelivered, self.rebuilds, self.polls = undelivered, 0, 0

    def flush(self, timeout):
        return self.undelivered

    def poll(self, timeout):
        self.polls += 1
        time.sleep(timeout)

    def rebuild(self):
        self.rebuilds += 1


def test_a_pause_left_by_a_killed_coordinator_expires(tmp_path):
    files = RotationFiles(tmp_path)
    pause = ProducerPause(tmp_path)
    files.request_pause("r1", deadline=time.time() + 0.5)
    publisher = _FakePublisher()
    started = time.monotonic()
    assert pause.hold(publisher, threading.Event()) is True
    assert time.monotonic() - started < 30  # it went on (a guard against hanging, not a timing figure)
    assert files.live_producers() == {os.getpid(): "r1"}  # it acknowledged
    assert publisher.rebuilds == 0  # no rotation was recorded: the old client stays
    # a coordinator that starts again lifts the stale request
    files.request_pause("r2", deadline=time.time() + 60)
    Rotator(files, 10, observe=list, restart=lambda: None)
    assert files.pause_requested() is None
    pause.close()
    assert files.live_producers() == {}


def test_a_producer_that_cannot_deliver_does_not_acknowledge(tmp_path):
    files = RotationFiles(tmp_path)
    pause = ProducerPause(tmp_path)
    files.request_pause("r1", deadline=time.time() + 0.3)
    pause.hold(_FakePublisher(undelivered=3), threading.Event())
    assert files.live_producers() == {os.getpid(): ""}
    pause.close()


def test_dead_producers_are_forgotten(tmp_path):
    files = RotationFiles(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    files.register(dead.pid)
    assert dead.pid not in files.live_producers()
    assert not (files.producers / str(dead.pid)).exists()


def test_status_shows_the_rotations(tmp_path):
    from salespulse.settings import Settings
    from salespulse.status import rotation_summary

    settings = Settings(salespulse_state_dir=tmp_path)
    assert rotation_summary(settings) == ""  # no embedded broker on this machine
    RotationFiles(tmp_path).save_state(RotationState(rotations=2, held_messages=1234, threshold=50_000,
                                                     last_rotation_at=time.time(), last_pause_s=0.8, aborted=1,
                                                     last_abort_reason="producers [1] did not pause in time"))
    text = rotation_summary(settings)
    assert "holds 1,234 messages (rotated at 50,000), 2 rotations" in text
    assert "producers paused 0.8 s" in text and "1 given up (last: producers [1] did not pause in time)" in text


def test_an_acknowledgement_being_written_is_neither_a_producer_nor_removed(tmp_path):
    """The coordinator lists the folder while a producer writes its acknowledgement
    (a temporary file, then a rename): the temporary file must survive the listing."""
    files = RotationFiles(tmp_path)
    pause = ProducerPause(tmp_path)
    writing = files.producers / f".{os.getpid()}.{os.getpid()}.tmp"
    writing.write_text("r1")
    assert files.live_producers() == {os.getpid(): ""}
    assert writing.exists()
    pause.close()


def test_a_producer_that_cannot_acknowledge_goes_on_without(tmp_path):
    files = RotationFiles(tmp_path)
    pause = ProducerPause(tmp_path)
    files.request_pause("r1", deadline=time.time() + 0.3)
    files.producers.chmod(0o500)  # the acknowledgement cannot be written
    try:
        if os.geteuid() == 0:  # root ignores the mode: take the folder away instead
            files.producers.chmod(0o700)
            for child in files.producers.iterdir():
                child.unlink()
            files.producers.rmdir()
        assert pause.hold(_FakePublisher(), threading.Event()) is True
    finally:
        if files.producers.exists():
            files.producers.chmod(0o700)
    assert files.live_producers() == {}


def test_a_producer_rebuilds_its_client_only_after_the_rotation_it_paused_for(tmp_path):
    files = RotationFiles(tmp_path)
    pause = ProducerPause(tmp_path)
    files.save_state(RotationState(rotations=1, last_rotation="r1", last_rotation_at=time.time()))
    files.request_pause("r2", deadline=time.time() + 0.3)  # r2 is given up (expires): r1 is not this one
    publisher = _FakePublisher()
    pause.hold(publisher, threading.Event())
    assert publisher.rebuilds == 0
    files.save_state(RotationState(rotations=2, last_rotation="r3", last_rotation_at=time.time()))
    files.request_pause("r3", deadline=time.time() + 0.3)
    pause._next_check = 0.0
    pause.hold(publisher, threading.Event())
    assert publisher.rebuilds == 1
    pause.close()

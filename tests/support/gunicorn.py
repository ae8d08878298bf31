"""The dashboard served by a real gunicorn (gthread workers, as compose runs
it), for tests that need the deployed shape: several worker processes, real
client addresses, a real Redis behind the limiter. No tests here."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import stop_group

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def cookie(self, name: str) -> str | None:
        """The value ``Set-Cookie`` gives ``name`` ('' when it clears it), or None."""
        for header in self.headers.get_all("Set-Cookie") or []:
            first = header.split(";", 1)[0]
            key, _, value = first.partition("=")
            if key.strip() == name:
                return value.strip().strip('"')
        return None


def request(port: int, method: str, path: str, *, source: str = "127.0.0.1", headers: dict | None = None,
            body: str | None = None) -> Answer:
    """One request from the client address ``source`` (any 127.x.y.z: Linux
    routes the whole loopback block, so gunicorn sees distinct clients)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


@contextmanager
def gunicorn_dashboard(port: int, env: dict[str, str], workers: int = 2):
    """gunicorn serving ``dashboard:create_app()`` on 127.0.0.1:``port`` with the
    settings in ``env`` (on top of this process's environment); stopped on exit."""
    cmd = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", "gthread",
           "--threads", "4", "--log-level", "warning", "dashboard:create_app()"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **env},
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(port, "GET", "/health").status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not become healthy (exit {proc.poll()})")
            time.sleep(0.2)
        yield proc
    finally:
        stop_group(proc)

"""Logging and metrics shared by the long-running services.

* one JSON object per log line (``configure_logging``), with any ``extra=``
  fields of the record included;
* a small HTTP server per process (``serve_health_and_metrics``) exposing
  ``/health`` (JSON from a callback) and Prometheus ``/metrics``
  (prometheus-client's registry).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _CurrentStderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a record is emitted.

    A handler bound to the stream object of the moment keeps writing to it after
    it is replaced and closed (an in-process CLI call under a test's capture),
    which turns every later log line into a "Logging error".
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: str = "INFO") -> None:
    handler = _CurrentStderrHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Dagster's storage runs alembic on every instance load; its plugin set-up
    # lines say nothing to an operator (they flooded `salespulse status`)
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))


HealthCheck = Callable[[], tuple[bool, dict]]


def serve_health_and_metrics(port: int, health: HealthCheck, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve /health and /metrics on a daemon thread; returns the server (``.server_port``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            if self.path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif self.path == "/health":
                ok, detail = health()
                body = json.dumps({"status": "ok" if ok else "unhealthy", **detail}, default=str).encode()
                self._send(200 if ok else 503, body, "application/json")
            else:
                self._send(404, b'{"error": "not found"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # quiet: scrapes are not events of note
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health-metrics", daemon=True).start()
    return server

"""Pytest plugin: a real Spark Connect server for the whole test session.

Loaded from ``tests/conftest.py`` (``pytest_plugins = ["tests.support.spark_fixtures"]``).
The server is started lazily (only by sessions that use the ``spark_server`` /
``spark`` fixtures), on a free port, ``local[2]``, and stopped (JVM killed) at
the end of the session. Nothing is skipped: if it cannot start, the tests that
need it error out.
"""

from __future__ import annotations

import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def spark_server(state_dir):
    """A running :class:`salespulse.stack.spark.SparkConnectServer` (local[2])."""
    from orchestration.reports.common import close_sessions
    from salespulse.stack.spark import SparkConnectServer

    server = SparkConnectServer(_free_port(), master="local[2]", log_dir=state_dir / "spark-connect")
    server.start()
    try:
        yield server
    finally:
        close_sessions()  # client sessions first: a live client retries a dead server for minutes
        server.stop()


@pytest.fixture(scope="session")
def spark(spark_server):
    """The report code's cached Spark Connect session on the test server."""
    from orchestration.reports import spark_session

    return spark_session(spark_server.remote)

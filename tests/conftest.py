"""Shared fixtures: a real PostgreSQL and a real broker, started by the tests.

Each runs on its own free port under a temporary state dir, so tests never
touch a running ``make run`` stack. Nothing is skipped: if a service cannot
start, the tests that need it error out.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

from salespulse.db import migrate
from salespulse.kafka import ensure_topics
from salespulse.settings import Settings, get_settings
from salespulse.stack.broker import EmbeddedBroker
from salespulse.stack.postgres import EmbeddedPostgres

pytest_plugins = ["tests.support.spark_fixtures"]

# The report partitions begin at the first data when the code location loads
# (orchestration/assets/partitions.py); the tests import it before any database
# exists and materialize fixed past hours: give them a fixed start (also
# inherited by the webservers and daemons they start).
os.environ.setdefault("REPORT_PARTITIONS_START", "2024-01-01T00:00:00+00:00")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """In-process CLI calls install the JSON log handler on the root logger; undo it
    after each test, so one test's logging set-up never leaks into the next."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def state_dir():
    # /var/tmp: reachable by the postgres user even when the checkout is not
    with tempfile.TemporaryDirectory(prefix="salespulse-test-", dir="/var/tmp") as d:
        Path(d).chmod(0o755)
        yield Path(d)


@pytest.fixture(scope="session")
def postgres(state_dir):
    pg = EmbeddedPostgres(state_dir, free_port()).start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def broker(state_dir):
    b = EmbeddedBroker(free_port(), log_file=state_dir / "broker.log").start()
    yield b
    b.stop()


@pytest.fixture
def database_url(postgres):
    """A fresh, migrated database per test (admin URL)."""
    url = postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
    migrate(Settings(database_url=url))
    return url


@pytest.fixture
def settings(database_url, broker, monkeypatch) -> Settings:
    """Settings pointing at the test database and broker (also set in the env,
    for code that calls ``get_settings()``); topics created."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap)
    get_settings.cache_clear()
    ensure_topics(broker.bootstrap)
    yield get_settings()
    get_settings.cache_clear()

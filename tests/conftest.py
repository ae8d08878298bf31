"""Shared fixtures: a real PostgreSQL and a real broker, started by the tests.

Each runs on its own free port under a temporary state dir, so tests never
touch a running ``make run`` stack. Nothing is skipped: if a service cannot
start, the tests that need it error out.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from salespulse.db import discover_migrations, migrate
from salespulse.kafka import ensure_topics
from salespulse.settings import Settings, get_settings
from salespulse.stack.broker import EmbeddedBroker
from salespulse.stack.postgres import EmbeddedPostgres

pytest_plugins = ["tests.support.spark_fixtures", "tests.support.browser"]

# The report partitions begin at the first data when the code location loads
# (orchestration/assets/partitions.py); the tests import it before any database
# exists and materialize fixed past hours: give them a fixed start (also
# inherited by the webservers and daemons they start).
os.environ.setdefault("REPORT_PARTITIONS_START", "2024-01-01T00:00:00+00:00")


# Hypothesis profiles, one per tier (README "Tests"). The property tests are marked
# `property` and run in both tiers: `make test` with `fast` (the default), `make test-slow`
# again with `thorough` (`--hypothesis-profile=thorough`). Both are deterministic (a
# test's examples follow from its source), so a run fails the same way twice. The
# test-specific settings (deadline, health checks, a fixed seed) stay on the tests;
# how many examples is only here.
hypothesis_settings.register_profile("fast", max_examples=25, derandomize=True, database=None)
hypothesis_settings.register_profile("thorough", max_examples=1500, derandomize=True, database=None)
hypothesis_settings.load_profile("fast")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its whole
    group (workers, code servers, runs); SIGKILL the group if it outlives
    ``grace`` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


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
    # Throwaway settings (fsync, synchronous_commit and full_page_writes off): this
    # cluster is never crashed or restarted by a test, and a host crash would only
    # lose the test run. Tests of crashes and outages (chaos, stack supervision, the
    # consumer's outage test) start their own cluster with the durable settings.
    pg = EmbeddedPostgres(state_dir, free_port(), durable=False).start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def migrated_template(postgres):
    """The name of a database with every migration applied, migrated once per session
    and per migration set (the files' names and checksums); tests copy it."""
    templates: dict[str, str] = {}

    def template() -> str:
        key = hashlib.sha256(
            "".join(f"{m.name}:{m.checksum};" for m in discover_migrations()).encode()).hexdigest()[:12]
        if key not in templates:
            name = f"template_{key}"
            migrate(Settings(database_url=postgres.create_database(name)))
            templates[key] = name
        return templates[key]

    return template


@pytest.fixture(scope="session")
def broker(state_dir):
    b = EmbeddedBroker(free_port(), log_file=state_dir / "broker.log").start()
    yield b
    b.stop()


@pytest.fixture
def database_url(postgres, migrated_template):
    """A fresh, migrated database per test (admin URL): a copy of the session's
    migrated template (``CREATE DATABASE ... TEMPLATE``), dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name, template=migrated_template())
    # nothing pending (a no-op but for the checksum check); the roles' passwords from
    # this test's environment, as a fresh migration would set them
    migrate(Settings(database_url=url))
    yield url
    postgres.drop_database(name)


@pytest.fixture(scope="module")
def module_database_url(postgres, migrated_template):
    """A migrated database shared by one module's tests (admin URL), dropped after the
    module: for fixtures that seed data the tests only read."""
    name = f"m_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name, template=migrated_template())
    migrate(Settings(database_url=url))
    yield url
    postgres.drop_database(name)


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


def pytest_collection_modifyitems(config, items):
    """A test outside the fast tier says why: every ``slow`` marker carries a reason."""
    unexplained = sorted({item.nodeid for item in items
                          for mark in item.iter_markers("slow") if not mark.kwargs.get("reason")})
    if unexplained:
        raise pytest.UsageError("slow marker without reason=...: " + ", ".join(unexplained))

"""PostgreSQL helpers: connecting with retries, and the migration runner.

Migrations are the ordered ``sql/NNN_name.sql`` files. The runner records each
applied file (version, name, checksum) in ``schema_migrations``, so re-running
is a no-op, and refuses to go on if an applied file was edited afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from salespulse.settings import ROLE_ANALYTICS, ROLE_DASHBOARD, ROLE_INGEST, Settings

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def connect(url: str, *, attempts: int = 1, delay: float = 0.5, **kwargs) -> psycopg2.extensions.connection:
    """Open a connection, retrying ``attempts`` times with exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return psycopg2.connect(url, **kwargs)
        except psycopg2.OperationalError:
            if attempt == attempts:
                raise
            time.sleep(min(delay * 2 ** (attempt - 1), 5.0))
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover_migrations(directory: Path = SQL_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), path.stem, path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {directory}")
    return found


def apply_migrations(admin_url: str, directory: Path = SQL_DIR) -> list[str]:
    """Apply every pending migration, each in its own transaction; return their names."""
    applied_now = []
    with connect(admin_url, attempts=10) as conn, conn.cursor() as cur:
        # One runner at a time (e.g. several containers starting together).
        cur.execute("SELECT pg_advisory_lock(74177001)")
        cur.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                   checksum CHAR(64) NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
        )
        conn.commit()
        cur.execute("SELECT version, checksum FROM schema_migrations")
        done = dict(cur.fetchall())
        for migration in discover_migrations(directory):
            if migration.version in done:
                if done[migration.version].strip() != migration.checksum:
                    raise RuntimeError(f"migration {migration.name} changed after it was applied")
                continue
            cur.execute(migration.text)
            cur.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            conn.commit()
            applied_now.append(migration.name)
            log.info("applied migration %s", migration.name)
        cur.execute("SELECT pg_advisory_unlock(74177001)")
    conn.close()
    return applied_now


def set_role_passwords(admin_url: str, settings: Settings) -> None:
    """Give each service role its password from the environment (idempotent)."""
    passwords = settings.role_passwords()  # all of them, or nothing changes
    conn = connect(admin_url, attempts=10)
    try:
        with conn, conn.cursor() as cur:
            for role in (ROLE_INGEST, ROLE_ANALYTICS, ROLE_DASHBOARD):
                cur.execute(
                    sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD %s").format(sql.Identifier(role)),
                    (passwords[role],),
                )
    finally:
        conn.close()


def migrate(settings: Settings) -> list[str]:
    """Apply migrations and role passwords with the admin URL. Refuses before
    touching the database when a role's password is missing (``SecretError``:
    the local defaults are for the local stack's embedded cluster only)."""
    settings.role_passwords()
    applied = apply_migrations(settings.database_url)
    set_role_passwords(settings.database_url, settings)
    return applied


def pending_migrations(url: str, directory: Path = SQL_DIR) -> list[str]:
    """Names of migrations not yet applied (all of them if the table is missing)."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not cur.fetchone()[0]:
                return [m.name for m in discover_migrations(directory)]
            cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in cur.fetchall()}
    finally:
        conn.close()
    return [m.name for m in discover_migrations(directory) if m.version not in done]

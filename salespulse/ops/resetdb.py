"""``salespulse reset-db``: drop the database of DATABASE_URL, re-create it, migrate.

Destroys every row (raw tables, reports, pipeline records). Asks for the
database name to be typed back unless ``--yes`` is given; refuses when there is
no terminal to ask on. Other sessions on the database are terminated first
(stop producers/consumers/Dagster before, or they reconnect to an empty
schema). The service roles are cluster-wide and survive; ``migrate`` re-grants
them. The local embedded stack's own reset (PostgreSQL folder, broker, Dagster
home) is ``salespulse stack reset``.
"""

from __future__ import annotations

import sys

from psycopg2 import sql
from sqlalchemy.engine import make_url

from salespulse.db import connect, migrate
from salespulse.ops import OpsError
from salespulse.settings import get_settings


def maintenance_url(url: str, database: str = "postgres") -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def database_name(url: str) -> str:
    name = make_url(url).database
    if not name:
        raise OpsError("DATABASE_URL names no database")
    return name


def reset_database(settings) -> list[str]:
    """Drop and re-create the database of ``settings.database_url``, then migrate it."""
    url = settings.database_url
    name = database_name(url)
    settings.role_passwords()  # a missing role password refuses before anything is dropped
    conn = connect(maintenance_url(url), attempts=3)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            owner = cur.fetchone()[0]
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
    finally:
        conn.close()
    return migrate(settings)


def cmd_reset_db(args) -> int:
    settings = get_settings()
    name = database_name(settings.database_url)
    host = make_url(settings.database_url).host
    if not args.yes:
        if not sys.stdin.isatty():
            raise OpsError("refusing to drop the database without confirmation: pass --yes")
        answer = input(f"This DROPS database {name!r} on {host} with all its data. Type its name to go on: ")
        if answer.strip() != name:
            print("not confirmed: nothing changed")
            return 1
    applied = reset_database(settings)
    print(f"database {name} re-created; applied: {', '.join(applied) or 'nothing'}")
    return 0

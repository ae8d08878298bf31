"""One SQL helper for tests: run a statement in its own connection and transaction."""

from __future__ import annotations

import psycopg2


def query(url: str, sql: str, params=None) -> list[tuple]:
    """Run ``sql`` (committed) and return its rows, or [] for a statement that returns none."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()

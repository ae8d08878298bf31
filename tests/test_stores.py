"""``salespulse status``'s stores: every table of the application database in
exactly one store, sized on disk, with the settings that bound it."""

from __future__ import annotations

import psycopg2

from salespulse.status import store_sizes, stores
from tests.support.db import query


def test_every_table_is_in_one_store_and_the_sizes_add_up(settings, database_url, tmp_path):
    query(database_url, """INSERT INTO dead_letters (topic, "partition", "offset", payload, payload_sha256, error)
                           VALUES ('t', 0, 1, convert_to(repeat('x', 5000), 'UTF8'), repeat('a', 64), 'test')""")
    with psycopg2.connect(database_url) as conn:
        sizes = {s.name: s for s in store_sizes(conn, settings.model_copy(update={"dagster_home": str(tmp_path)}))}
    total = query(database_url, """
        SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'm')""")[0][0]
    database_stores = [s for s in sizes.values() if not s.name.startswith("dagster")]
    assert sum(s.bytes for s in database_stores) == total
    assert sizes["dead letters"].bytes > 0 and "DEAD_LETTER_MAX_MB" in sizes["dead letters"].bound
    assert sizes["raw tables"].bytes > 0 and sizes["raw tables"].kind == "raw"
    assert sizes["reports"].bytes > 0  # the report_*_minute tables, matched by pattern
    assert sizes["dagster compute logs"].bytes == 0
    # what no store names is listed by name, so a new table shows up here the day it is added
    assert "health_check_marks" in sizes["other tables"].bound
    named = {t for s in stores() for t in s.tables}
    assert not any(t in named for t in sizes["other tables"].bound.split("(")[1].rstrip(")").split(", "))

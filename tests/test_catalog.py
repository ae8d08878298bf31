"""The domain registry (salespulse/catalog.py) against the migrated schema and the contracts.

Everything else reads its tables from the catalogue, so these are the only
places a name could be wrong: the migrations (sql/) and the topics.
"""

import psycopg2

from salespulse.catalog import DOMAINS
from salespulse.contracts import TOPICS


def test_every_topic_has_one_domain_and_every_domain_a_topic():
    assert sorted(d.topic for d in DOMAINS.values()) == sorted(TOPICS)
    assert len({d.raw_table for d in DOMAINS.values()}) == len(DOMAINS)  # one domain per raw table


def test_the_catalogued_tables_and_columns_are_the_migrated_schema_s(database_url):
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'")
        schema: dict[str, set[str]] = {}
        for table, column in cur.fetchall():
            schema.setdefault(table, set()).add(column)
    for domain in DOMAINS.values():
        assert domain.raw_table in domain.raw_tables and domain.revenue_table in domain.raw_tables
        assert "total_amount" in schema[domain.revenue_table]
        for table in domain.raw_tables:
            assert table in schema, table
        for report in domain.reports:
            columns = schema.get(report.table, set())
            assert set(report.columns) <= columns, (report.table, set(report.columns) - columns)
            assert report.columns[0] == "window_start"
            assert set(report.additive) <= set(report.columns)
            assert report.dimension is None or report.dimension in report.columns
        assert domain.reports[0].name == "overview" and domain.reports[0].dimension is None
        assert domain.counted in domain.reports[0].columns
        # the drill-down's raw columns come from the raw table or the tables it joins
        raw = set().union(*(schema[t] for t in domain.raw_tables))
        assert set(domain.raw_columns) <= raw, set(domain.raw_columns) - raw

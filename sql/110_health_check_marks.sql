-- Incremental health checks (issue 14, "cost over a long history"). See
-- docs/audit.md and orchestration/increments.py.
--
-- raw_tables_consistent and ingest_ledger_contiguous run every five minutes
-- and look only at the rows ingested (ledger rows recorded) since their last
-- evaluation. Their state lives here, not in Dagster, so it survives a
-- restart of Dagster (or a new Dagster instance):
--   since   - the next evaluation looks at rows with ingested_at/recorded_at
--             after this (it follows the oldest ingest transaction that was
--             still open, orchestration/sensors/late_rows.py);
--   marks   - [[now(), transaction id], ...] of recent evaluations (idem);
--   pending - what was found wrong and is looked at again until it is right
--             (event-time minutes per domain, or ledger gaps).
CREATE TABLE health_check_marks (
    check_name   TEXT PRIMARY KEY,
    since        TIMESTAMPTZ NOT NULL,
    marks        JSONB       NOT NULL,
    pending      JSONB       NOT NULL DEFAULT '[]',
    evaluated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A partition's ranges in offset order: the range before (after) a new one
-- without reading the partition's whole history.
CREATE INDEX idx_ingest_ledger_partition_offsets
    ON ingest_ledger (consumer_group, topic, topic_incarnation, "partition", first_offset);

GRANT SELECT, INSERT, UPDATE, DELETE ON health_check_marks TO salespulse_analytics;
GRANT SELECT ON health_check_marks TO salespulse_dashboard;

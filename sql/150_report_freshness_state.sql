-- The reports' state by the one freshness rule (salespulse/freshness.py: ok,
-- late, stale or unknown), as freshness_sensor last found it, so the pipeline
-- page's notice says what the freshness table says. `stale` stays: it is
-- state = 'stale'. NULL: recorded before this column.
ALTER TABLE pipeline_report_freshness ADD COLUMN state VARCHAR(8)
    CHECK (state IN ('unknown', 'ok', 'late', 'stale'));

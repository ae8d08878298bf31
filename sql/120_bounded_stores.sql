-- Bounded stores (issue 19, parts 2 and 4). See salespulse/bounded_stores.py
-- and orchestration/retention.py (store_retention_job, every 10 minutes).
--
-- 1. Dead letters keep their payload up to DEAD_LETTER_PAYLOAD_MAX_BYTES
--    (64 KiB), with the size and SHA-256 of the WHOLE payload: payload_sha256
--    (already there) stays the hash of the full value, so the unique key
--    (topic, incarnation, partition, offset, payload hash) de-duplicates on
--    the full payload whatever the cap. payload_bytes is the full size; NULL
--    for rows stored before this migration (their payload is whole:
--    octet_length(payload)). A row whose payload_bytes exceeds the bytes of
--    its payload holds a truncated (or, trimmed for size, an emptied) payload.
ALTER TABLE dead_letters ADD COLUMN payload_bytes BIGINT;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_payload_bytes_whole
    CHECK (payload_bytes IS NULL OR payload_bytes >= coalesce(octet_length(payload), 0));

-- 2. The retention job runs as the analytics role (Dagster ops): it may delete
--    old rows of the pipeline records below, and empty the payload of a dead
--    letter still needed by the checks (size bound: its row stays, counted).
GRANT DELETE ON dead_letters TO salespulse_analytics;
GRANT UPDATE (payload, payload_bytes) ON dead_letters TO salespulse_analytics;
GRANT DELETE ON report_restatements, raw_partition_drops TO salespulse_analytics;
-- (report_refreshes, pipeline_check_results, pipeline_alert_notifications,
-- pipeline_observations and pipeline_runs: DELETE granted by sql/004, 070, 080, 100)

-- 3. Indexes the trims walk, oldest first (the others have one on their time column).
CREATE INDEX IF NOT EXISTS idx_report_refreshes_refreshed_at ON report_refreshes (refreshed_at);
CREATE INDEX IF NOT EXISTS idx_report_restatements_restated_at ON report_restatements (restated_at);
CREATE INDEX IF NOT EXISTS idx_pipeline_alert_notifications_first_at ON pipeline_alert_notifications (first_at);

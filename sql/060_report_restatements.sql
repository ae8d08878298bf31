-- Late and out-of-order data is restated (issue 13, part 1).
--
-- 1. The new-data sensor finds the rows committed since its last tick by their
--    ingested_at (clock_timestamp() at insert), not by id (ids commit out of
--    order when consumers run side by side). BRIN indexes: rows are appended
--    roughly in ingested_at order, so a block-range summary is enough to scan
--    only the recent end of the table, and it costs the ingest next to nothing
--    (no per-row index entry, unlike a btree).
CREATE INDEX IF NOT EXISTS idx_events_ingested_at_brin ON events USING brin (ingested_at);
CREATE INDEX IF NOT EXISTS idx_orders_ingested_at_brin ON orders USING brin (ingested_at);

-- 2. One row per report minute window whose figures changed after the window
--    had already been reported closed (see orchestration/reports/restatements.py):
--    written in the report refresh's own transaction, so a restatement is
--    recorded exactly when its new figures become visible.
--    rows_before / rows_after: the raw rows the domain's overview counted for
--    the window before and after the refresh (events for ecommerce, orders
--    for restaurant; 0 = the window had no report row).
--    run_id: the Dagster run of the refresh (NULL outside Dagster).
CREATE TABLE report_restatements (
    id           BIGSERIAL PRIMARY KEY,
    domain       VARCHAR(32) NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    rows_before  BIGINT NOT NULL CHECK (rows_before >= 0),
    rows_after   BIGINT NOT NULL CHECK (rows_after >= 0),
    run_id       VARCHAR(64),
    restated_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CHECK (rows_before <> rows_after)
);
CREATE INDEX idx_report_restatements_domain_window ON report_restatements (domain, window_start);

GRANT SELECT, INSERT ON report_restatements TO salespulse_analytics;
GRANT USAGE ON SEQUENCE report_restatements_id_seq TO salespulse_analytics;
GRANT SELECT ON report_restatements TO salespulse_dashboard;

-- Every figure is traceable (issue 13, part 3).
--
-- 1. Raw rows carry their Kafka origin: the partition and offset of the
--    message that created the row (the topic is the table's: events <-
--    ecommerce.events, orders <- restaurant.orders). NULL for rows stored
--    before this migration. A re-sent identical message is a duplicate (no-op),
--    so a row keeps the origin of its FIRST copy. Offsets restart at 0 when the
--    in-memory broker restarts or a topic is re-created (docs/broker.md,
--    defect 1): ingested_at tells such incarnations apart for people.
ALTER TABLE events ADD COLUMN kafka_partition INTEGER, ADD COLUMN kafka_offset BIGINT;
ALTER TABLE orders ADD COLUMN kafka_partition INTEGER, ADD COLUMN kafka_offset BIGINT;

-- 2. Which Dagster run computed a report window: one row per refresh (written
--    in the refresh's own transaction by orchestration.reports.common.
--    replace_windows), covering [window_start, window_end). The run of a window
--    is the newest refresh whose range holds it. run_id is NULL for a refresh
--    made outside Dagster (a script, a test).
CREATE TABLE report_refreshes (
    id           BIGSERIAL PRIMARY KEY,
    domain       VARCHAR(32) NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    window_end   TIMESTAMPTZ NOT NULL,
    run_id       VARCHAR(64),
    refreshed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CHECK (window_start < window_end)
);
CREATE INDEX idx_report_refreshes_domain_start ON report_refreshes (domain, window_start);

GRANT SELECT, INSERT, DELETE ON report_refreshes TO salespulse_analytics;
GRANT USAGE ON SEQUENCE report_refreshes_id_seq TO salespulse_analytics;
-- the drill-down reads the rows behind a figure: order items and the product
-- catalogue (category of a purchase) besides events, transactions and orders
GRANT SELECT ON report_refreshes, order_items, products TO salespulse_dashboard;

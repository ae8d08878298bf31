-- Dashboard: "last report time" on the pipeline page reads max(computed_at) of
-- the overview report tables; these indexes make it an index-only lookup.
-- (Every other dashboard query filters on window_start, the primary-key prefix,
-- or on the existing "timestamp"/received_at/observed_at/recorded_at indexes.)
CREATE INDEX IF NOT EXISTS idx_report_ecommerce_overview_computed_at
    ON report_ecommerce_overview_minute (computed_at);
CREATE INDEX IF NOT EXISTS idx_report_restaurant_overview_computed_at
    ON report_restaurant_overview_minute (computed_at);

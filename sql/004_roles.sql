-- Least-privilege roles. Created here without passwords; the migration runner
-- sets each role's password from the environment (settings) after migrating.
-- Roles are cluster-wide, so creation is guarded; grants are per database.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'salespulse_ingest') THEN
        CREATE ROLE salespulse_ingest LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'salespulse_analytics') THEN
        CREATE ROLE salespulse_analytics LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'salespulse_dashboard') THEN
        CREATE ROLE salespulse_dashboard LOGIN;
    END IF;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO salespulse_ingest, salespulse_analytics, salespulse_dashboard;

-- ingestion: insert raw rows (upsert products), nothing else
GRANT SELECT, INSERT ON events, transactions, orders, order_items, dead_letters TO salespulse_ingest;
GRANT SELECT, INSERT, UPDATE ON products TO salespulse_ingest;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO salespulse_ingest;

-- analytics: read raw, write reports and pipeline records, own (refresh) the views
GRANT SELECT ON events, products, transactions, orders, order_items, dead_letters TO salespulse_analytics;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    report_ecommerce_overview_minute, report_ecommerce_category_minute, report_ecommerce_product_minute,
    report_restaurant_overview_minute, report_restaurant_item_minute,
    report_restaurant_category_minute, report_restaurant_channel_minute,
    pipeline_observations, pipeline_runs
TO salespulse_analytics;
ALTER MATERIALIZED VIEW sales_by_category OWNER TO salespulse_analytics;
ALTER MATERIALIZED VIEW top_products OWNER TO salespulse_analytics;
ALTER MATERIALIZED VIEW daily_metrics OWNER TO salespulse_analytics;

-- dashboard: read-only on views, reports, pipeline records and dead letters,
-- plus the raw tables for indexed last-minute ranges (realtime cards)
GRANT SELECT ON
    events, transactions, orders,
    sales_by_category, top_products, daily_metrics,
    report_ecommerce_overview_minute, report_ecommerce_category_minute, report_ecommerce_product_minute,
    report_restaurant_overview_minute, report_restaurant_item_minute,
    report_restaurant_category_minute, report_restaurant_channel_minute,
    pipeline_observations, pipeline_runs, dead_letters
TO salespulse_dashboard;

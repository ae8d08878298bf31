-- Incremental all-time figures (docs/scaling.md): per-UTC-day partial
-- aggregates, recomputed only for the days whose raw rows changed
-- (salespulse/daily_aggregates.py). The three materialized views of the
-- e-commerce source design keep their names, columns and unique indexes, but
-- now read these small tables instead of all history, so a refresh costs in
-- days x products, not in events.

-- One row per UTC day of events; the distinct counts are exact (each day is
-- recomputed from that day's raw events whenever one of them changes).
CREATE TABLE daily_event_totals (
    day          DATE PRIMARY KEY,
    events       BIGINT NOT NULL,
    unique_users BIGINT NOT NULL,
    sessions     BIGINT NOT NULL,
    purchases    BIGINT NOT NULL,
    computed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per UTC day and product sold.
CREATE TABLE daily_product_sales (
    day          DATE         NOT NULL,
    product_id   VARCHAR(200) NOT NULL,
    units        BIGINT       NOT NULL,
    revenue      NUMERIC(14, 2) NOT NULL,
    orders       BIGINT       NOT NULL,
    last_sale_at TIMESTAMPTZ  NOT NULL,
    computed_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    PRIMARY KEY (day, product_id)
);

-- Where maintenance stands: every event ingested before `maintained_until`
-- (less the margin in salespulse/daily_aggregates.py) is in the aggregates.
CREATE TABLE daily_aggregates_state (
    singleton        BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    maintained_until TIMESTAMPTZ NOT NULL,
    days_recomputed  INTEGER NOT NULL DEFAULT 0,  -- at the last maintenance
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The rows ingested since the last maintenance are found through the BRIN
-- index on events.ingested_at (sql/060_report_restatements.sql) without
-- reading history.

-- The conversion of existing data: every day once.
INSERT INTO daily_event_totals (day, events, unique_users, sessions, purchases)
SELECT ("timestamp" AT TIME ZONE 'UTC')::DATE, COUNT(*), COUNT(DISTINCT user_id), COUNT(DISTINCT session_id),
       COUNT(*) FILTER (WHERE event_type = 'purchase')
FROM events GROUP BY 1;
INSERT INTO daily_product_sales (day, product_id, units, revenue, orders, last_sale_at)
SELECT ("timestamp" AT TIME ZONE 'UTC')::DATE, product_id, SUM(quantity), SUM(total_amount), COUNT(*), MAX("timestamp")
FROM transactions GROUP BY 1, 2;
INSERT INTO daily_aggregates_state (maintained_until) VALUES (now());

DROP MATERIALIZED VIEW sales_by_category;
DROP MATERIALIZED VIEW top_products;
DROP MATERIALIZED VIEW daily_metrics;

CREATE MATERIALIZED VIEW sales_by_category AS
SELECT p.category,
       SUM(s.revenue)::NUMERIC(14, 2) AS revenue,
       SUM(s.units)::BIGINT           AS units,
       SUM(s.orders)::BIGINT          AS orders,
       MAX(s.last_sale_at)            AS last_sale_at
FROM daily_product_sales s
JOIN products p ON p.product_id = s.product_id
GROUP BY p.category;
CREATE UNIQUE INDEX ux_sales_by_category ON sales_by_category (category);

CREATE MATERIALIZED VIEW top_products AS
SELECT p.product_id,
       p.product_name,
       p.category,
       SUM(s.units)::BIGINT           AS units,
       SUM(s.revenue)::NUMERIC(14, 2) AS revenue,
       SUM(s.orders)::BIGINT          AS orders
FROM daily_product_sales s
JOIN products p ON p.product_id = s.product_id
GROUP BY p.product_id, p.product_name, p.category;
CREATE UNIQUE INDEX ux_top_products ON top_products (product_id);
CREATE INDEX idx_top_products_revenue ON top_products (revenue DESC);

CREATE MATERIALIZED VIEW daily_metrics AS
SELECT e.day,
       e.events,
       e.unique_users,
       e.sessions,
       e.purchases,
       COALESCE(t.revenue, 0)::NUMERIC(14, 2)  AS revenue,
       COALESCE(t.units, 0)::BIGINT            AS units,
       CASE WHEN COALESCE(t.orders, 0) = 0 THEN 0
            ELSE ROUND(t.revenue / t.orders, 2) END::NUMERIC(14, 2) AS avg_order_value
FROM daily_event_totals e
LEFT JOIN (SELECT day, SUM(revenue) AS revenue, SUM(units) AS units, SUM(orders) AS orders
           FROM daily_product_sales GROUP BY day) t ON t.day = e.day;
CREATE UNIQUE INDEX ux_daily_metrics ON daily_metrics (day);

ALTER MATERIALIZED VIEW sales_by_category OWNER TO salespulse_analytics;
ALTER MATERIALIZED VIEW top_products OWNER TO salespulse_analytics;
ALTER MATERIALIZED VIEW daily_metrics OWNER TO salespulse_analytics;
GRANT SELECT, INSERT, UPDATE, DELETE ON daily_event_totals, daily_product_sales, daily_aggregates_state
    TO salespulse_analytics;
GRANT SELECT ON daily_event_totals, daily_product_sales, daily_aggregates_state,
    sales_by_category, top_products, daily_metrics TO salespulse_dashboard;

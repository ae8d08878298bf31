-- Materialized views of the e-commerce source design, refreshed CONCURRENTLY
-- by Dagster (hence a unique index on each).

CREATE MATERIALIZED VIEW sales_by_category AS
SELECT p.category,
       SUM(t.total_amount)::NUMERIC(14, 2) AS revenue,
       SUM(t.quantity)::BIGINT             AS units,
       COUNT(*)::BIGINT                    AS orders,
       MAX(t."timestamp")                  AS last_sale_at
FROM transactions t
JOIN products p ON p.product_id = t.product_id
GROUP BY p.category;
CREATE UNIQUE INDEX ux_sales_by_category ON sales_by_category (category);

CREATE MATERIALIZED VIEW top_products AS
SELECT p.product_id,
       p.product_name,
       p.category,
       SUM(t.quantity)::BIGINT             AS units,
       SUM(t.total_amount)::NUMERIC(14, 2) AS revenue,
       COUNT(*)::BIGINT                    AS orders
FROM transactions t
JOIN products p ON p.product_id = t.product_id
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
FROM (SELECT date_trunc('day', "timestamp" AT TIME ZONE 'UTC')::DATE AS day,
             COUNT(*)::BIGINT                                  AS events,
             COUNT(DISTINCT user_id)::BIGINT                   AS unique_users,
             COUNT(DISTINCT session_id)::BIGINT                AS sessions,
             COUNT(*) FILTER (WHERE event_type = 'purchase')::BIGINT AS purchases
      FROM events GROUP BY 1) e
LEFT JOIN (SELECT date_trunc('day', "timestamp" AT TIME ZONE 'UTC')::DATE AS day,
                  SUM(total_amount) AS revenue, SUM(quantity) AS units, COUNT(*) AS orders
           FROM transactions GROUP BY 1) t ON t.day = e.day;
CREATE UNIQUE INDEX ux_daily_metrics ON daily_metrics (day);

"""Synthetic rows for the benchmarks, generated inside PostgreSQL (``generate_series``).

Deterministic (row ``i`` always gets the same values), fast (no Kafka, no
Python loop) and shared by ``bench_reports.py`` and ``bench_orchestration.py``.
Parameters (psycopg2 pyformat): ``base`` (first timestamp), ``n`` events
``step`` microseconds apart; ``orders`` orders ``ostep`` microseconds apart.
"""

ECOMMERCE_SEED_SQL = """
INSERT INTO products (product_id, product_name, category, price)
SELECT 'p' || g, 'Product ' || g, 'category-' || (g %% 12), round((5 + (g * 37) %% 400)::numeric + 0.99, 2)
FROM generate_series(0, 299) g;

INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, product_id)
SELECT md5('ev' || i)::uuid,
       CASE WHEN r < 55 THEN 'page_view' WHEN r < 68 THEN 'search' WHEN r < 84 THEN 'add_to_cart'
            WHEN r < 90 THEN 'remove_from_cart' ELSE 'purchase' END,
       ts, 'u' || u, 'u' || u || '-' || floor(extract(epoch FROM ts) / 900)::bigint,
       CASE WHEN r BETWEEN 55 AND 67 THEN NULL ELSE 'p' || ((i * 13) %% 300) END
FROM (SELECT i, (i * 31) %% 100 AS r, (i * 7919) %% 25000 AS u,
             %(base)s::timestamptz + (i * %(step)s) * interval '1 microsecond' AS ts
      FROM generate_series(0::bigint, %(n)s - 1) i) s;

INSERT INTO transactions (transaction_id, event_id, product_id, quantity, total_amount, payment_method, "timestamp")
SELECT e.event_id::text, e.event_id, e.product_id, 1 + (e.id %% 3), p.price * (1 + (e.id %% 3)), 'card', e."timestamp"
FROM events e JOIN products p USING (product_id) WHERE e.event_type = 'purchase';
"""

RESTAURANT_SEED_SQL = """
INSERT INTO orders (order_id, "timestamp", restaurant_id, table_number, channel, total_amount, payment_method, item_count)
SELECT md5('or' || i)::uuid, %(base)s::timestamptz + (i * %(ostep)s) * interval '1 microsecond', 'r-1', NULL,
       (ARRAY['takeaway', 'delivery'])[1 + i %% 2], 2 * 12.50, 'pix', 2
FROM generate_series(0::bigint, %(orders)s - 1) i;

INSERT INTO order_items (order_id, line_number, item_id, name, category, quantity, unit_price, line_total, "timestamp")
SELECT order_id, 0, 'm-' || (id %% 20), 'Item ' || (id %% 20), 'cat-' || (id %% 4), 2, 12.50, 25.00, "timestamp"
FROM orders;
"""

"""The SQL of one batch write (see writer.py for the order they run in)."""

TEMP_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS tmp_events (
    event_id UUID, event_type TEXT, ts TIMESTAMPTZ, user_id TEXT, session_id TEXT,
    product_id TEXT, product_name TEXT, category TEXT, price NUMERIC,
    quantity INTEGER, total_amount NUMERIC, payment_method TEXT, search_query TEXT, content_hash BYTEA,
    kafka_partition INTEGER, kafka_offset BIGINT
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS tmp_orders (
    order_id UUID, ts TIMESTAMPTZ, restaurant_id TEXT, table_number INTEGER, channel TEXT,
    total_amount NUMERIC, payment_method TEXT, item_count INTEGER, content_hash BYTEA,
    kafka_partition INTEGER, kafka_offset BIGINT
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS tmp_order_items (
    order_id UUID, line_number INTEGER, item_id TEXT, name TEXT, category TEXT,
    quantity INTEGER, unit_price NUMERIC, line_total NUMERIC
) ON COMMIT DELETE ROWS;
"""
TRUNCATE_TEMP = "TRUNCATE tmp_events, tmp_orders, tmp_order_items"

# Three statements in one round trip, each with its own snapshot, so the
# ledger read sees whatever a consumer that held the lock before us committed:
# 1. the ledger's shared lock (a trim takes it exclusively to forget an idle
#    stream, sql/130) and the batch's streams' locks, in a fixed order;
# 2. the streams (group, topic, incarnation, partition) not recorded yet get
#    their id (nextval only for the new ones);
# 3. per stream of the batch: its id, and the recorded ranges that overlap the
#    batch's offsets [lo, hi]: those starting inside, the one before (primary
#    key, backwards) and the stream's trimmed range (sql/130_compact_ledger.sql).
LOCK_AND_COVERAGE = """
SELECT pg_advisory_xact_lock_shared(74177019), (SELECT count(pg_advisory_xact_lock(k))
                                              FROM unnest(%(locks)s::bigint[]) AS k);
INSERT INTO ingest_streams (consumer_group, topic, topic_incarnation, "partition")
SELECT %(group)s, b.topic, b.inc, b.p FROM unnest(%(topics)s::text[], %(incs)s::text[], %(parts)s::int[]) AS b(topic, inc, p)
WHERE NOT EXISTS (SELECT 1 FROM ingest_streams s WHERE s.consumer_group = %(group)s AND s.topic = b.topic
                  AND s.topic_incarnation = b.inc AND s."partition" = b.p)
ON CONFLICT DO NOTHING;
SELECT b.topic, b.inc, b.p, s.id, c.first_offset, c.last_offset
FROM unnest(%(topics)s::text[], %(incs)s::text[], %(parts)s::int[], %(los)s::bigint[], %(his)s::bigint[])
     AS b(topic, inc, p, lo, hi)
JOIN ingest_streams s ON s.consumer_group = %(group)s AND s.topic = b.topic AND s.topic_incarnation = b.inc
     AND s."partition" = b.p
LEFT JOIN LATERAL (
    SELECT l.first_offset, l.last_offset FROM ingest_ledger_ranges l
    WHERE l.stream = s.id AND l.first_offset BETWEEN b.lo AND b.hi
    UNION ALL
    (SELECT l.first_offset, l.last_offset FROM ingest_ledger_ranges l
     WHERE l.stream = s.id AND l.first_offset < b.lo ORDER BY l.first_offset DESC LIMIT 1)
    UNION ALL
    SELECT s.trimmed_first, s.trimmed_last WHERE s.trimmed_last IS NOT NULL
) c ON c.last_offset >= b.lo AND c.first_offset <= b.hi
"""

# Keys first: event_keys (unpartitioned, one row per event id ever stored)
# decides which events are new, because events is partitioned by month and
# cannot hold a unique key on event_id alone (sql/100_partitioned_raw_tables.sql).
# Then the new events, and products and transactions for them. An event keeps
# the Kafka origin (partition, offset) of its first copy: a re-send is a no-op.
# Returns the counts and the ids NOT inserted (stored already: usually none),
# so a clean batch sends no list of ids back.
# Products: the latest catalogue data per product by event time (ordered by
# product_id, so concurrent consumers lock product rows in the same order),
# only overwriting newer-or-equal, different data.
INSERT_EVENTS = """
WITH keys AS (
    INSERT INTO event_keys (event_id, "timestamp") SELECT event_id, ts FROM tmp_events
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), ins AS (
    INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, product_id, search_query,
                        content_hash, kafka_partition, kafka_offset)
    SELECT event_id, event_type, ts, user_id, session_id, product_id, search_query, content_hash,
           kafka_partition, kafka_offset FROM tmp_events JOIN keys USING (event_id)
    RETURNING event_id
), new AS (
    SELECT t.* FROM tmp_events t JOIN ins USING (event_id)
), prod AS (
    INSERT INTO products AS p (product_id, product_name, category, price, catalog_as_of, updated_at)
    SELECT DISTINCT ON (product_id) product_id, product_name, category, price, ts, now()
    FROM new WHERE product_id IS NOT NULL
    ORDER BY product_id, ts DESC
    ON CONFLICT (product_id) DO UPDATE
    SET product_name = EXCLUDED.product_name, category = EXCLUDED.category, price = EXCLUDED.price,
        catalog_as_of = EXCLUDED.catalog_as_of, updated_at = now()
    WHERE (p.catalog_as_of IS NULL OR p.catalog_as_of <= EXCLUDED.catalog_as_of)
      AND (p.product_name, p.category, p.price) IS DISTINCT FROM
          (EXCLUDED.product_name, EXCLUDED.category, EXCLUDED.price)
    RETURNING 1
), tx AS (
    INSERT INTO transactions (transaction_id, event_id, product_id, quantity, total_amount, payment_method,
                              "timestamp")
    SELECT event_id::text, event_id, product_id, quantity, total_amount, payment_method, ts
    FROM new WHERE event_type = 'purchase'
    ON CONFLICT (transaction_id, "timestamp") DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM prod), (SELECT count(*) FROM tx), (SELECT count(*) FROM ins),
       ARRAY(SELECT t.event_id::text FROM tmp_events t WHERE NOT EXISTS (SELECT FROM ins WHERE ins.event_id = t.event_id))
"""

# Orders (keys first, as for events), then the items of the orders actually
# inserted, stamped with their order's time (order_items' partition key);
# counts and the ids not inserted.
INSERT_ORDERS = """
WITH keys AS (
    INSERT INTO order_keys (order_id, "timestamp") SELECT order_id, ts FROM tmp_orders
    ON CONFLICT (order_id) DO NOTHING
    RETURNING order_id
), ins AS (
    INSERT INTO orders (order_id, "timestamp", restaurant_id, table_number, channel, total_amount, payment_method,
                        item_count, content_hash, kafka_partition, kafka_offset)
    SELECT order_id, ts, restaurant_id, table_number, channel, total_amount, payment_method, item_count,
           content_hash, kafka_partition, kafka_offset
    FROM tmp_orders JOIN keys USING (order_id)
    RETURNING order_id, "timestamp"
), items AS (
    INSERT INTO order_items (order_id, line_number, item_id, name, category, quantity, unit_price, line_total,
                             "timestamp")
    SELECT i.order_id, line_number, item_id, name, category, quantity, unit_price, line_total, ins."timestamp"
    FROM tmp_order_items i JOIN ins USING (order_id)
    ON CONFLICT (order_id, line_number, "timestamp") DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM items), (SELECT count(*) FROM ins),
       ARRAY(SELECT t.order_id::text FROM tmp_orders t WHERE NOT EXISTS (SELECT FROM ins WHERE ins.order_id = t.order_id))
"""

# Ids not inserted whose stored content differs (rows stored before content
# hashes existed have none and count as identical). The key row says which
# partition holds the stored row.
CONFLICTS = """
SELECT 'e', s.event_id::text FROM unnest(%(eids)s::uuid[], %(ehashes)s::text[]) AS c(id, h)
JOIN event_keys k ON k.event_id = c.id
JOIN events s ON s."timestamp" = k."timestamp" AND s.event_id = k.event_id
WHERE s.content_hash <> decode(c.h, 'hex')
UNION ALL
SELECT 'o', s.order_id::text FROM unnest(%(oids)s::uuid[], %(ohashes)s::text[]) AS c(id, h)
JOIN order_keys k ON k.order_id = c.id
JOIN orders s ON s."timestamp" = k."timestamp" AND s.order_id = k.order_id
WHERE s.content_hash <> decode(c.h, 'hex')
"""

INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (topic, topic_incarnation, "partition", "offset", key, key_bytes, headers, payload,
                          payload_bytes, payload_sha256, error)
VALUES %s
ON CONFLICT (topic, topic_incarnation, "partition", "offset", payload_sha256) DO NOTHING
RETURNING topic, topic_incarnation, "partition", "offset", payload_sha256
"""
DEAD_LETTER_CHUNK_BYTES = 32 << 20  # raw payload bytes per INSERT statement

# One compact row per (batch, stream): sql/130_compact_ledger.sql.
INSERT_LEDGER = """
INSERT INTO ingest_ledger_ranges (stream, first_offset, last_offset, stored, duplicates, dead_lettered)
VALUES %s
"""

# The dead letters already recorded for offsets a re-delivered batch covers: the
# consumer may have died after the commit but before publishing them to the DLQ.
RECORDED_DEAD_LETTERS = """
SELECT d.topic, d.topic_incarnation, d."partition", d."offset", d.error
FROM dead_letters d
JOIN unnest(%(topics)s::text[], %(incs)s::text[], %(parts)s::int[], %(offsets)s::bigint[])
     AS s(topic, inc, part, off)
  ON d.topic = s.topic AND d.topic_incarnation = s.inc AND d."partition" = s.part AND d."offset" = s.off
"""

-- Partitioned raw tables and retention (issue 14, part 4). See docs/scaling.md.
--
-- events, transactions, orders, order_items and pipeline_observations become
-- tables partitioned by month on their time column (event time; observed_at),
-- with a DEFAULT partition that catches any row whose month has no partition
-- yet, so an insert never fails for want of a partition. Monthly, not daily:
-- queries that cannot prune by time (ingested_at scans, key lookups) open
-- every partition, and a year is 12 of them rather than 365.
--
-- De-duplication moves to two unpartitioned key tables. A unique constraint on
-- a partitioned table must include the partition key, so UNIQUE (event_id)
-- on events would become UNIQUE (event_id, "timestamp") and a conflicting
-- re-send with another timestamp would be stored twice. event_keys and
-- order_keys keep the consumer's rule exact: one row per id, ever; a second
-- copy is a duplicate (same content) or a dead letter (other content). Each
-- key row also says where its row lives (its partition key), and retention
-- deletes the keys of the partitions it drops.
--
-- The foreign keys transactions -> events and order_items -> orders go (they
-- would have to reference the key tables, and retention would then check every
-- deleted key against a whole table); the consumer writes both sides in one
-- statement and the raw_tables_consistent check verifies them.
-- order_items gains "timestamp" (its order's event time) as its partition key.
--
-- The migration converts existing data in its one transaction: each table is
-- renamed, re-created partitioned (a partition per month that holds rows, and
-- the months around now), filled with INSERT ... SELECT, and the old one dropped.

-- 1. Partition maintenance, owned by the migrating (admin) role and run by the
--    analytics role (Dagster) as SECURITY DEFINER: only these functions may
--    create or drop partitions. Each runs in UTC with ISO dates whatever the
--    caller's session says: partition bounds are written and read as text.

-- The partitioned raw tables and their time columns (the one list the
-- functions below and salespulse/partitions.py read).
CREATE TABLE raw_partitioned_tables (
    table_name  TEXT PRIMARY KEY,
    key_column  TEXT NOT NULL
);
INSERT INTO raw_partitioned_tables VALUES
    ('events', 'timestamp'), ('transactions', 'timestamp'), ('orders', 'timestamp'),
    ('order_items', 'timestamp'), ('pipeline_observations', 'observed_at');

-- Retention: what was dropped, when and by which run (a pipeline record,
-- shown by `salespulse status` and read by report backfills, which refuse
-- windows whose raw rows are gone).
CREATE TABLE raw_partition_drops (
    id           BIGSERIAL PRIMARY KEY,
    table_name   TEXT        NOT NULL,
    partition    TEXT        NOT NULL,
    range_start  TIMESTAMPTZ NOT NULL,
    range_end    TIMESTAMPTZ NOT NULL,
    rows         BIGINT      NOT NULL,
    run_id       VARCHAR(64),
    dropped_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX idx_raw_partition_drops_table ON raw_partition_drops (table_name, range_end);

-- The month partitions of the raw tables with their ranges.
CREATE FUNCTION salespulse_raw_month_partitions()
RETURNS TABLE (table_name TEXT, partition TEXT, range_start TIMESTAMPTZ, range_end TIMESTAMPTZ)
LANGUAGE sql STABLE SET search_path = public, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
SELECT r.table_name, c.relname::text,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
FROM raw_partitioned_tables r
JOIN pg_inherits i ON i.inhparent = ('public.' || r.table_name)::regclass
JOIN pg_class c ON c.oid = i.inhrelid
WHERE pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
$$;

-- The end of the dropped raw history of a table (-infinity: nothing dropped).
CREATE FUNCTION salespulse_raw_floor(tbl TEXT) RETURNS TIMESTAMPTZ
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
SELECT coalesce(max(range_end), '-infinity') FROM raw_partition_drops WHERE table_name = tbl
$$;

-- The partition of parent for the UTC month holding ts, created if missing.
-- Rows of that month waiting in the DEFAULT partition are moved into it first
-- (the default is locked meanwhile, so no insert slips in between).
CREATE FUNCTION salespulse_month_partition(parent regclass, ts timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    lo timestamptz := date_trunc('month', ts);
    hi timestamptz := date_trunc('month', ts) + interval '1 month';
    part text := format('%s_p%s', parent::text, to_char(lo, 'YYYY_MM'));
    dflt text := parent::text || '_default';
    keycol text;
    waiting boolean := false;
BEGIN
    IF to_regclass('public.' || part) IS NOT NULL THEN
        RETURN part;
    END IF;
    SELECT a.attname INTO STRICT keycol FROM pg_partitioned_table p
    JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
    WHERE p.partrelid = parent;
    IF to_regclass('public.' || dflt) IS NOT NULL THEN
        EXECUTE format('LOCK TABLE public.%I IN SHARE ROW EXCLUSIVE MODE', dflt);
        IF to_regclass('public.' || part) IS NOT NULL THEN  -- created while we waited
            RETURN part;
        END IF;
        EXECUTE format('SELECT EXISTS (SELECT FROM public.%I WHERE %I >= $1 AND %I < $2)', dflt, keycol, keycol)
            INTO waiting USING lo, hi;
    END IF;
    IF waiting THEN
        EXECUTE format('CREATE TABLE public.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part, parent);
        EXECUTE format('WITH moved AS (DELETE FROM public.%I WHERE %I >= $1 AND %I < $2 RETURNING *) '
                       'INSERT INTO public.%I SELECT * FROM moved', dflt, keycol, keycol, part) USING lo, hi;
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION public.%I FOR VALUES FROM (%L) TO (%L)', parent, part, lo, hi);
    ELSE
        EXECUTE format('CREATE TABLE public.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)', part, parent, lo, hi);
    END IF;
    RETURN part;
END
$$;

-- Every partitioned raw table has partitions for the months from around-1
-- month to around+2 months, and one for each month of a row waiting in its
-- DEFAULT partition (moved there); never for a month retention dropped.
-- Returns the partitions created.
CREATE FUNCTION salespulse_ensure_raw_partitions(around timestamptz DEFAULT now())
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    t record;
    m timestamptz;
BEGIN
    FOR t IN SELECT table_name, key_column FROM raw_partitioned_tables ORDER BY table_name LOOP
        FOR m IN EXECUTE format(
                'SELECT date_trunc(''month'', $1) + make_interval(months => k) FROM generate_series(-1, 2) AS k '
                'UNION SELECT DISTINCT date_trunc(''month'', %I) FROM public.%I',
                t.key_column, t.table_name || '_default') USING around
        LOOP
            CONTINUE WHEN m < salespulse_raw_floor(t.table_name);
            IF to_regclass(format('public.%s_p%s', t.table_name, to_char(m, 'YYYY_MM'))) IS NULL THEN
                RETURN NEXT salespulse_month_partition(('public.' || t.table_name)::regclass, m);
            END IF;
        END LOOP;
    END LOOP;
END
$$;

-- How far raw history may be dropped now, at most up to `before` (and never
-- within two days of now): up to the first minute whose events or orders do
-- not match the count of their overview report row (a report not yet
-- computed or not yet restated: the new-data sensor's rule), and the first
-- day whose per-day aggregate does not count exactly its events. bound is
-- NULL when no month partition ends before it; reason says what held it.
CREATE FUNCTION salespulse_raw_drop_bound(before timestamptz, OUT bound timestamptz, OUT reason text)
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    lo timestamptz;
    first timestamptz;
    day date;
    pair record;
BEGIN
    bound := least(before, now() - interval '2 days');
    reason := 'the retention horizon';
    SELECT min(range_start) INTO lo FROM salespulse_raw_month_partitions() WHERE range_end <= bound;
    IF lo IS NULL THEN
        bound := NULL;
        reason := format('no month partition ends before %s', to_char(least(before, now() - interval '2 days'),
                                                                   'YYYY-MM-DD HH24:MI'));
        RETURN;
    END IF;
    FOR pair IN SELECT * FROM (VALUES ('events', 'report_ecommerce_overview_minute'),
                                   ('orders', 'report_restaurant_overview_minute')) AS v (tbl, report) LOOP
        EXECUTE format('SELECT min(r.m) FROM (SELECT date_trunc(''minute'', "timestamp") AS m, count(*) AS n '
                       'FROM public.%I WHERE "timestamp" >= $1 AND "timestamp" < $2 GROUP BY 1) r '
                       'LEFT JOIN public.%I o ON o.window_start = r.m WHERE o.%I IS DISTINCT FROM r.n',
                       pair.tbl, pair.report, pair.tbl) INTO first USING lo, bound;
        IF first < bound THEN
            bound := first;
            reason := format('the %s of %s do not match their %s row yet', pair.tbl,
                             to_char(first, 'YYYY-MM-DD HH24:MI'), pair.report);
        END IF;
    END LOOP;
    SELECT min(r.day) INTO day FROM (  -- the whole days before the bound
        SELECT "timestamp"::date AS day, count(*) AS n FROM events
        WHERE "timestamp" >= lo AND "timestamp" < date_trunc('day', bound) GROUP BY 1) r
    LEFT JOIN daily_event_totals d USING (day) WHERE d.events IS DISTINCT FROM r.n;
    IF day::timestamptz < bound THEN
        bound := day::timestamptz;
        reason := format('the per-day aggregate of %s does not count all its events yet', day);
    END IF;
END
$$;

-- Drop every month partition of the raw tables that ends at or before the
-- bound salespulse_raw_drop_bound allows for `before`, recording each; then
-- refuse rows for the dropped months in the DEFAULT partitions of events and
-- orders (stored alone, a re-sent or late event would let a restatement or
-- a rebuild of the per-day aggregates overwrite that day's figures with it).
-- Rows are counted before any partition is locked. The caller (the retention
-- job, orchestration/retention.py) passes the retention horizon.
CREATE FUNCTION salespulse_drop_raw_partitions(before timestamptz, run VARCHAR(64) DEFAULT NULL)
RETURNS SETOF raw_partition_drops
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    bound timestamptz := (salespulse_raw_drop_bound(before)).bound;
    p record;
    counts bigint[] := '{}';
    n bigint;
    i int := 0;
    t text;
    dropped raw_partition_drops;
BEGIN
    IF bound IS NULL THEN
        RETURN;
    END IF;
    FOR p IN SELECT * FROM salespulse_raw_month_partitions() WHERE range_end <= bound ORDER BY 1, 3 LOOP
        EXECUTE format('SELECT count(*) FROM public.%I', p.partition) INTO n;
        counts := counts || n;
    END LOOP;
    FOR p IN SELECT * FROM salespulse_raw_month_partitions() WHERE range_end <= bound ORDER BY 1, 3 LOOP
        i := i + 1;
        EXECUTE format('DROP TABLE public.%I', p.partition);
        INSERT INTO raw_partition_drops (table_name, partition, range_start, range_end, rows, run_id)
        VALUES (p.table_name, p.partition, p.range_start, p.range_end, counts[i], run) RETURNING * INTO dropped;
        RETURN NEXT dropped;
    END LOOP;
    FOREACH t IN ARRAY ARRAY['events', 'orders'] LOOP
        CONTINUE WHEN salespulse_raw_floor(t) = '-infinity';
        EXECUTE format('ALTER TABLE public.%I DROP CONSTRAINT IF EXISTS raw_history_dropped', t || '_default');
        EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT raw_history_dropped CHECK ("timestamp" >= %L) NOT VALID',
                       t || '_default', salespulse_raw_floor(t));
    END LOOP;
END
$$;

-- After a drop, in its own transaction (the raw tables are not locked): the
-- keys of the dropped events and orders, and the dead letters received before
-- the events' floor. Returns the rows deleted.
CREATE FUNCTION salespulse_trim_dropped_history() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    n bigint;
    total bigint := 0;
BEGIN
    DELETE FROM event_keys WHERE "timestamp" < salespulse_raw_floor('events');
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM order_keys WHERE "timestamp" < salespulse_raw_floor('orders');
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM dead_letters WHERE received_at < salespulse_raw_floor('events');
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN total + n;
END
$$;

-- 3. The conversion of existing data, one table at a time.
-- months_of: the old table whose keycol values say which months need a
-- partition (the table itself, or for order_items its orders).
CREATE FUNCTION pg_temp.partition_by_month(tbl text, keycol text, months_of text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    old text := tbl || '_before_100';
    idx record;
    m timestamptz;
BEGIN
    EXECUTE format('ALTER TABLE %I RENAME TO %I', tbl, old);
    -- free the index and constraint names for the new table
    FOR idx IN SELECT conname FROM pg_constraint WHERE conrelid = old::regclass AND contype IN ('p', 'u', 'f') LOOP
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', old, idx.conname);
    END LOOP;
    FOR idx IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE i.indrelid = old::regclass LOOP
        EXECUTE format('DROP INDEX %I', idx.relname);
    END LOOP;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE) '
                   'PARTITION BY RANGE (%I)', tbl, old, keycol);
    EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', tbl || '_default', tbl);
    FOR m IN EXECUTE format('SELECT DISTINCT date_trunc(''month'', %I AT TIME ZONE ''UTC'') AT TIME ZONE ''UTC'' '
                            'FROM %I', keycol, coalesce(months_of, old)) LOOP
        PERFORM salespulse_month_partition(tbl::regclass, m);
    END LOOP;
END
$$;

ALTER TABLE transactions DROP CONSTRAINT transactions_event_id_fkey;
ALTER TABLE order_items DROP CONSTRAINT order_items_order_id_fkey;

SELECT pg_temp.partition_by_month('events', 'timestamp');
SELECT pg_temp.partition_by_month('transactions', 'timestamp');
SELECT pg_temp.partition_by_month('orders', 'timestamp');
SELECT pg_temp.partition_by_month('pipeline_observations', 'observed_at');
-- order_items: its order's timestamp becomes its partition key (added to the
-- old table without a rewrite, so LIKE copies it; filled from the orders)
ALTER TABLE order_items ADD COLUMN "timestamp" TIMESTAMPTZ;
SELECT pg_temp.partition_by_month('order_items', 'timestamp', 'orders_before_100');
ALTER TABLE order_items ALTER COLUMN "timestamp" SET NOT NULL;

INSERT INTO events SELECT * FROM events_before_100;
INSERT INTO transactions SELECT * FROM transactions_before_100;
INSERT INTO orders SELECT * FROM orders_before_100;
INSERT INTO order_items
SELECT i.id, i.order_id, i.line_number, i.item_id, i.name, i.category, i.quantity, i.unit_price, i.line_total,
       o."timestamp"
FROM order_items_before_100 i JOIN orders_before_100 o USING (order_id);  -- every item had its order (foreign key)
INSERT INTO pipeline_observations SELECT * FROM pipeline_observations_before_100;

CREATE TABLE event_keys (
    event_id    UUID        PRIMARY KEY,
    "timestamp" TIMESTAMPTZ NOT NULL
);
CREATE TABLE order_keys (
    order_id    UUID        PRIMARY KEY,
    "timestamp" TIMESTAMPTZ NOT NULL
);
INSERT INTO event_keys SELECT event_id, "timestamp" FROM events_before_100;
INSERT INTO order_keys SELECT order_id, "timestamp" FROM orders_before_100;
-- retention deletes keys by time; keys arrive roughly in time order, so a
-- block-range summary finds them at next to no cost for the ingest
CREATE INDEX idx_event_keys_timestamp_brin ON event_keys USING brin ("timestamp");
CREATE INDEX idx_order_keys_timestamp_brin ON order_keys USING brin ("timestamp");

-- sequences: the new tables' id defaults already use them; hand them over
ALTER SEQUENCE events_id_seq OWNED BY events.id;
ALTER SEQUENCE transactions_id_seq OWNED BY transactions.id;
ALTER SEQUENCE orders_id_seq OWNED BY orders.id;
ALTER SEQUENCE order_items_id_seq OWNED BY order_items.id;
DROP TABLE events_before_100, transactions_before_100, orders_before_100, order_items_before_100,
    pipeline_observations_before_100;

-- 4. Keys and indexes on the partitioned tables (each partition gets its own).
ALTER TABLE events ADD PRIMARY KEY (id, "timestamp");
CREATE INDEX idx_events_timestamp ON events ("timestamp");
CREATE INDEX idx_events_user_id ON events (user_id);
CREATE INDEX idx_events_ingested_at_brin ON events USING brin (ingested_at);
ALTER TABLE transactions ADD PRIMARY KEY (id, "timestamp");
ALTER TABLE transactions ADD UNIQUE (transaction_id, "timestamp");
ALTER TABLE transactions ADD FOREIGN KEY (product_id) REFERENCES products (product_id);
CREATE INDEX idx_transactions_product_id ON transactions (product_id);
CREATE INDEX idx_transactions_timestamp ON transactions ("timestamp");
ALTER TABLE orders ADD PRIMARY KEY (id, "timestamp");
CREATE INDEX idx_orders_timestamp ON orders ("timestamp");
CREATE INDEX idx_orders_ingested_at_brin ON orders USING brin (ingested_at);
ALTER TABLE order_items ADD PRIMARY KEY (id, "timestamp");
ALTER TABLE order_items ADD UNIQUE (order_id, line_number, "timestamp");
CREATE INDEX idx_order_items_item_id ON order_items (item_id);
CREATE INDEX idx_order_items_category ON order_items (category);
ALTER TABLE pipeline_observations ADD PRIMARY KEY (topic, observed_at);
CREATE INDEX idx_pipeline_observations_observed_at ON pipeline_observations (observed_at);

SELECT count(*) FROM salespulse_ensure_raw_partitions();

-- 5. Grants (the new tables start with none).
GRANT SELECT, INSERT ON events, transactions, orders, order_items, event_keys, order_keys TO salespulse_ingest;
GRANT SELECT ON events, transactions, orders, order_items, event_keys, order_keys TO salespulse_analytics;
GRANT SELECT ON events, transactions, orders, order_items TO salespulse_dashboard;
GRANT SELECT, INSERT, UPDATE, DELETE ON pipeline_observations TO salespulse_analytics;
GRANT SELECT ON pipeline_observations, raw_partition_drops, raw_partitioned_tables TO salespulse_dashboard;
GRANT SELECT ON raw_partition_drops, raw_partitioned_tables TO salespulse_analytics;
-- rows waiting for their month (salespulse status, the retention job's report)
GRANT SELECT ON events_default, transactions_default, orders_default, order_items_default,
    pipeline_observations_default TO salespulse_analytics;
REVOKE ALL ON FUNCTION salespulse_month_partition(regclass, timestamptz),
    salespulse_ensure_raw_partitions(timestamptz), salespulse_drop_raw_partitions(timestamptz, VARCHAR),
    salespulse_trim_dropped_history()
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION salespulse_ensure_raw_partitions(timestamptz),
    salespulse_drop_raw_partitions(timestamptz, VARCHAR), salespulse_trim_dropped_history() TO salespulse_analytics;

-- A compact, bounded ingest ledger (issue 19, part 2). See salespulse/ledger.py
-- and docs/audit.md.
--
-- The ledger of sql/040 cost about 600 bytes a row (three text columns, a
-- BIGSERIAL id and four indexes, one a GiST exclusion constraint paid on
-- every write), one row per 2-3 messages at small batches: 30 % of the raw
-- bytes it accounts for, and it was never trimmed. It becomes:
--
-- * ingest_streams: one row per (consumer group, topic, topic incarnation,
--   partition) - the names once, an INTEGER id for the ranges - which also
--   holds the stream's *trimmed* range: the offsets [trimmed_first,
--   trimmed_last] whose ledger ranges were deleted by retention after being
--   found contiguous, with their summed counts. It is the "audited up to"
--   watermark every contiguity check starts from.
-- * ingest_ledger_ranges: one narrow row per (batch, partition), 64-byte
--   tuples (no text, no id), primary key (stream, first_offset) and a BRIN
--   on recorded_at. `messages` is not stored: it is stored + duplicates +
--   dead_lettered by definition. Rows older than LEDGER_ROLLUP_MINUTES are
--   merged per (stream, hour of recorded_at) where they are contiguous
--   (salespulse_rollup_ingest_ledger): one row per stream and hour.
-- * ingest_ledger: a view with the old columns (names, messages), the ranges
--   and, per stream, its trimmed range (trimmed = true) - what the audit, the
--   checks and the chaos campaign read. INSERT into it still works (a
--   trigger resolves the stream): tests and tools.
--
-- Overlaps without the GiST constraint: the consumer takes a transaction
-- advisory lock per stream and reads the ranges covering its batch's offsets
-- (and the trimmed range) before writing, so two consumers cannot record the
-- same offsets; two ranges starting at the same offset are refused by the
-- primary key; any other overlap (a writer that bypasses the lock, a hand
-- edit) is found by the contiguity check, which compares each range with
-- the one before it in offset order, trimmed range included (a range that
-- starts inside the previous one is an OVERLAP). Roll-ups merge only ranges
-- that meet exactly and trims delete only a contiguous prefix, so neither
-- can hide a gap or an overlap.

CREATE TABLE ingest_streams (
    id                     SERIAL PRIMARY KEY,
    consumer_group         TEXT    NOT NULL,
    topic                  TEXT    NOT NULL,
    topic_incarnation      TEXT    NOT NULL DEFAULT '',
    "partition"            INTEGER NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- the trimmed (audited, then deleted) prefix of the stream's ranges
    trimmed_first          BIGINT,
    trimmed_last           BIGINT,
    trimmed_ranges         BIGINT NOT NULL DEFAULT 0,
    trimmed_stored         BIGINT NOT NULL DEFAULT 0,
    trimmed_duplicates     BIGINT NOT NULL DEFAULT 0,
    trimmed_dead_lettered  BIGINT NOT NULL DEFAULT 0,
    trimmed_recorded_until TIMESTAMPTZ,  -- the newest recorded_at trimmed
    UNIQUE (consumer_group, topic, topic_incarnation, "partition"),
    CHECK ((trimmed_first IS NULL) = (trimmed_last IS NULL) AND trimmed_first <= trimmed_last)
);

-- Column order: 8-byte columns first, no padding (64-byte tuples).
CREATE TABLE ingest_ledger_ranges (
    first_offset  BIGINT      NOT NULL,
    last_offset   BIGINT      NOT NULL,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    stream        INTEGER     NOT NULL,  -- ingest_streams.id (no foreign key: a check per row)
    stored        INTEGER     NOT NULL,
    duplicates    INTEGER     NOT NULL,
    dead_lettered INTEGER     NOT NULL,
    PRIMARY KEY (stream, first_offset),
    CHECK (first_offset <= last_offset),
    CHECK (stored >= 0 AND duplicates >= 0 AND dead_lettered >= 0)
);
-- rows arrive in recorded_at order: a block-range summary finds the recent
-- ones (incremental checks, reconciliation) and the old ones (roll-up, trim)
CREATE INDEX idx_ingest_ledger_ranges_recorded_at ON ingest_ledger_ranges USING brin (recorded_at);

-- Roll-up progress: rows recorded before rolled_before (from the start of its
-- hour) have been merged.
CREATE TABLE ingest_ledger_rollup (
    one           BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    rolled_before TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    rolled_at     TIMESTAMPTZ
);
INSERT INTO ingest_ledger_rollup DEFAULT VALUES;

-- Existing ledger rows move as they are (one range each).
INSERT INTO ingest_streams (consumer_group, topic, topic_incarnation, "partition")
SELECT DISTINCT consumer_group, topic, topic_incarnation, "partition" FROM ingest_ledger
ORDER BY 1, 2, 3, 4;
INSERT INTO ingest_ledger_ranges (stream, first_offset, last_offset, recorded_at, stored, duplicates, dead_lettered)
SELECT s.id, l.first_offset, l.last_offset, l.recorded_at, l.stored, l.duplicates, l.dead_lettered
FROM ingest_ledger l
JOIN ingest_streams s USING (consumer_group, topic, topic_incarnation, "partition")
ORDER BY l.recorded_at, l.id;
DROP TABLE ingest_ledger;

-- Stream level (ids only): every range and each stream's trimmed range, for
-- the contiguity queries (an index range per stream on either side).
CREATE VIEW ingest_ledger_spans AS
SELECT stream, first_offset, last_offset FROM ingest_ledger_ranges
UNION ALL
SELECT id, trimmed_first, trimmed_last FROM ingest_streams WHERE trimmed_last IS NOT NULL;

-- The ledger as it read before (plus `ranges`, `trimmed`, `stream`, `xid`):
-- xid is the transaction that wrote the range (ledger_reconciles matches raw
-- rows to it); a trimmed range counts its `ranges` and has no xid.
CREATE VIEW ingest_ledger AS
SELECT s.consumer_group, s.topic, s.topic_incarnation, s."partition", r.first_offset, r.last_offset,
       r.stored + r.duplicates + r.dead_lettered AS messages, r.stored, r.duplicates, r.dead_lettered,
       r.recorded_at, 1::bigint AS ranges, false AS trimmed, r.stream, r.xmin::text::bigint AS xid
FROM ingest_ledger_ranges r JOIN ingest_streams s ON s.id = r.stream
UNION ALL
SELECT s.consumer_group, s.topic, s.topic_incarnation, s."partition", s.trimmed_first, s.trimmed_last,
       s.trimmed_stored + s.trimmed_duplicates + s.trimmed_dead_lettered, s.trimmed_stored,
       s.trimmed_duplicates, s.trimmed_dead_lettered, s.trimmed_recorded_until, s.trimmed_ranges, true, s.id,
       NULL::bigint
FROM ingest_streams s WHERE s.trimmed_last IS NOT NULL;

-- INSERT INTO ingest_ledger (the old columns): tests and tools. The consumer
-- writes ingest_ledger_ranges directly (services/consumer/sql.py).
CREATE FUNCTION salespulse_ingest_ledger_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
    sid integer;
BEGIN
    IF NEW.messages IS NOT NULL AND NEW.messages <> NEW.stored + NEW.duplicates + NEW.dead_lettered THEN
        RAISE check_violation USING MESSAGE = 'ingest_ledger: messages <> stored + duplicates + dead_lettered';
    END IF;
    INSERT INTO ingest_streams (consumer_group, topic, topic_incarnation, "partition")
    VALUES (NEW.consumer_group, NEW.topic, coalesce(NEW.topic_incarnation, ''), NEW."partition")
    ON CONFLICT (consumer_group, topic, topic_incarnation, "partition") DO NOTHING;
    SELECT id INTO sid FROM ingest_streams
    WHERE consumer_group = NEW.consumer_group AND topic = NEW.topic
      AND topic_incarnation = coalesce(NEW.topic_incarnation, '') AND "partition" = NEW."partition";
    INSERT INTO ingest_ledger_ranges (stream, first_offset, last_offset, recorded_at, stored, duplicates,
                                      dead_lettered)
    VALUES (sid, NEW.first_offset, NEW.last_offset, coalesce(NEW.recorded_at, clock_timestamp()), NEW.stored,
            NEW.duplicates, NEW.dead_lettered);
    RETURN NEW;
END
$$;
CREATE TRIGGER ingest_ledger_insert INSTEAD OF INSERT ON ingest_ledger
    FOR EACH ROW EXECUTE FUNCTION salespulse_ingest_ledger_insert();

-- Roll-up: the ranges recorded before `before` (from the hour of the last
-- roll-up on, at most max_rows of them, oldest first) that meet exactly
-- (first_offset = previous last_offset + 1) within one stream and hour of
-- recorded_at become one range (its first row, updated; the others deleted).
-- A gap or an overlap is never merged, so what the contiguity checks find is
-- unchanged. Returns the ranges merged away (deleted) and the ranges examined.
CREATE FUNCTION salespulse_rollup_ingest_ledger(before timestamptz, max_rows integer DEFAULT 50000,
                                                OUT merged bigint, OUT examined bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    since timestamptz;
    reached timestamptz;
BEGIN
    SELECT rolled_before INTO since FROM ingest_ledger_rollup FOR UPDATE;  -- one roll-up at a time
    since := date_trunc('hour', since);
    CREATE TEMP TABLE IF NOT EXISTS pg_temp.ledger_rollup_rows (
        tid tid, stream integer, first_offset bigint, last_offset bigint, recorded_at timestamptz,
        stored integer, duplicates integer, dead_lettered integer) ON COMMIT DROP;
    TRUNCATE pg_temp.ledger_rollup_rows;
    INSERT INTO pg_temp.ledger_rollup_rows
    SELECT ctid, stream, first_offset, last_offset, recorded_at, stored, duplicates, dead_lettered
    FROM ingest_ledger_ranges WHERE recorded_at >= since AND recorded_at < before
    ORDER BY recorded_at LIMIT max_rows;
    GET DIAGNOSTICS examined = ROW_COUNT;
    SELECT CASE WHEN examined < max_rows THEN before ELSE max(recorded_at) END INTO reached
    FROM pg_temp.ledger_rollup_rows;
    WITH marked AS (
        SELECT *, date_trunc('hour', recorded_at) AS hour,
               CASE WHEN first_offset = lag(last_offset) OVER w + 1 THEN 0 ELSE 1 END AS starts
        FROM pg_temp.ledger_rollup_rows
        WINDOW w AS (PARTITION BY stream, date_trunc('hour', recorded_at) ORDER BY first_offset, last_offset)
    ), islands AS (
        SELECT *, sum(starts) OVER (PARTITION BY stream, hour ORDER BY first_offset, last_offset) AS island
        FROM marked
    ), merged AS (
        SELECT (array_agg(tid ORDER BY first_offset))[1] AS keep, array_agg(tid) AS tids, max(last_offset) AS last,
               max(recorded_at) AS recorded, sum(stored) AS stored, sum(duplicates) AS duplicates,
               sum(dead_lettered) AS dead
        FROM islands GROUP BY stream, hour, island HAVING count(*) > 1
    ), upd AS (
        UPDATE ingest_ledger_ranges r
        SET last_offset = m.last, recorded_at = m.recorded, stored = m.stored, duplicates = m.duplicates,
            dead_lettered = m.dead
        FROM merged m WHERE r.ctid = m.keep
        RETURNING 1
    )
    DELETE FROM ingest_ledger_ranges r
    USING (SELECT unnest(tids) AS tid, keep FROM merged) d
    WHERE r.ctid = d.tid AND d.tid <> d.keep;
    GET DIAGNOSTICS merged = ROW_COUNT;
    UPDATE ingest_ledger_rollup SET rolled_before = greatest(rolled_before, coalesce(reached, before)),
                                    rolled_at = now();
END
$$;

-- Trim: per stream, the ranges recorded before `before` (or before the raw
-- history dropped by RAW_RETENTION_DAYS, salespulse_raw_floor: whichever is
-- later) that continue the stream's trimmed range without a gap or an
-- overlap (from its first range if nothing was trimmed yet), in offset
-- order, at most max_rows: deleted, and added to the stream's trimmed range
-- (offsets and counts) in the same transaction. A discontinuity stops the
-- trim of its stream there, so it stays visible to the audit and checks.
-- Then streams with nothing left but a trimmed range recorded before
-- 2 x the window (an old topic incarnation, a replay group) are forgotten,
-- under an exclusive advisory lock that each consumer batch holds shared
-- (services/consumer/sql.py), so a batch never writes to a forgotten stream.
-- Returns the ranges trimmed and the streams forgotten.
CREATE FUNCTION salespulse_trim_ingest_ledger(before timestamptz, max_rows integer DEFAULT 50000,
                                              OUT ranges bigint, OUT streams bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    horizon timestamptz := greatest(before, least(salespulse_raw_floor('events'), salespulse_raw_floor('orders')));
    forget timestamptz;
BEGIN
    PERFORM 1 FROM ingest_ledger_rollup FOR UPDATE;  -- not while a roll-up or another trim runs
    WITH old AS (
        SELECT r.ctid AS tid, r.stream, r.first_offset, r.last_offset, r.recorded_at, r.stored, r.duplicates,
               r.dead_lettered, lag(r.last_offset) OVER w AS prev_last, row_number() OVER w AS rn
        FROM ingest_ledger_ranges r WHERE r.recorded_at < horizon
        WINDOW w AS (PARTITION BY r.stream ORDER BY r.first_offset, r.last_offset)
    ), flagged AS (
        SELECT o.*, sum(CASE WHEN o.rn > 1 AND o.first_offset = o.prev_last + 1 THEN 0
                             WHEN o.rn = 1 AND s.trimmed_last IS NOT NULL AND o.first_offset = s.trimmed_last + 1 THEN 0
                             WHEN o.rn = 1 AND s.trimmed_last IS NULL
                                  AND o.first_offset = (SELECT min(x.first_offset) FROM ingest_ledger_ranges x
                                                        WHERE x.stream = o.stream) THEN 0
                             ELSE 1 END) OVER (PARTITION BY o.stream ORDER BY o.first_offset, o.last_offset) AS breaks
        FROM old o JOIN ingest_streams s ON s.id = o.stream
    ), chosen AS (
        SELECT * FROM flagged WHERE breaks = 0 ORDER BY stream, first_offset LIMIT max_rows
    ), gone AS (
        DELETE FROM ingest_ledger_ranges r USING chosen c WHERE r.ctid = c.tid
        RETURNING c.*
    ), agg AS (
        SELECT stream, min(first_offset) AS f, max(last_offset) AS l, count(*) AS n, sum(stored) AS st,
               sum(duplicates) AS du, sum(dead_lettered) AS de, max(recorded_at) AS rec
        FROM gone GROUP BY stream
    ), upd AS (
        UPDATE ingest_streams s
        SET trimmed_first = coalesce(s.trimmed_first, a.f), trimmed_last = a.l,
            trimmed_ranges = s.trimmed_ranges + a.n, trimmed_stored = s.trimmed_stored + a.st,
            trimmed_duplicates = s.trimmed_duplicates + a.du, trimmed_dead_lettered = s.trimmed_dead_lettered + a.de,
            trimmed_recorded_until = greatest(s.trimmed_recorded_until, a.rec)
        FROM agg a WHERE s.id = a.stream
        RETURNING a.n
    )
    SELECT coalesce(sum(n), 0) INTO ranges FROM upd;
    -- streams left with a trimmed range only, idle for twice the window
    streams := 0;
    IF isfinite(horizon) AND horizon < now() THEN
        forget := horizon - (now() - horizon);
        IF EXISTS (SELECT 1 FROM ingest_streams s WHERE s.trimmed_recorded_until < forget
                   AND NOT EXISTS (SELECT 1 FROM ingest_ledger_ranges r WHERE r.stream = s.id)) THEN
            PERFORM pg_advisory_xact_lock(74177019);  -- waits for the batches in flight (held until commit)
            DELETE FROM ingest_streams s
            WHERE s.trimmed_recorded_until < forget
              AND NOT EXISTS (SELECT 1 FROM ingest_ledger_ranges r WHERE r.stream = s.id);
            GET DIAGNOSTICS streams = ROW_COUNT;
        END IF;
    END IF;
END
$$;

GRANT SELECT, INSERT ON ingest_streams, ingest_ledger_ranges TO salespulse_ingest;
GRANT USAGE ON SEQUENCE ingest_streams_id_seq TO salespulse_ingest;
GRANT SELECT ON ingest_streams, ingest_ledger_ranges, ingest_ledger_rollup, ingest_ledger_spans, ingest_ledger
    TO salespulse_ingest, salespulse_analytics, salespulse_dashboard;
REVOKE ALL ON FUNCTION salespulse_rollup_ingest_ledger(timestamptz, integer),
    salespulse_trim_ingest_ledger(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION salespulse_rollup_ingest_ledger(timestamptz, integer),
    salespulse_trim_ingest_ledger(timestamptz, integer) TO salespulse_analytics;

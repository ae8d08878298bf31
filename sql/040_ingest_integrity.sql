-- Ingest integrity: the ledger of consumed offsets, content hashes that tell an
-- identical re-send from a conflicting one, and dead letters that keep every
-- byte of any message and tell topic incarnations apart.

-- btree_gist: equality on the scalar columns inside a GiST exclusion constraint
-- (a trusted extension: the database owner may create it).
CREATE EXTENSION IF NOT EXISTS btree_gist;

-- One row per (batch, topic, partition), written in the batch's transaction.
-- Per (consumer_group, topic, topic_incarnation, partition) the ranges follow
-- each other (first_offset = previous last_offset + 1); a gap or an overlap is
-- a bug. The exclusion constraint makes an overlap impossible to commit: two
-- consumers briefly owning the same partition cannot both record a range.
CREATE TABLE ingest_ledger (
    id                BIGSERIAL PRIMARY KEY,
    consumer_group    TEXT    NOT NULL,
    topic             TEXT    NOT NULL,
    topic_incarnation TEXT    NOT NULL DEFAULT '',
    "partition"       INTEGER NOT NULL,
    first_offset      BIGINT  NOT NULL,
    last_offset       BIGINT  NOT NULL,
    messages          INTEGER NOT NULL,
    stored            INTEGER NOT NULL,
    duplicates        INTEGER NOT NULL,
    dead_lettered     INTEGER NOT NULL,
    recorded_at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CHECK (messages = stored + duplicates + dead_lettered),
    CHECK (first_offset <= last_offset),
    CONSTRAINT ingest_ledger_no_overlap EXCLUDE USING gist (
        consumer_group WITH =, topic WITH =, topic_incarnation WITH =, "partition" WITH =,
        int8range(first_offset, last_offset, '[]') WITH &&)
);
CREATE INDEX idx_ingest_ledger_recorded_at ON ingest_ledger (recorded_at);

-- A short hash of the normalised content of the message that created the row
-- (NULL for rows stored before this migration: compared column by column).
ALTER TABLE events ADD COLUMN content_hash BYTEA;
ALTER TABLE orders ADD COLUMN content_hash BYTEA;

-- Dead letters: raw key bytes and headers kept; key/error TEXT never hold NUL
-- (escaped as \x00). De-duplicated per topic incarnation, because offsets
-- restart at 0 when a topic is re-created or the in-memory broker restarts.
ALTER TABLE dead_letters
    ADD COLUMN topic_incarnation TEXT NOT NULL DEFAULT '',
    ADD COLUMN key_bytes BYTEA,
    ADD COLUMN headers JSONB;
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_topic_partition_offset_payload_sha256_key;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_incarnation_offset_payload_key
    UNIQUE (topic, topic_incarnation, "partition", "offset", payload_sha256);

GRANT SELECT, INSERT ON ingest_ledger TO salespulse_ingest;
GRANT USAGE ON SEQUENCE ingest_ledger_id_seq TO salespulse_ingest;
GRANT SELECT ON ingest_ledger TO salespulse_analytics, salespulse_dashboard;

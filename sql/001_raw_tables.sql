-- Raw tables written by the consumer (ingestion role). Natural keys make every
-- insert idempotent: event_id, order_id, (order_id, line_number).

CREATE TABLE events (
    id           BIGSERIAL PRIMARY KEY,
    event_id     UUID        NOT NULL UNIQUE,
    event_type   VARCHAR(32) NOT NULL,
    "timestamp"  TIMESTAMPTZ NOT NULL,
    user_id      VARCHAR(200) NOT NULL,
    session_id   VARCHAR(200) NOT NULL,
    product_id   VARCHAR(200),
    search_query TEXT,
    ingested_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX idx_events_timestamp ON events ("timestamp");
CREATE INDEX idx_events_user_id ON events (user_id);

CREATE TABLE products (
    id           SERIAL PRIMARY KEY,
    product_id   VARCHAR(200) NOT NULL UNIQUE,
    product_name VARCHAR(200) NOT NULL,
    category     VARCHAR(200) NOT NULL,
    price        NUMERIC(12, 2) NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_products_category ON products (category);

CREATE TABLE transactions (
    id             BIGSERIAL PRIMARY KEY,
    transaction_id VARCHAR(64)  NOT NULL UNIQUE,
    event_id       UUID         NOT NULL REFERENCES events (event_id),
    product_id     VARCHAR(200) NOT NULL REFERENCES products (product_id),
    quantity       INTEGER      NOT NULL CHECK (quantity > 0),
    total_amount   NUMERIC(12, 2) NOT NULL CHECK (total_amount >= 0),
    payment_method VARCHAR(200) NOT NULL,
    "timestamp"    TIMESTAMPTZ  NOT NULL
);
CREATE INDEX idx_transactions_product_id ON transactions (product_id);
CREATE INDEX idx_transactions_timestamp ON transactions ("timestamp");

CREATE TABLE orders (
    id             BIGSERIAL PRIMARY KEY,
    order_id       UUID         NOT NULL UNIQUE,
    "timestamp"    TIMESTAMPTZ  NOT NULL,
    restaurant_id  VARCHAR(200) NOT NULL,
    table_number   INTEGER,
    channel        VARCHAR(16)  NOT NULL CHECK (channel IN ('dine_in', 'takeaway', 'delivery')),
    total_amount   NUMERIC(12, 2) NOT NULL CHECK (total_amount >= 0),
    payment_method VARCHAR(200) NOT NULL,
    item_count     INTEGER      NOT NULL,
    ingested_at    TIMESTAMPTZ  NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX idx_orders_timestamp ON orders ("timestamp");

CREATE TABLE order_items (
    id          BIGSERIAL PRIMARY KEY,
    order_id    UUID         NOT NULL REFERENCES orders (order_id),
    line_number INTEGER      NOT NULL,
    item_id     VARCHAR(200) NOT NULL,
    name        VARCHAR(200) NOT NULL,
    category    VARCHAR(200) NOT NULL,
    quantity    INTEGER      NOT NULL CHECK (quantity > 0),
    unit_price  NUMERIC(12, 2) NOT NULL CHECK (unit_price >= 0),
    line_total  NUMERIC(12, 2) NOT NULL,
    UNIQUE (order_id, line_number)
);
CREATE INDEX idx_order_items_item_id ON order_items (item_id);
CREATE INDEX idx_order_items_category ON order_items (category);

-- A message that failed its contract. payload is the raw bytes (may not be
-- UTF-8). Unique on (topic, partition, offset, payload hash) so a re-delivered
-- bad message is stored once even though offsets restart with the broker.
CREATE TABLE dead_letters (
    id             BIGSERIAL PRIMARY KEY,
    topic          VARCHAR(249) NOT NULL,
    "partition"    INTEGER      NOT NULL,
    "offset"       BIGINT       NOT NULL,
    key            TEXT,
    payload        BYTEA,
    payload_sha256 CHAR(64)     NOT NULL,
    error          TEXT         NOT NULL,
    received_at    TIMESTAMPTZ  NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (topic, "partition", "offset", payload_sha256)
);
CREATE INDEX idx_dead_letters_received_at ON dead_letters (received_at);

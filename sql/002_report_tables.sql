-- Report tables written by the Spark report assets (analytics role), one row
-- per minute window (and dimension). A Dagster partition replaces its windows'
-- rows in one transaction, so re-runs and backfills never duplicate.

CREATE TABLE report_ecommerce_overview_minute (
    window_start          TIMESTAMPTZ PRIMARY KEY,
    events                BIGINT  NOT NULL,
    page_views            BIGINT  NOT NULL,
    searches              BIGINT  NOT NULL,
    add_to_carts          BIGINT  NOT NULL,
    remove_from_carts     BIGINT  NOT NULL,
    purchases             BIGINT  NOT NULL,
    active_users          BIGINT  NOT NULL,
    active_sessions       BIGINT  NOT NULL,
    sessions_viewed       BIGINT  NOT NULL,  -- funnel: sessions with a page_view
    sessions_carted       BIGINT  NOT NULL,  -- ... and an add_to_cart
    sessions_purchased    BIGINT  NOT NULL,  -- ... and a purchase
    conversion_rate       DOUBLE PRECISION NOT NULL,  -- purchased / viewed sessions
    revenue               NUMERIC(14, 2) NOT NULL,
    units                 BIGINT  NOT NULL,
    avg_order_value       NUMERIC(14, 2) NOT NULL,
    cart_abandonment_rate DOUBLE PRECISION NOT NULL,  -- carted sessions without purchase / carted
    computed_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE report_ecommerce_category_minute (
    window_start TIMESTAMPTZ  NOT NULL,
    category     VARCHAR(200) NOT NULL,
    revenue      NUMERIC(14, 2) NOT NULL,
    units        BIGINT NOT NULL,
    orders       BIGINT NOT NULL,
    PRIMARY KEY (window_start, category)
);

CREATE TABLE report_ecommerce_product_minute (
    window_start TIMESTAMPTZ  NOT NULL,
    product_id   VARCHAR(200) NOT NULL,
    product_name VARCHAR(200) NOT NULL,
    category     VARCHAR(200) NOT NULL,
    revenue      NUMERIC(14, 2) NOT NULL,
    units        BIGINT NOT NULL,
    orders       BIGINT NOT NULL,
    PRIMARY KEY (window_start, product_id)
);

CREATE TABLE report_restaurant_overview_minute (
    window_start TIMESTAMPTZ PRIMARY KEY,
    orders       BIGINT NOT NULL,
    items_sold   BIGINT NOT NULL,
    revenue      NUMERIC(14, 2) NOT NULL,
    avg_ticket   NUMERIC(14, 2) NOT NULL,
    computed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE report_restaurant_item_minute (
    window_start TIMESTAMPTZ  NOT NULL,
    item_id      VARCHAR(200) NOT NULL,
    name         VARCHAR(200) NOT NULL,
    category     VARCHAR(200) NOT NULL,
    quantity     BIGINT NOT NULL,
    revenue      NUMERIC(14, 2) NOT NULL,
    orders       BIGINT NOT NULL,
    PRIMARY KEY (window_start, item_id)
);

CREATE TABLE report_restaurant_category_minute (
    window_start TIMESTAMPTZ  NOT NULL,
    category     VARCHAR(200) NOT NULL,
    quantity     BIGINT NOT NULL,
    revenue      NUMERIC(14, 2) NOT NULL,
    orders       BIGINT NOT NULL,
    PRIMARY KEY (window_start, category)
);

CREATE TABLE report_restaurant_channel_minute (
    window_start TIMESTAMPTZ NOT NULL,
    channel      VARCHAR(16) NOT NULL,
    orders       BIGINT NOT NULL,
    revenue      NUMERIC(14, 2) NOT NULL,
    avg_ticket   NUMERIC(14, 2) NOT NULL,
    PRIMARY KEY (window_start, channel)
);

-- Pipeline observations written by Dagster sensors, shown by the dashboard.
CREATE TABLE pipeline_observations (
    observed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    topic          VARCHAR(249) NOT NULL,
    high_watermark BIGINT NOT NULL,
    committed      BIGINT NOT NULL,
    lag            BIGINT NOT NULL,
    messages_per_s DOUBLE PRECISION,
    PRIMARY KEY (topic, observed_at)
);
CREATE INDEX idx_pipeline_observations_observed_at ON pipeline_observations (observed_at);

CREATE TABLE pipeline_runs (
    run_id      VARCHAR(64) PRIMARY KEY,
    job_name    VARCHAR(200) NOT NULL,
    status      VARCHAR(32)  NOT NULL,
    partition   VARCHAR(100),
    message     TEXT,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_pipeline_runs_recorded_at ON pipeline_runs (recorded_at);

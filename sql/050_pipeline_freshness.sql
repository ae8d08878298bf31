-- Report freshness and run-queue health as last seen by reports_current_sensor
-- (every minute, in the Dagster daemon, outside the run queue). The dashboard
-- shows them on its pipeline page: it reads the app database only, never the
-- Dagster database, so the sensor records here what it found there.

-- One row per report domain, replaced at each evaluation.
CREATE TABLE pipeline_report_freshness (
    domain            VARCHAR(32) PRIMARY KEY,
    observed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    newest_raw_minute TIMESTAMPTZ,          -- NULL: no raw rows yet
    newest_window     TIMESTAMPTZ,          -- NULL: no report window yet
    minutes_behind    DOUBLE PRECISION,     -- NULL: raw rows but no report window at all
    target_minutes    INTEGER NOT NULL,
    stale             BOOLEAN NOT NULL
);

-- The Dagster run queue: a single row, replaced at each evaluation.
CREATE TABLE pipeline_run_queue (
    singleton             BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    observed_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    in_flight             INTEGER NOT NULL,
    queued                INTEGER NOT NULL,
    oldest_queued_seconds DOUBLE PRECISION,
    -- runs in flight that logged nothing for the stall limit: [{run_id, job_name, status, partition, idle_seconds}]
    stalled               JSONB NOT NULL DEFAULT '[]',
    blocked               BOOLEAN NOT NULL  -- runs are queued behind stalled runs
);

GRANT SELECT, INSERT, UPDATE, DELETE ON pipeline_report_freshness, pipeline_run_queue TO salespulse_analytics;
GRANT SELECT ON pipeline_report_freshness, pipeline_run_queue TO salespulse_dashboard;

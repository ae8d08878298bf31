-- Outcomes of the minute reconciliation and alert checks (orchestration/checks_reconcile.py,
-- orchestration/alerts.py), written by the checks themselves as the analytics role,
-- and the webhook notifications they sent. The dashboard's pipeline page reads
-- pipeline_check_results (it reads the app database only, never Dagster's).

-- One row per evaluation of a check on an asset. `windows` lists the offending
-- windows of a failing evaluation: [{"start": ..., "end": ..., <figures>}].
CREATE TABLE pipeline_check_results (
    id           BIGSERIAL PRIMARY KEY,
    check_name   VARCHAR(100) NOT NULL,
    asset        VARCHAR(200) NOT NULL,
    passed       BOOLEAN      NOT NULL,
    severity     VARCHAR(8)   NOT NULL CHECK (severity IN ('ERROR', 'WARN')),
    description  TEXT         NOT NULL,
    windows      JSONB        NOT NULL DEFAULT '[]',
    details      JSONB        NOT NULL DEFAULT '{}',
    run_id       VARCHAR(64),
    evaluated_at TIMESTAMPTZ  NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX idx_pipeline_check_results_latest ON pipeline_check_results (check_name, asset, evaluated_at DESC);
CREATE INDEX idx_pipeline_check_results_evaluated_at ON pipeline_check_results (evaluated_at);

-- One row per (check, asset, failing window) notified: the claim is taken
-- before the POST, so the same window is never sent twice; a window whose POST
-- failed (status 'failed') is tried again at the next evaluation.
CREATE TABLE pipeline_alert_notifications (
    check_name   VARCHAR(100) NOT NULL,
    asset        VARCHAR(200) NOT NULL,
    window_key   VARCHAR(100) NOT NULL,
    status       VARCHAR(8)   NOT NULL CHECK (status IN ('sending', 'sent', 'failed')),
    attempts     INTEGER      NOT NULL DEFAULT 0,
    http_status  INTEGER,
    error        TEXT,
    payload      JSONB        NOT NULL,
    first_at     TIMESTAMPTZ  NOT NULL DEFAULT clock_timestamp(),
    sent_at      TIMESTAMPTZ,
    PRIMARY KEY (check_name, asset, window_key)
);

-- (The ledger reconciliation finds recent consumer rows by ingested_at through
-- the BRIN indexes of sql/060.)

GRANT SELECT, INSERT, UPDATE, DELETE ON pipeline_check_results, pipeline_alert_notifications TO salespulse_analytics;
GRANT USAGE ON SEQUENCE pipeline_check_results_id_seq TO salespulse_analytics;
GRANT SELECT ON pipeline_check_results, pipeline_alert_notifications TO salespulse_dashboard;

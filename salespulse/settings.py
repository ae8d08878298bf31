"""Settings for every SalesPulse service: one place, read from the environment.

Every service (producer, consumer, Dagster code, dashboard, stack runner, tests)
reads its configuration through :func:`get_settings`. Defaults are the local
embedded stack's; production sets the same variables (see ``.env.example``).

Database roles (least privilege): the admin URL (``DATABASE_URL``) is only used
for migrations and operations. Each service connects as its own role; when the
role URL is not given explicitly it is derived from ``DATABASE_URL`` by
swapping in the role's user name and password.
"""

from __future__ import annotations

import functools
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The local stack's embedded PostgreSQL: its admin account (a published
#: password, on 127.0.0.1 only) and default URL.
LOCAL_ADMIN_USER = LOCAL_ADMIN_PASSWORD = "salespulse"
LOCAL_DATABASE_URL = f"postgresql://{LOCAL_ADMIN_USER}:{LOCAL_ADMIN_PASSWORD}@127.0.0.1:55432/salespulse"
DEFAULT_STATE_DIR = Path("/var/tmp/salespulse")

#: The /health + /metrics port of each stream service by default (each has its
#: own setting below; ``METRICS_PORT`` overrides it for one process).
DEFAULT_METRICS_PORTS = {"producer-ecommerce": 9101, "producer-restaurant": 9102, "consumer": 9103, "broker": 9104}

#: Database roles per service: role name and the variable holding its password.
ROLE_INGEST = "salespulse_ingest"
ROLE_ANALYTICS = "salespulse_analytics"
ROLE_DASHBOARD = "salespulse_dashboard"
#: The service roles' passwords on the local stack's embedded PostgreSQL only
#: (published here, so never used elsewhere: Settings.role_password).
LOCAL_ROLE_PASSWORDS = {ROLE_INGEST: "ingest-local", ROLE_ANALYTICS: "analytics-local",
                        ROLE_DASHBOARD: "dashboard-local"}
#: The variable holding each role's password.
ROLE_PASSWORD_VARIABLES = {ROLE_INGEST: "INGEST_DB_PASSWORD", ROLE_ANALYTICS: "ANALYTICS_DB_PASSWORD",
                           ROLE_DASHBOARD: "DASHBOARD_DB_PASSWORD"}


class SecretError(RuntimeError):
    """A secret is missing where no local default may stand in for it."""


class Settings(BaseSettings):
    """All environment-driven configuration. Field name == env var (upper-cased)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- connections -------------------------------------------------------
    database_url: str = LOCAL_DATABASE_URL
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # replicas of every topic ``salespulse topics`` creates, and how many must
    # have a write before an acks=all producer is answered (min.insync.replicas):
    # 1/1 for the local single broker, 3/2 for compose's three-node cluster
    topic_replication_factor: int = Field(1, ge=1)
    topic_min_insync_replicas: int = Field(1, ge=1)
    spark_remote: str = "sc://127.0.0.1:15002"
    dagster_home: str | None = None

    # --- per-role database credentials (least privilege) -------------------
    # unset: the local defaults, on the local stack's embedded PostgreSQL only
    # (role_password); anywhere else a role without its password is an error
    ingest_db_password: str | None = None
    analytics_db_password: str | None = None
    dashboard_db_password: str | None = None
    ingest_database_url: str | None = None
    analytics_database_url: str | None = None
    dashboard_database_url: str | None = None

    # --- local embedded stack ---------------------------------------------
    salespulse_state_dir: Path = DEFAULT_STATE_DIR
    embedded_pg_port: int = 55432
    embedded_broker_port: int = 9092
    dagster_port: int = 3000
    producer_ecommerce_metrics_port: int = DEFAULT_METRICS_PORTS["producer-ecommerce"]
    producer_restaurant_metrics_port: int = DEFAULT_METRICS_PORTS["producer-restaurant"]
    consumer_metrics_port: int = DEFAULT_METRICS_PORTS["consumer"]
    broker_metrics_port: int = DEFAULT_METRICS_PORTS["broker"]  # the embedded broker's wrapper
    # the embedded broker is restarted empty (producers paused, the consumer
    # drained first: salespulse/broker_rotation.py) once it holds this many
    # messages (0 = never); its memory and CPU grow with what it holds
    broker_rotate_messages: int = Field(25_000, ge=0)
    broker_rotate_check_s: float = Field(15.0, gt=0)  # how often the held messages are counted
    # a rotation is given up (nothing lost, tried again at the next check) if the
    # producers have not paused and the consumer has not committed the end by then
    broker_rotate_timeout_s: float = Field(30.0, gt=0, le=600)
    spark_connect_port: int = 15002
    spark_master: str = "local[2]"
    # the Spark Connect server drops a session idle this long (a client killed before it released it)
    spark_connect_idle_session_minutes: int = Field(10, ge=1, le=1440)
    jdbc_jar: str = "/usr/share/java/postgresql.jar"
    java_home: str = "/usr/lib/jvm/java-17-openjdk-amd64"

    # --- stream services ---------------------------------------------------
    consumer_group: str = "salespulse-ingest"
    consumer_batch_size: int = Field(100, ge=1)
    # a batch is also written once its messages hold this many key + value
    # bytes (memory bound whatever the message sizes; librdkafka's prefetch is
    # bounded too: salespulse/kafka.py consumer_config)
    consumer_batch_max_bytes: int = Field(16 << 20, ge=1)
    consumer_batch_max_wait_ms: int = Field(500, ge=1)
    # write the batch once the stream pauses this long (0 = wait for size/max wait)
    consumer_batch_linger_ms: int = Field(10, ge=0)
    # librdkafka fetch.wait.max.ms: the longest the broker may hold a fetch (see services/consumer/app.py)
    consumer_fetch_wait_ms: int = Field(100, ge=1, le=10_000)
    metrics_port: int | None = None  # per process; None = the service's own port (service_metrics_port)
    log_level: str = "INFO"  # the consumer's default --log-level
    # on SIGTERM keep consuming up to this long while lag > 0 (the local stack's
    # broker keeps messages in memory only; 0 = finish the batch and stop)
    consumer_drain_on_stop_s: float = Field(0.0, ge=0)
    # accepted event-time window: not later than now + this, not earlier than that
    event_max_future_seconds: int = Field(300, ge=0)
    event_earliest: datetime = datetime(2000, 1, 1, tzinfo=timezone.utc)
    # raw rows are kept this many days (0 = keep everything): the hourly
    # raw_partitions_job drops older month partitions once their reports exist,
    # and the consumer dead-letters events older than this (their month may be
    # gone); see salespulse/partitions.py
    raw_retention_days: int = Field(0, ge=0, le=36_500)

    # --- bounded stores (orchestration/retention.py store_retention_job, every 10 min;
    # salespulse/bounded_stores.py). Retention windows are floats in days, so a
    # soak can scale them down (0.01 = 14.4 min) through the same code path.
    # dead letters keep at most this many payload bytes (with the full size and
    # SHA-256 of the whole payload; 0 = keep none)
    dead_letter_payload_max_bytes: int = Field(64 * 1024, ge=0)
    # dead letters older than this are deleted (never those the hourly checks
    # and the ledger reconciliation still read: see bounded_stores.py)
    dead_letter_retention_days: float = Field(30.0, gt=0)
    # dead letters' total size: the oldest are deleted first beyond this
    dead_letter_max_mb: float = Field(256.0, gt=0)
    # pipeline records that grow with time, not data (report refreshes and
    # restatements, check results and alert claims, lag observations,
    # pipeline_runs, raw_partition_drops): kept this long, except what a rule
    # still reads (the newest row per check/topic/table)
    ops_history_retention_days: float = Field(30.0, gt=0)
    # ingest ledger (sql/130, salespulse/ledger.py): ranges recorded more than
    # this many minutes ago are merged per stream and hour where contiguous
    # (ledger_reconciles matches raw rows to their batch's range for
    # RECONCILE_MINUTES + 10 before that; it looks no further back)
    ledger_rollup_minutes: float = Field(120.0, gt=0)
    # ... and deleted after this many days (or with the raw history
    # RAW_RETENTION_DAYS drops, if sooner), a contiguous prefix per stream at a
    # time, into the stream's trimmed range (offsets and counts kept, so the
    # audit still accounts for every offset); rolled up, a month costs about
    # 100 bytes per stream and hour
    ledger_retention_days: float = Field(30.0, gt=0)
    # Dagster's runs with their event logs and compute logs (store_retention_job's
    # trim_dagster_storage, salespulse/dagster_retention.py): successful runs are
    # deleted this many days after they ended, failed and canceled ones after the
    # second setting; every partition they materialized stays materialized
    dagster_run_retention_days: float = Field(7.0, gt=0)
    dagster_failed_run_retention_days: float = Field(30.0, gt=0)
    # ... at most this many runs deleted per call (every 10 minutes): a first run
    # against a long history catches up over several calls
    dagster_retention_max_runs: int = Field(3000, ge=1)
    # first hourly partition of the report assets (ISO datetime, floored to the
    # hour, UTC when naive); unset: the hour of the first data the stack holds
    # (raw rows or report windows), read when the code location loads
    # (orchestration/assets/partitions.py)
    report_partitions_start: datetime | None = None

    @field_validator("report_partitions_start", mode="before")
    @classmethod
    def _partitions_start(cls, value):
        """Empty means unset (compose passes ``${REPORT_PARTITIONS_START:-}``)."""
        return None if isinstance(value, str) and not value.strip() else value

    # --- Dagster checks and sensors -----------------------------------------
    # dead_letter_rate: at most this share of the last hour's messages may be dead letters
    dead_letter_max_rate: float = 0.05
    # new_data_sensor: rows whose ingested_at is up to this much older than the
    # start of the oldest ingest transaction still open at its last tick are
    # scanned again (clock steps, a default evaluated before the transaction
    # id; see orchestration/sensors/late_rows.py); the same margin bounds the
    # incremental integrity checks (orchestration/increments.py)
    late_rows_margin_seconds: int = Field(60, ge=0)

    # --- reconciliation and alert checks (every minute) ----------------------
    # minutes (before now) that reports_reconcile / ledger_reconciles look back
    reconcile_minutes: int = Field(60, ge=5, le=1440)
    # ... a minute whose report has not caught up with its raw rows fails after this long
    reconcile_pending_minutes: int = Field(5, ge=1, le=60)
    # revenue_drop fires when a window's revenue is below (1 - this) x its baseline
    alert_revenue_drop: float = Field(0.5, gt=0, le=1)
    # revenue_drop compares windows of this many minutes (the newest complete one)
    alert_revenue_window_minutes: int = Field(5, ge=1, le=60)
    # revenue_drop's baseline: the same window on up to this many previous days
    alert_history_days: int = Field(7, ge=1, le=60)
    # funnel_break fires when more cart-less purchases / removals than this are seen
    alert_funnel_max_broken: int = Field(0, ge=0)
    # failing alert windows are POSTed here as JSON (unset or empty: no notification)
    alert_webhook_url: str | None = None
    alert_webhook_timeout_s: float = Field(5.0, gt=0, le=60)
    alert_webhook_attempts: int = Field(3, ge=1, le=10)

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        """Empty means unset (compose passes ``${ALERT_WEBHOOK_URL:-}``); else an http(s) URL."""
        if not value or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"ALERT_WEBHOOK_URL must be an http:// or https:// URL, got {value!r}")
        return value.strip()

    # --- freshness: the one rule (salespulse/freshness.py) behind /api/pipeline/freshness,
    # the pipeline page's notice, the charts' data age, `salespulse status`, the
    # reports_fresh / reports_current Dagster checks, freshness_sensor, the report
    # assets' Dagster freshness policy and kafka_lag_sensor's flag
    freshness_rows_target_s: float = Field(5.0, gt=0)  # p95 event time -> row visible, last minute
    # newest report window behind the newest event: the minute schedule's tick,
    # the run queue and one run (a refresh lands every minute, so 3 minutes)
    freshness_reports_target_s: float = Field(180.0, gt=0)
    # consumer lag of the domain's topic: 5 s of ingest at the default rates,
    # the rows target's worth (kafka_lag_sensor flags a topic above it too)
    freshness_lag_target_messages: int = Field(1000, ge=0)
    # ok up to the target, late up to target x this factor, stale beyond
    freshness_stale_factor: float = Field(3.0, ge=1)
    # a row stamped more than this before it was stored is late data: left out of the latency
    freshness_late_event_s: float = Field(60.0, gt=0)

    # --- dashboard ---------------------------------------------------------
    dashboard_port: int = 5000
    dashboard_token: str | None = None
    # "token": every API request needs DASHBOARD_TOKEN (the dashboard refuses to
    # start without one); "none": open. Unset: "token" when a token is set.
    dashboard_auth: Literal["token", "none"] | None = None
    dashboard_rate_limit: str = "600/minute"
    # wrong tokens per client address (login form, bearer header, stale cookie)
    dashboard_auth_fail_limit: str = "10/minute"
    # the limiter's counters: memory = per process; redis://... = shared by every worker and replica
    dashboard_rate_limit_storage: str = "salespulse-memory://"
    cors_origins: str = ""  # comma-separated allow-list
    dagster_ui_url: str = "http://127.0.0.1:3000"
    dashboard_pool_size: int = Field(8, ge=1)  # max DB connections per dashboard process
    dashboard_cache_ttl: float = Field(2.0, ge=0)  # seconds an API answer is reused (0 = off)

    # --- derived -----------------------------------------------------------
    def role_url(self, role: str) -> str:
        """Connection URL for one of the service roles (explicit URL wins)."""
        explicit = {
            ROLE_INGEST: self.ingest_database_url,
            ROLE_ANALYTICS: self.analytics_database_url,
            ROLE_DASHBOARD: self.dashboard_database_url,
        }[role]
        if explicit:
            return explicit
        return with_credentials(self.database_url, role, self.role_password(role))

    def role_password(self, role: str) -> str:
        """The role's password from the environment; unset, the published local
        default, but only on the local stack's embedded PostgreSQL
        (:meth:`on_local_stack_database`). Elsewhere :class:`SecretError`: a
        ``salespulse migrate`` or ``reset-db`` pointed at another database
        must never set its roles' passwords to values published here."""
        value = {
            ROLE_INGEST: self.ingest_db_password,
            ROLE_ANALYTICS: self.analytics_db_password,
            ROLE_DASHBOARD: self.dashboard_db_password,
        }[role]
        if value:
            return value
        if self.on_local_stack_database():
            return LOCAL_ROLE_PASSWORDS[role]
        raise SecretError(
            f"{ROLE_PASSWORD_VARIABLES[role]} is not set: the {role} role's password must be given for this "
            f"database (local defaults apply only to the local stack's embedded PostgreSQL on 127.0.0.1)")

    def role_passwords(self) -> dict[str, str]:
        """Every service role's password (raises :class:`SecretError` first if one is missing)."""
        return {role: self.role_password(role) for role in LOCAL_ROLE_PASSWORDS}

    def on_local_stack_database(self) -> bool:
        """Whether ``DATABASE_URL`` is an embedded cluster of the local stack (or
        of the tests): on 127.0.0.1/localhost, with the embedded cluster's own
        published admin account. A server with that account and password is
        open to anyone who read this repository anyway; any other server (a
        real admin password, another host) gets no published default."""
        parts = urlsplit(self.database_url)
        return (parts.hostname in ("127.0.0.1", "localhost", "::1") and parts.username == LOCAL_ADMIN_USER
                and parts.password == LOCAL_ADMIN_PASSWORD)

    def service_metrics_port(self, service: str) -> int:
        """The /health + /metrics port of a stream service (a key of
        ``DEFAULT_METRICS_PORTS``): ``METRICS_PORT`` if set (one process; 0 =
        any free port), else the service's own setting."""
        if self.metrics_port is not None:
            return self.metrics_port
        return {
            "producer-ecommerce": self.producer_ecommerce_metrics_port,
            "producer-restaurant": self.producer_restaurant_metrics_port,
            "consumer": self.consumer_metrics_port,
            "broker": self.broker_metrics_port,
        }[service]

    @property
    def dagster_home_path(self) -> Path:
        return Path(self.dagster_home) if self.dagster_home else self.salespulse_state_dir / "dagster"


def with_credentials(url: str, user: str, password: str) -> str:
    """Return ``url`` with its user and password replaced."""
    from sqlalchemy.engine import make_url  # imported here: ~0.1 s most readers of the settings never need

    return make_url(url).set(username=user, password=password).render_as_string(hide_password=False)


def set_in_environment(field: str) -> bool:
    """Whether the environment gives the variable of the :class:`Settings`
    field ``field`` a non-empty value, now. The Dagster code location takes such
    a variable as an ``EnvVar`` (resolved when a run uses it, never shown in
    the UI) and leaves the others to the settings defaults."""
    if field not in Settings.model_fields:
        raise KeyError(f"{field!r} is not a Settings field")
    return bool(os.environ.get(field.upper()))


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests call ``get_settings.cache_clear()``)."""
    return Settings()

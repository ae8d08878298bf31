"""Dagster resources: PostgreSQL (analytics role), Spark Connect and Kafka.

Each is a ``ConfigurableResource``; ``orchestration.definitions`` configures
them from environment variables (``EnvVar``) when those are set, and every
field left unset falls back to :func:`salespulse.settings.get_settings` (the
local embedded stack's defaults), read when the resource is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar, Optional

import psycopg2.extensions
from dagster import ConfigurableResource, EnvVar

from salespulse.db import connect
from salespulse.settings import ROLE_ANALYTICS, Settings, get_settings


class PostgresResource(ConfigurableResource):
    """PostgreSQL as the analytics role (read raw, write reports, refresh views).

    ``database_url`` is the admin URL (``DATABASE_URL``), used only to derive the
    analytics role URL unless ``analytics_database_url`` is given explicitly.
    """

    database_url: Optional[str] = None
    analytics_database_url: Optional[str] = None

    #: Fixed where the resource is defined (the environment, through ``EnvVar``):
    #: run config may not change them, or a run could send the analytics role's
    #: password (swapped into ``database_url``) to any host it names.
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("database_url", "analytics_database_url")

    def _with_updated_values(self, values):
        """Dagster builds the resource a run uses from its run config here; a run
        config that names another URL than the definition's is refused (None,
        which a run config naming other fields gives the rest, means the
        environment's: see :meth:`settings`)."""
        for name in self.FIXED_FIELDS:
            given = (values or {}).get(name)
            if given is not None and given != _resolved(getattr(self, name)):
                raise ValueError(f"run config may not set the postgres resource's {name}: it comes from the "
                                 "code location's environment only")
        return super()._with_updated_values(values)

    def settings(self) -> Settings:
        """The process settings with this resource's URLs applied."""
        overrides = {
            name: value
            for name, value in (
                ("database_url", self.database_url),
                ("analytics_database_url", self.analytics_database_url),
            )
            if value
        }
        return get_settings().model_copy(update=overrides)

    @property
    def analytics_url(self) -> str:
        return self.settings().role_url(ROLE_ANALYTICS)

    @contextlib.contextmanager
    def connection(self, autocommit: bool = False) -> Iterator[psycopg2.extensions.connection]:
        """A connection as the analytics role; committed on success, closed always."""
        conn = connect(self.analytics_url, attempts=3)
        conn.autocommit = autocommit
        try:
            yield conn
            if not autocommit:
                conn.commit()
        except BaseException:
            if not autocommit:
                conn.rollback()
            raise
        finally:
            conn.close()

    def query(self, sql: str, params: tuple | dict | None = None) -> list[tuple]:
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()


def _resolved(value):
    """A field's value as run config would carry it (an ``EnvVar`` resolved)."""
    return value.get_value() if isinstance(value, EnvVar) else value


class SparkResource(ConfigurableResource):
    """A Spark Connect session (``SPARK_REMOTE``, e.g. ``sc://127.0.0.1:15002``)."""

    remote: Optional[str] = None

    def session(self):
        # imported lazily: loading the code location must not import pyspark
        from orchestration.reports import spark_session

        return spark_session(self.remote or get_settings().spark_remote)


class KafkaResource(ConfigurableResource):
    """The Kafka cluster (``KAFKA_BOOTSTRAP_SERVERS``) and the ingestion group.

    ``consumer_group`` is only used to *read* the ingestion group's committed
    offsets; watermarks come from a short-lived observer consumer that never
    joins a group or commits.
    """

    bootstrap_servers: Optional[str] = None
    consumer_group: Optional[str] = None
    #: lag above this is flagged; unset: ``FRESHNESS_LAG_TARGET_MESSAGES`` (the freshness rule's lag target)
    lag_threshold: Optional[int] = None

    @property
    def lag_limit(self) -> int:
        return self.lag_threshold if self.lag_threshold is not None else get_settings().freshness_lag_target_messages

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or get_settings().kafka_bootstrap_servers

    @property
    def group(self) -> str:
        return self.consumer_group or get_settings().consumer_group

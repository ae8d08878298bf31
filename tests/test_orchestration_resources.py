"""Run config cannot point the PostgreSQL resource at another database.

The code location builds its resources from the environment
(orchestration/definitions.py ``build_resources``: ``EnvVar``). Dagster lets a
run's config override any resource field, and the launchpad of the Dagster UI
takes run config: a run naming another ``database_url`` would get the analytics
role's password swapped into it and sent to that host. The resource refuses a
run config that changes its URLs (orchestration/resources.py); here a real run
on a real database, with and without such an override.
"""

from __future__ import annotations

import pytest
from dagster import asset, materialize

from orchestration.definitions import build_resources
from orchestration.resources import PostgresResource


@asset
def who_am_i(postgres: PostgresResource) -> str:
    return postgres.query("SELECT current_user")[0][0]


def messages(error) -> str:
    """An error's message and its causes'."""
    out = []
    while error is not None:
        out.append(error.message)
        error = error.cause
    return "".join(out)


def test_run_config_cannot_redirect_the_postgres_resource(database_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    resources = build_resources()  # as the code location builds them: EnvVar("DATABASE_URL")

    ok = materialize([who_am_i], resources=resources)
    assert ok.success and ok.output_for_node("who_am_i") == "salespulse_analytics"
    # the definition's own value, given again, is fine
    same = materialize([who_am_i], resources=resources,
                       run_config={"resources": {"postgres": {"config": {"database_url": database_url}}}})
    assert same.success

    for field, url in (("database_url", "postgresql://attacker.example:5432/loot"),
                       ("analytics_database_url", "postgresql://salespulse_analytics:x@attacker.example/loot")):
        redirected = materialize([who_am_i], resources=resources, raise_on_error=False,
                                 run_config={"resources": {"postgres": {"config": {field: url}}}})
        assert not redirected.success, field
        failure = next(e for e in redirected.all_events if e.is_failure)
        assert "run config may not set the postgres resource's " + field in messages(failure.event_specific_data.error)
        assert not [e for e in redirected.all_events if e.is_successful_output], field

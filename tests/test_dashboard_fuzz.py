"""OpenAPI-driven fuzzing of every dashboard endpoint (schemathesis + hypothesis)
over a seeded real PostgreSQL: no input may produce a 5xx, every answer is JSON."""

from __future__ import annotations

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from hypothesis import HealthCheck, given, settings, strategies as st
import pytest

from dashboard import create_app
from dashboard.api import ENDPOINTS
from dashboard.openapi import build_document
from salespulse.settings import Settings
from tests.support.dashboard_seed import seed_all

# how many examples: the Hypothesis profile of the tier (tests/conftest.py); not
# marked `property`, so only the fast tier runs them (the thorough profile's count,
# once per operation, would take about an hour)
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck))


def make_app(url):
    return create_app(Settings(database_url=url, dashboard_cache_ttl=0, dashboard_rate_limit="1000000/minute",
                               dashboard_token=None, cors_origins=""))


# The document is static (built from the endpoint table), so the schema is
# loaded at import time and the seeded app is given to each call.
schema = schemathesis.openapi.from_dict(build_document())


# read-only: one seeded database for the module (the fuzz only sends GET/HEAD/OPTIONS)
@pytest.fixture(scope="module")
def fuzz_app(module_database_url):
    seed_all(module_database_url)
    app = make_app(module_database_url)
    yield app
    app.extensions["salespulse"]["db"].close()


def test_served_document_is_the_fuzzed_one(fuzz_app):
    assert fuzz_app.test_client().get("/api/openapi.json").get_json() == build_document()


@schema.parametrize()
@FUZZ
def test_openapi_fuzz_no_server_errors(case, fuzz_app):
    # Every built-in check runs (no 5xx, documented status codes, content type,
    # response schema, negative data rejected) except "schema-valid data must be
    # accepted": cross-parameter rules (`to` after `from`, at most 31 days, bucket
    # count) are not expressible in OpenAPI and rightly give a 400.
    response = case.call_and_validate(app=fuzz_app, excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500
    if case.method.upper() == "GET":  # OPTIONS/HEAD probes get empty bodies
        assert response.text and isinstance(response.json(), dict), (case.method, case.path, response.status_code)


# Arbitrary text (not just schema-shaped values) for every declared parameter.
junk = st.one_of(st.text(max_size=40), st.sampled_from(
    ["", " ", "-1", "0", "1e309", "NaN", "9" * 40, "2024-13-45", "2024-01-01T00:00:00+25:00", "1h;--", "'", '"', "%00",
     "\u0000", "\ud7ff", "all", "7d", "1m", "9999-12-31T23:59:59", "0001-01-01", "Europe/Lisbon"]))


@pytest.fixture(scope="module")
def app_client(fuzz_app):
    return fuzz_app.test_client()


def test_hypothesis_junk_parameters_never_5xx(app_client):
    names = sorted({f.alias or n for ep in ENDPOINTS for n, f in ep.params.model_fields.items()} | {"unknown"})

    @FUZZ
    @given(path=st.sampled_from([ep.path for ep in ENDPOINTS]),
           query=st.dictionaries(st.sampled_from(names), junk, max_size=4))
    def check(path, query):
        resp = app_client.get(path, query_string=query)
        assert resp.status_code in (200, 400), (path, query, resp.get_data(as_text=True))
        assert resp.is_json
        if resp.status_code == 400:
            assert resp.get_json()["parameter"] in names

    check()

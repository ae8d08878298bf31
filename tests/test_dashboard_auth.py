"""Dashboard access control against a real PostgreSQL and a real Redis:
token only in a header or the login cookie, failed attempts rate-limited,
counters shared between processes, closed unless opened explicitly."""

from __future__ import annotations

import pytest

from dashboard import create_app
from dashboard.auth import COOKIE
from salespulse.settings import Settings
from tests.support.redis_fixtures import redis_server  # noqa: F401  (fixture)

TOKEN = "a-long-random-dashboard-token"
API = "/api/metrics/summary"


def make_settings(url: str, **kw) -> Settings:
    base = {"database_url": url, "dashboard_cache_ttl": 0, "dashboard_rate_limit": "100000/minute",
            "dashboard_token": TOKEN, "cors_origins": ""}
    base.update(kw)
    return Settings(**base)


def client_of(app, addr: str = "10.0.0.1"):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = addr
    return client


@pytest.fixture
def app(database_url):
    app = create_app(make_settings(database_url))
    yield app
    app.extensions["salespulse"]["db"].close()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_token_only_in_a_header_never_in_the_url(app):
    c = client_of(app)
    assert c.get(API).status_code == 401
    assert c.get(API, query_string={"token": TOKEN}).status_code == 401
    assert c.get(API, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert c.get(API, headers=bearer(TOKEN)).status_code == 200
    assert c.get("/api/pipeline/status", headers=bearer(TOKEN)).status_code == 200
    assert c.get("/health").status_code == 200


def test_login_page_sets_a_signed_cookie_that_opens_the_api(app):
    c = client_of(app)
    page = c.get("/login?next=/pipeline")
    assert page.status_code == 200 and b'name="token"' in page.data and b'type="password"' in page.data
    wrong = c.post("/login", data={"token": "nope", "next": "/pipeline"})
    assert wrong.status_code == 401 and b"Wrong access token" in wrong.data
    assert c.get_cookie(COOKIE) is None
    ok = c.post("/login", data={"token": TOKEN, "next": "/pipeline"})
    assert ok.status_code == 303 and ok.headers["Location"] == "/pipeline"
    set_cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    cookie = c.get_cookie(COOKIE)
    assert TOKEN not in cookie.value  # a signature, not the token
    assert c.get(API).status_code == 200
    # a forged or tampered cookie is refused
    c.set_cookie(COOKIE, cookie.value[:-2] + "xx")
    assert c.get(API).status_code == 401
    c.set_cookie(COOKIE, cookie.value)
    assert c.get(API).status_code == 200
    out = c.post("/logout")
    assert out.status_code == 303 and c.get_cookie(COOKIE) is None
    assert c.get(API).status_code == 401


def test_a_changed_token_signs_everybody_out(database_url):
    first = create_app(make_settings(database_url))
    second = create_app(make_settings(database_url, dashboard_token="another-token"))
    try:
        c = client_of(first)
        c.post("/login", data={"token": TOKEN})
        cookie = c.get_cookie(COOKIE).value
        other = client_of(second)
        other.set_cookie(COOKIE, cookie)
        assert other.get(API).status_code == 401
    finally:
        first.extensions["salespulse"]["db"].close()
        second.extensions["salespulse"]["db"].close()


def test_login_redirects_only_within_the_site(app):
    c = client_of(app)
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "pipeline"):
        resp = c.post("/login", data={"token": TOKEN, "next": target})
        assert resp.status_code == 303 and resp.headers["Location"] == "/", target


def test_failed_attempts_are_rate_limited_per_address(database_url):
    app = create_app(make_settings(database_url, dashboard_auth_fail_limit="3/minute"))
    try:
        attacker, user = client_of(app, "10.0.0.66"), client_of(app, "10.0.0.7")
        for _ in range(5):  # no credentials at all: 401, never counted
            assert attacker.get(API).status_code == 401
        assert attacker.post("/login", data={"token": "guess-1"}).status_code == 401
        assert attacker.get(API, headers=bearer("guess-2")).status_code == 401
        attacker.set_cookie(COOKIE, "forged")
        assert attacker.get(API).status_code == 401
        attacker.delete_cookie(COOKIE)
        # the budget is spent: further failures from that address are refused ...
        assert attacker.get(API, headers=bearer("guess-3")).status_code == 429
        assert attacker.post("/login", data={"token": "guess-4"}).status_code == 429
        # ... but never the right token (docs/security.md#failed-sign-ins)
        assert attacker.get(API, headers=bearer(TOKEN)).status_code == 200
        assert attacker.post("/login", data={"token": TOKEN}).status_code == 303
        assert user.get(API, headers=bearer(TOKEN)).status_code == 200
    finally:
        app.extensions["salespulse"]["db"].close()


def test_counters_are_shared_through_redis(database_url, redis_server):
    """Two apps stand for two gunicorn workers (or replicas): one budget."""
    redis_server.client().flushall()
    settings = make_settings(database_url, dashboard_rate_limit="4/minute", dashboard_auth_fail_limit="2/minute",
                             dashboard_rate_limit_storage=redis_server.url)
    one, two = create_app(settings), create_app(settings)
    try:
        a, b = client_of(one, "10.1.0.1"), client_of(two, "10.1.0.1")
        assert a.get(API, headers=bearer(TOKEN)).status_code == 200
        assert b.get(API, headers=bearer(TOKEN)).status_code == 200
        assert a.get(API, headers=bearer(TOKEN)).status_code == 200
        assert b.get(API, headers=bearer(TOKEN)).status_code == 200
        assert a.get(API, headers=bearer(TOKEN)).status_code == 429  # 4/minute across both
        # failed sign-ins: one on each worker spends the shared budget of 2
        x, y = client_of(one, "10.1.0.2"), client_of(two, "10.1.0.2")
        assert x.get(API, headers=bearer("bad")).status_code == 401
        assert y.get(API, headers=bearer("bad")).status_code == 401
        assert x.get(API, headers=bearer("bad")).status_code == 429
        assert x.get(API, headers=bearer(TOKEN)).status_code == 200  # only failures are limited
        assert any(k.startswith(b"LIMITS") for k in redis_server.client().keys("*"))
    finally:
        one.extensions["salespulse"]["db"].close()
        two.extensions["salespulse"]["db"].close()


def test_closed_unless_opened_explicitly(database_url):
    with pytest.raises(RuntimeError, match="DASHBOARD_TOKEN"):
        create_app(make_settings(database_url, dashboard_auth="token", dashboard_token=None))
    with pytest.raises(RuntimeError, match="DASHBOARD_TOKEN"):
        create_app(make_settings(database_url, dashboard_auth="token", dashboard_token=""))
    with pytest.raises(RuntimeError, match="placeholder"):
        create_app(make_settings(database_url, dashboard_token="change-me-dashboard-token"))
    app = create_app(make_settings(database_url, dashboard_auth="none", dashboard_token=None))
    try:
        c = client_of(app)
        assert c.get(API).status_code == 200
        assert c.get("/login?next=/pipeline").headers["Location"] == "/pipeline"  # nothing to sign in to
    finally:
        app.extensions["salespulse"]["db"].close()


def test_every_data_endpoint_refuses_a_request_without_the_right_token(app):
    """Each route of the app that serves data (read from the app's own URL map, so an
    endpoint added later is covered the day it lands) answers 401 without the token
    and with a wrong one, and opens with the right one."""
    public = {"/health", "/login", "/logout", "/api/openapi.json"}
    data = [r.rule for r in app.url_map.iter_rules()
            if r.rule.startswith("/api/") and r.rule not in public and "GET" in r.methods]
    assert "/api/drilldown/raw.csv" in data and "/api/pipeline/checks" in data and len(data) >= 19
    opened = client_of(app, "10.0.0.8")
    for i, rule in enumerate(data):
        # a client address per request: the failed-attempt limit (429) is another test's subject
        assert client_of(app, f"10.1.{i}.1").get(rule).status_code == 401, rule
        assert client_of(app, f"10.1.{i}.2").get(rule, headers=bearer("wrong-" + TOKEN)).status_code == 401, rule
        assert opened.get(rule, headers=bearer(TOKEN)).status_code != 401, rule

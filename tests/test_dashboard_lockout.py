"""Failed sign-ins against the dashboard as it is deployed: gunicorn with two
workers, the limiter's counters in a real Redis, clients on their own
addresses (127.0.0.x). A correct token or cookie always opens; only failures
are limited, per address; a stale cookie after a token change is told to sign
in again and never counted; with Redis stopped, failures are refused (503) and
the right token still opens (docs/security.md#failed-sign-ins)."""

from __future__ import annotations

import socket
from urllib.parse import urlencode

import pytest

from dashboard.auth import COOKIE
from tests.support.gunicorn import gunicorn_dashboard, request
from tests.support.redis_fixtures import RedisServer, start_redis, wait_for_redis

TOKEN = "lockout-test-token-0123456789abcdefghijkl"
ROTATED = "lockout-test-token-rotated-9876543210zyxw"
API = "/api/metrics/summary"
ATTACKER, OPERATOR, OTHER = "127.0.0.66", "127.0.0.7", "127.0.0.8"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_instance():
    """A Redis of this test's own: the last test stops it."""
    port, password = free_port(), "lockout-redis-password"
    process = start_redis(["--requirepass", password, "--save", "", "--appendonly", "no"], port)
    server = RedisServer(port, password, process)
    try:
        wait_for_redis(server.client(), process)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(10)


def env_for(database_url: str, redis: RedisServer, token: str = TOKEN) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "DASHBOARD_AUTH": "token", "DASHBOARD_TOKEN": token,
            "DASHBOARD_AUTH_FAIL_LIMIT": "3/minute", "DASHBOARD_RATE_LIMIT": "100000/minute",
            "DASHBOARD_RATE_LIMIT_STORAGE": redis.url, "DASHBOARD_CACHE_TTL": "0", "CORS_ORIGINS": ""}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def sign_in(port: int, source: str, token: str):
    return request(port, "POST", "/login", source=source, body=urlencode({"token": token, "next": "/pipeline"}),
                   headers={"Content-Type": "application/x-www-form-urlencoded"})


def with_cookie(value: str) -> dict:
    return {"Cookie": f"{COOKIE}={value}"}


def test_failures_are_limited_per_address_and_the_right_token_always_opens(database_url, redis_instance):
    port = free_port()
    with gunicorn_dashboard(port, env_for(database_url, redis_instance)):
        # three wrong credentials of three kinds spend the attacker's budget (on either worker)
        assert request(port, "GET", API, source=ATTACKER, headers=bearer("guess-1")).status == 401
        assert sign_in(port, ATTACKER, "guess-2").status == 401
        assert request(port, "GET", API, source=ATTACKER, headers=with_cookie("not-ours")).status == 401
        for _ in range(3):  # no credentials at all: never counted, never a 429
            assert request(port, "GET", API, source=ATTACKER).status == 401
        over = request(port, "GET", API, source=ATTACKER, headers=bearer("guess-3"))
        assert over.status == 429 and over.json()["error"] == "too_many_requests"
        assert 1 <= int(over.headers["Retry-After"]) <= 61
        assert sign_in(port, ATTACKER, "guess-4").status == 429
        # ... and only failures: the right token from that very address still opens, header and form
        assert request(port, "GET", API, source=ATTACKER, headers=bearer(TOKEN)).status == 200
        signed = sign_in(port, ATTACKER, TOKEN)
        assert signed.status == 303 and signed.headers["Location"] == "/pipeline"
        cookie = signed.cookie(COOKIE)
        assert cookie and request(port, "GET", API, source=ATTACKER, headers=with_cookie(cookie)).status == 200
        # another client's budget is its own: its first failure is a 401, its token opens
        assert request(port, "GET", API, source=OPERATOR, headers=bearer("typo")).status == 401
        assert request(port, "GET", API, source=OPERATOR, headers=bearer(TOKEN)).status == 200
        # the counter lives in Redis (shared by the two workers), per address
        keys = [k.decode() for k in redis_instance.client().keys("*auth-fail*")]
        assert any(ATTACKER in k for k in keys) and any(OPERATOR in k for k in keys), keys


def test_a_stale_cookie_after_rotation_is_told_to_sign_in_again_and_never_counted(database_url, redis_instance):
    first, second = free_port(), free_port()
    with gunicorn_dashboard(first, env_for(database_url, redis_instance)):
        old_cookie = sign_in(first, OPERATOR, TOKEN).cookie(COOKIE)
        assert request(first, "GET", API, source=OPERATOR, headers=with_cookie(old_cookie)).status == 200
    # the token is rotated: the dashboard restarts with the new one, the tab keeps polling with its old cookie
    with gunicorn_dashboard(second, env_for(database_url, redis_instance, token=ROTATED)):
        for _ in range(12):  # four times the failure budget: still no 429
            stale = request(second, "GET", API, source=OPERATOR, headers=with_cookie(old_cookie))
            assert stale.status == 401, stale.body
            assert stale.json()["error"] == "session_expired" and "sign in again" in stale.json()["message"]
            assert stale.cookie(COOKIE) == ""  # cleared: the next poll carries none
        assert not redis_instance.client().keys(f"*auth-fail*{OPERATOR}*")
        # the budget is whole: a wrong token is a 401 (not a 429), the new token opens
        assert request(second, "GET", API, source=OPERATOR, headers=bearer(TOKEN)).status == 401
        assert request(second, "GET", API, source=OPERATOR, headers=bearer(ROTATED)).status == 200
        # the login form says why when the page sends the user there
        page = request(second, "GET", "/login?reason=expired&next=/pipeline", source=OPERATOR)
        assert page.status == 200 and b"sign in again" in page.body
        assert sign_in(second, OPERATOR, ROTATED).status == 303


def test_with_redis_down_failures_are_refused_and_the_right_token_still_opens(database_url, redis_instance):
    port = free_port()
    with gunicorn_dashboard(port, env_for(database_url, redis_instance)):
        cookie = sign_in(port, OPERATOR, TOKEN).cookie(COOKIE)
        assert request(port, "GET", API, source=ATTACKER, headers=bearer("guess")).status == 401
        redis_instance.process.terminate()
        redis_instance.process.wait(10)
        with pytest.raises(Exception):
            redis_instance.client().ping()
        for _ in range(3):  # fail closed: a failure that cannot be counted is refused, never let through
            down = request(port, "GET", API, source=ATTACKER, headers=bearer("guess"))
            assert down.status == 503 and down.json()["error"] == "auth_limiter_unavailable", down.body
            assert down.headers["Retry-After"] == "5"
        assert sign_in(port, ATTACKER, "guess").status == 503
        # the right credentials still open
        assert request(port, "GET", API, source=ATTACKER, headers=bearer(TOKEN)).status == 200
        assert request(port, "GET", API, source=OPERATOR, headers=with_cookie(cookie)).status == 200
        assert sign_in(port, OTHER, TOKEN).status == 303
        # no credentials: a plain 401 as always
        assert request(port, "GET", API, source=OTHER).status == 401


"""Access control: the API token, taken from an ``Authorization: Bearer`` header
or from the cookie the login page sets, never from the URL (a query string
lands in access logs, browser history and referrers).

* ``DASHBOARD_AUTH=token`` (the compose default) needs ``DASHBOARD_TOKEN``:
  :func:`required_token` refuses to build the app without one, so a
  production dashboard cannot start open by mistake. ``DASHBOARD_AUTH=none``
  is the explicit opt-out (a private network; the local stack, on 127.0.0.1).
* The login cookie holds no token: it is a timestamp signed with a key derived
  from the token (itsdangerous, Flask's own signer), so changing the token
  signs everybody out. HttpOnly, SameSite=Strict, Secure behind HTTPS.
* A correct credential is always accepted (a right bearer token, a valid
  cookie, the right token on the login form), whatever the client's address
  failed before and whether the limiter's storage answers: only *failures*
  are limited. Each wrong credential (a bad bearer token, a cookie not of our
  making, a wrong token on the form) is counted against
  ``DASHBOARD_AUTH_FAIL_LIMIT`` per client address in the limiter's storage
  (shared by every worker and replica when it is Redis); past it, further
  failures from that address are a 429 instead of a 401. So one client (an
  attacker behind the same proxy or NAT) cannot lock another out, and the
  right token never tells a guesser more than a wrong one already does; what
  stops guessing is the token's length and the request rate limit.
* A stale session is not an attack: a cookie of our own format whose
  signature no longer verifies (the token was rotated) or that expired is a
  401 ``session_expired`` that clears the cookie and is not counted; the pages
  send their user to the login form. Open tabs polling after a rotation would
  otherwise spend the budget every minute. Our format is public, so anyone can
  make such a cookie; it costs nothing, since no cookie can be forged without
  the token.
* Requests with no credentials at all are a plain 401 and do not count: a
  page left open while signed out would otherwise lock its user out.
* Storage down: a wrong credential that cannot be counted is refused with a
  503 (fail closed: no uncounted guessing); a correct one still opens.
"""

from __future__ import annotations

import hmac
import logging
import time
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, redirect, render_template, request, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from limits import parse

from dashboard.errors import json_error
from salespulse.secret_check import GENERATE, PLACEHOLDER_PREFIX

log = logging.getLogger(__name__)

COOKIE = "salespulse_auth"
SIGNED_IN = "signed-in"  # the cookie's signed payload
SESSION_SECONDS = 12 * 3600
#: Endpoints anyone may reach: the health check, the page shells (they hold
#: no data; their scripts fetch it), static files, the API description, login.
OPEN_ENDPOINTS = {"health.health", "static", "pages.plotly_js", "openapi.openapi_json",
                  "pages.ecommerce", "pages.restaurant", "pages.pipeline", "auth.login", "auth.logout"}

auth_bp = Blueprint("auth", __name__)


def required_token(settings) -> str | None:
    """The token every API request must carry, or None when the dashboard is open."""
    mode = settings.dashboard_auth or ("token" if settings.dashboard_token else "none")
    if mode == "none":
        return None
    if not settings.dashboard_token:
        raise RuntimeError("DASHBOARD_AUTH=token needs DASHBOARD_TOKEN (or set DASHBOARD_AUTH=none "
                           "for a dashboard only reachable from a private network)")
    if settings.dashboard_token.startswith(PLACEHOLDER_PREFIX):
        raise RuntimeError(f"DASHBOARD_TOKEN is still the .env.example placeholder: generate one ({GENERATE})")
    return settings.dashboard_token


class Gate:
    """The token check and the failed-attempt counter of one app."""

    def __init__(self, token: str, limiter: Limiter, fail_limit: str):
        self.token = token.encode()
        self.signer = URLSafeTimedSerializer(token, salt="salespulse-dashboard-login")
        self.limiter = limiter
        self.fail_item = parse(fail_limit)

    def matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token)

    def cookie_value(self) -> str:
        return self.signer.dumps(SIGNED_IN)

    def check(self) -> str:
        """'ok', 'missing' (no credentials at all), 'stale' (a cookie of ours
        that expired or was signed with an earlier token) or 'wrong'."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme:
            return "ok" if scheme.lower() == "bearer" and self.matches(given.strip()) else "wrong"
        cookie = request.cookies.get(COOKIE)
        if cookie is None:
            return "missing"
        try:
            self.signer.loads(cookie, max_age=SESSION_SECONDS)
        except SignatureExpired:
            return "stale"
        except BadSignature:
            return "stale" if self.signer.loads_unsafe(cookie)[1] == SIGNED_IN else "wrong"
        return "ok"

    def failure(self) -> str:
        """Count one wrong credential of this client address: 'counted' (a 401),
        'over' (past the budget: a 429) or 'unavailable' (the storage did not
        answer: refused with a 503, fail closed)."""
        try:
            within = self.limiter.limiter.hit(self.fail_item, "auth-fail", get_remote_address())
        except Exception:
            log.exception("rate-limit storage unavailable: a failed sign-in was refused uncounted")
            return "unavailable"
        if not within:
            log.warning("failed sign-ins over %s from %s", self.fail_item, get_remote_address())
        return "counted" if within else "over"

    def retry_after(self) -> int:
        """Seconds until this address's failure window ends (60 if unknown)."""
        try:
            reset = self.limiter.limiter.get_window_stats(self.fail_item, "auth-fail", get_remote_address())[0]
            return max(1, int(reset - time.time()) + 1)
        except Exception:
            return 60


def refusal(gate: Gate, state: str):
    """The answer to a request whose credentials did not open (``state`` from
    :meth:`Gate.check`); a wrong one is counted here."""
    if state == "stale":
        resp = json_error(401, "session_expired", "your session has ended (the access token was changed, "
                                                  "or it expired): sign in again at /login")
        resp.delete_cookie(COOKIE, path="/", samesite="Strict", httponly=True)
        return resp
    outcome = gate.failure() if state == "wrong" else "missing"
    if outcome == "over":
        resp = json_error(429, "too_many_requests", "too many failed sign-in attempts; try again later")
        resp.headers["Retry-After"] = str(gate.retry_after())
        return resp
    if outcome == "unavailable":
        resp = json_error(503, "auth_limiter_unavailable",
                          "failed sign-in attempts cannot be counted right now; try again shortly")
        resp.headers["Retry-After"] = "5"
        return resp
    resp = json_error(401, "unauthorized", "sign in at /login, or send Authorization: Bearer <token>")
    resp.headers["WWW-Authenticate"] = 'Bearer realm="salespulse"'
    return resp


def init_auth(app: Flask, settings, limiter: Limiter) -> None:
    """Register the login page and, when a token is required, the check that
    runs before every request (after the limiter's own, registered earlier)."""
    token = required_token(settings)
    gate = Gate(token, limiter, settings.dashboard_auth_fail_limit) if token else None
    app.extensions["salespulse"]["auth"] = gate
    app.register_blueprint(auth_bp)
    if gate is None:
        return

    @app.before_request
    def _require_token():
        if request.method == "OPTIONS" or request.endpoint in OPEN_ENDPOINTS:
            return None
        state = gate.check()
        return None if state == "ok" else refusal(gate, state)


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no host, not //host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("pages.ecommerce")
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else url_for("pages.ecommerce")


@auth_bp.route("/login", methods=["GET", "POST"])
def login():
    gate: Gate | None = current_app.extensions["salespulse"]["auth"]
    target = _safe_next(request.values.get("next"))
    if gate is None:
        return redirect(target, 303)
    if request.method == "GET":
        expired = request.args.get("reason") == "expired"
        return render_template("login.html", page="login", ranges=[], next=target,
                               error="Your session has ended (the access token was changed, or it expired): "
                                     "sign in again." if expired else None)
    if not gate.matches(request.form.get("token", "")):
        outcome = gate.failure()
        error, status = {"counted": ("Wrong access token.", 401),
                         "over": ("Too many failed attempts: try again in a minute.", 429),
                         "unavailable": ("Sign-in attempts cannot be checked right now: try again shortly.", 503),
                         }[outcome]
        return render_template("login.html", page="login", ranges=[], next=target, error=error), status
    resp = redirect(target, 303)
    resp.set_cookie(COOKIE, gate.cookie_value(), max_age=SESSION_SECONDS, httponly=True,
                    samesite="Strict", secure=request.is_secure, path="/")
    return resp


@auth_bp.post("/logout")
def logout():
    resp = redirect(url_for("auth.login"), 303)
    resp.delete_cookie(COOKIE, path="/", samesite="Strict", httponly=True)
    return resp

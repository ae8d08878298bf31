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
* Wrong credentials (a bad bearer token, a bad or expired cookie, a wrong
  password on the login form) count against ``DASHBOARD_AUTH_FAIL_LIMIT`` per
  client address in the limiter's storage (shared by every worker and replica
  when it is Redis); past it every attempt from that address is a 429 until
  the window ends, the right token included. Requests with no credentials at
  all are a plain 401 and do not count: a page left open while signed out
  would otherwise lock its user out.
"""

from __future__ import annotations

import hmac
import logging
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, redirect, render_template, request, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from itsdangerous import BadSignature, URLSafeTimedSerializer
from limits import parse

from dashboard.errors import json_error

log = logging.getLogger(__name__)

COOKIE = "salespulse_auth"
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
    if settings.dashboard_token.startswith("change-me"):
        raise RuntimeError("DASHBOARD_TOKEN is still the .env.example placeholder: generate one "
                           "(python3 -c \"import secrets;print(secrets.token_urlsafe(32))\")")
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
        return self.signer.dumps("signed-in")

    def check(self) -> str:
        """'ok', 'missing' (no credentials at all) or 'wrong'."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme:
            return "ok" if scheme.lower() == "bearer" and self.matches(given.strip()) else "wrong"
        cookie = request.cookies.get(COOKIE)
        if cookie is None:
            return "missing"
        try:
            self.signer.loads(cookie, max_age=SESSION_SECONDS)
        except BadSignature:
            return "wrong"
        return "ok"

    def locked_out(self) -> bool:
        try:
            return not self.limiter.limiter.test(self.fail_item, "auth-fail", get_remote_address())
        except Exception:  # storage down: like the request limiter (swallow_errors), let it through
            log.exception("rate-limit storage unavailable for the failed-login counter")
            return False

    def record_failure(self) -> None:
        try:
            self.limiter.limiter.hit(self.fail_item, "auth-fail", get_remote_address())
        except Exception:
            log.exception("rate-limit storage unavailable for the failed-login counter")


def _too_many():
    return json_error(429, "too_many_requests", "too many failed sign-in attempts; try again later")


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
        if gate.locked_out():
            return _too_many()
        state = gate.check()
        if state == "ok":
            return None
        if state == "wrong":
            gate.record_failure()
        resp = json_error(401, "unauthorized", "sign in at /login, or send Authorization: Bearer <token>")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="salespulse"'
        return resp


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
        return render_template("login.html", page="login", ranges=[], next=target, error=None)
    if gate.locked_out():
        return render_template("login.html", page="login", ranges=[], next=target,
                               error="Too many failed attempts: try again in a minute."), 429
    if not gate.matches(request.form.get("token", "")):
        gate.record_failure()
        return render_template("login.html", page="login", ranges=[], next=target,
                               error="Wrong access token."), 401
    resp = redirect(target, 303)
    resp.set_cookie(COOKIE, gate.cookie_value(), max_age=SESSION_SECONDS, httponly=True,
                    samesite="Strict", secure=request.is_secure, path="/")
    return resp


@auth_bp.post("/logout")
def logout():
    resp = redirect(url_for("auth.login"), 303)
    resp.delete_cookie(COOKIE, path="/", samesite="Strict", httponly=True)
    return resp

"""Security: rate limiting (flask-limiter), access control (dashboard.auth),
CORS allow-list (flask-cors), and response headers."""

from __future__ import annotations

import threading

from flask import Flask, request
from flask_cors import CORS
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits.storage import MemoryStorage

from dashboard.auth import init_auth

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class ThreadSafeMemoryStorage(MemoryStorage):
    """limits' in-process storage with its expiry timer started under a lock.

    limits 5.8.0 (the newest release) lets two threads of a gthread worker both
    start the same ``threading.Timer`` ("threads can only be started once"),
    which surfaced as a 500 under load; fixed upstream in alisaifee/limits#352
    (not released yet). Scheme: ``salespulse-memory://``.
    """

    STORAGE_SCHEME = ["salespulse-memory"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options):
        self._expiry_lock = threading.Lock()
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    def _MemoryStorage__schedule_expiry(self) -> None:  # the parent's private hook
        with self._expiry_lock:
            if not self.timer.is_alive():
                self.timer = threading.Timer(0.01, self._MemoryStorage__expire_events)
                self.timer.daemon = True
                self.timer.start()


def init_security(app: Flask, settings) -> Limiter:
    """The limiter first, then access control (dashboard.auth): Flask runs
    before-request hooks in registration order, so a request with a wrong
    token is counted by the limiter before it is refused."""
    limiter = Limiter(
        get_remote_address,
        app=app,
        # one budget per client address across every endpoint (not per route)
        application_limits=[settings.dashboard_rate_limit] if settings.dashboard_rate_limit else [],
        # salespulse-memory:// keeps counters per process; compose points every
        # worker and replica at one Redis (DASHBOARD_RATE_LIMIT_STORAGE)
        storage_uri=settings.dashboard_rate_limit_storage,
        swallow_errors=True,  # a rate-limit storage failure lets the request through, never a 500
        headers_enabled=True,
        strategy="fixed-window",
    )

    @limiter.request_filter
    def _exempt():
        return request.endpoint in {"health.health", "static", "pages.plotly_js"}

    init_auth(app, settings, limiter)

    origins = [o.strip() for o in (settings.cors_origins or "").split(",") if o.strip()]
    if origins:
        CORS(app, resources={r"/api/*": {"origins": origins}, r"/health": {"origins": origins}},
             allow_headers=["Authorization", "Content-Type"], methods=["GET", "OPTIONS"], max_age=600)

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        if resp.mimetype == "text/html":
            resp.headers.setdefault("Content-Security-Policy", CSP)
        return resp

    return limiter

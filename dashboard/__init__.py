"""SalesPulse dashboard: a Flask app factory (Flask tutorial style).

``gunicorn -b 127.0.0.1:5000 'dashboard:create_app()'`` serves it. The app reads
the report tables and materialized views with the read-only
``salespulse_dashboard`` role, one pooled connection per request (dashboard/db.py).
"""

from __future__ import annotations

import decimal
from datetime import date, datetime

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from salespulse.settings import ROLE_DASHBOARD, Settings, get_settings


class JSONProvider(DefaultJSONProvider):
    """ISO-8601 datetimes and plain numbers for decimals."""

    sort_keys = False

    @staticmethod
    def default(o):
        if isinstance(o, decimal.Decimal):
            return float(o)
        if isinstance(o, datetime):
            return o.isoformat()
        if isinstance(o, date):
            return o.isoformat()
        return DefaultJSONProvider.default(o)


def create_app(settings: Settings | None = None) -> Flask:
    from dashboard.api import ResponseCache, build_blueprints, health_bp
    from dashboard.db import Database
    from dashboard.errors import register_error_handlers
    from dashboard.openapi import openapi_bp
    from dashboard.pages import pages_bp
    from dashboard.security import init_security

    settings = settings or get_settings()
    app = Flask(__name__)
    app.json_provider_class = JSONProvider
    app.json = JSONProvider(app)
    db = Database(settings.role_url(ROLE_DASHBOARD), max_connections=settings.dashboard_pool_size)
    db.init_app(app)
    app.extensions["salespulse"] = {"settings": settings, "db": db,
                                    "cache": ResponseCache(settings.dashboard_cache_ttl)}
    register_error_handlers(app)
    app.extensions["salespulse"]["limiter"] = init_security(app, settings)
    app.register_blueprint(health_bp)
    app.register_blueprint(pages_bp)
    app.register_blueprint(openapi_bp)
    for bp in build_blueprints():
        app.register_blueprint(bp)
    return app

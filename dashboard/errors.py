"""JSON errors for every error status (the API never answers with HTML)."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from dashboard.db import DatabaseUnavailable
from dashboard.params import BadParameter

log = logging.getLogger(__name__)


def json_error(status: int, error: str, message: str, **extra):
    resp = jsonify({"error": error, "message": message, "status": status, **extra})
    resp.status_code = status
    return resp


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(BadParameter)
    def _bad_parameter(exc: BadParameter):
        return json_error(400, "invalid_parameter", exc.message, parameter=exc.parameter)

    @app.errorhandler(DatabaseUnavailable)
    def _db_down(exc: DatabaseUnavailable):
        resp = json_error(503, "database_unavailable", str(exc))
        resp.headers["Retry-After"] = "5"
        return resp

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        resp = json_error(code, name, exc.description or exc.name or "error")
        for key, value in exc.get_headers():
            if key.lower() not in ("content-type", "content-length"):
                resp.headers[key] = value
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return json_error(500, "internal_error", "internal server error")

"""OpenAPI 3.0 document generated from the endpoint table and parameter models."""

from __future__ import annotations

from flask import Blueprint, jsonify

from dashboard import drilldown
from dashboard.api import ENDPOINTS

openapi_bp = Blueprint("openapi", __name__)

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message", "status"],
    "properties": {
        "error": {"type": "string", "description": "machine-readable error code"},
        "message": {"type": "string"},
        "status": {"type": "integer"},
        "parameter": {"type": "string", "description": "the offending query parameter (400 only)"},
    },
}


def _strip_null(schema: dict) -> dict:
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if len(options) == 1:
            return {**options[0], **rest}
        return {**rest, "anyOf": options}
    return schema


def _parameters(model) -> list[dict]:
    js = model.model_json_schema(by_alias=True)
    out = []
    for name, prop in js.get("properties", {}).items():
        prop = _strip_null(dict(prop))
        description = prop.pop("description", "")
        prop.pop("title", None)
        if prop.get("default", "") is None:
            prop.pop("default")
        if "const" in prop:  # single-value Literal
            prop["enum"] = [prop.pop("const")]
        out.append({"name": name, "in": "query", "required": False, "description": description, "schema": prop})
    return out


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def build_document() -> dict:
    paths: dict = {
        "/health": {"get": {
            "operationId": "health", "tags": ["health"], "summary": "Liveness and database check (open).",
            "security": [],
            "responses": {"200": {"description": "healthy", "content": {"application/json": {"schema": {"type": "object"}}}},
                          "503": {"description": "database unavailable",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}},
        }},
    }
    for ep in ENDPOINTS:
        paths[ep.path] = {"get": {
            "operationId": f"{ep.blueprint}_{ep.name}",
            "tags": [ep.tag],
            "summary": ep.summary,
            "parameters": _parameters(ep.params),
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                "400": _error("invalid parameter (the `parameter` field names it)"),
                "401": _error("missing or wrong bearer token (when DASHBOARD_TOKEN is set)"),
                "429": _error("rate limit exceeded"),
                "503": _error("database unavailable"),
            },
        }}
    paths.update(drilldown.openapi_paths(_parameters, _error))
    return {
        "openapi": "3.0.3",
        "info": {"title": "SalesPulse dashboard API", "version": "1.0.0",
                 "description": "Read-only JSON API over the SalesPulse report tables and materialized views. "
                                "Windows: `range` (relative to now) or `from`/`to` (ISO-8601, naive = UTC, at most 31 days)."},
        "servers": [{"url": "/"}],
        "tags": [{"name": "ecommerce"}, {"name": "restaurant"}, {"name": "pipeline"}, {"name": "drilldown"}, {"name": "health"}],
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "Required when DASHBOARD_TOKEN is set."}},
        },
        # optional: anonymous access works when no token is configured
        "security": [{}, {"bearerAuth": []}],
    }


@openapi_bp.get("/api/openapi.json")
def openapi_json():
    return jsonify(build_document())

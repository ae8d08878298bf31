"""HTML pages (e-commerce, restaurant, pipeline) and the bundled Plotly.js."""

from __future__ import annotations

from pathlib import Path

import plotly
from flask import Blueprint, current_app, render_template, send_from_directory

pages_bp = Blueprint("pages", __name__)

PLOTLY_DIR = Path(plotly.__file__).resolve().parent / "package_data"
RANGES_ECOMMERCE = ["15m", "1h", "6h", "24h", "7d", "all"]
RANGES = ["15m", "1h", "6h", "24h", "7d"]


def _render(template: str, page: str, ranges: list[str]):
    settings = current_app.extensions["salespulse"]["settings"]
    return render_template(template, page=page, ranges=ranges, dagster_ui_url=settings.dagster_ui_url,
                           auth_required=current_app.extensions["salespulse"]["auth"] is not None)


@pages_bp.get("/")
def ecommerce():
    return _render("ecommerce.html", "ecommerce", RANGES_ECOMMERCE)


@pages_bp.get("/restaurant")
def restaurant():
    return _render("restaurant.html", "restaurant", RANGES)


@pages_bp.get("/pipeline")
def pipeline():
    return _render("pipeline.html", "pipeline", RANGES)


@pages_bp.get("/static/vendor/plotly.min.js")
def plotly_js():
    """Plotly.js from the installed ``plotly`` package (no CDN)."""
    resp = send_from_directory(PLOTLY_DIR, "plotly.min.js", mimetype="text/javascript", max_age=86400)
    return resp

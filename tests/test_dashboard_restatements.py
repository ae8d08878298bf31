"""GET /api/restatements against a real PostgreSQL: restated windows bucketed
like the timelines (checked against buckets computed here), per domain,
within the window only; bad parameters are 400 naming them; in OpenAPI."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from dashboard import create_app
from tests.test_dashboard_api import get_json, make_settings

MINUTE = timedelta(minutes=1)
ORIGIN = datetime(2000, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def restated(database_url):
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    t0 = now - timedelta(hours=2)
    rows = [  # domain, window, before, after, run, restated_at
        ("ecommerce", now - 10 * MINUTE, 12, 15, "run-a", t0),
        ("ecommerce", now - 10 * MINUTE, 15, 16, "run-b", t0 + MINUTE),
        ("ecommerce", now - 9 * MINUTE, 3, 2, "run-b", t0 + MINUTE),
        ("ecommerce", now - 3 * MINUTE, 0, 1, None, t0 + 2 * MINUTE),
        ("ecommerce", now - 3 * timedelta(hours=1), 5, 6, "run-old", t0),  # outside range=1h
        ("restaurant", now - 10 * MINUTE, 1, 2, "run-r", t0),
    ]
    conn = psycopg2.connect(database_url)
    with conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO report_restatements (domain, window_start, rows_before, rows_after, run_id, "
                        "restated_at) VALUES (%s, %s, %s, %s, %s, %s)", rows)
    conn.close()
    return database_url, now, rows


@pytest.fixture
def client(restated):
    app = create_app(make_settings(restated[0]))
    yield app.test_client()
    app.extensions["salespulse"]["db"].close()


def expected(rows, domain, start, end, width):
    """Buckets computed here: floor(window - ORIGIN, width), latest restatement per bucket."""
    out = {}
    for d, window, before, after, run, at in rows:
        if d != domain or not start <= window < end:
            continue
        t = ORIGIN + ((window - ORIGIN) // width) * width
        b = out.setdefault(t, {"windows": set(), "restatements": 0, "rows_changed": 0, "last": (None, None)})
        b["windows"].add(window)
        b["restatements"] += 1
        b["rows_changed"] += after - before
        if b["last"][0] is None or at > b["last"][0]:
            b["last"] = (at, run)
    return [(t, len(b["windows"]), b["restatements"], b["rows_changed"], b["last"][0], b["last"][1])
            for t, b in sorted(out.items())]


def answered(body):
    return [(datetime.fromisoformat(p["t"]), p["windows"], p["restatements"], p["rows_changed"],
             datetime.fromisoformat(p["last_restated_at"]), p["last_run_id"]) for p in body["points"]]


def test_restated_points_follow_the_timeline_buckets(restated, client):
    _, now, rows = restated
    start, end = now - timedelta(hours=1), now + MINUTE
    body = get_json(client, "/api/restatements", {"domain": "ecommerce", "range": "1h"})
    assert body["bucket_seconds"] == 60 and body["domain"] == "ecommerce"
    got = answered(body)
    assert got == expected(rows, "ecommerce", start, end, MINUTE)
    assert len(got) == 3 and got[0][5] == "run-b" and got[-1][5] is None

    body = get_json(client, "/api/restatements", {"domain": "ecommerce", "range": "1h", "bucket": "15m"})
    assert answered(body) == expected(rows, "ecommerce", start, end, timedelta(minutes=15))
    # the timeline of the same window has a bucket for each restated one
    timeline = get_json(client, "/api/metrics/timeline", {"range": "1h", "bucket": "15m"})
    assert {p["t"] for p in body["points"]} <= {p["t"] for p in timeline["points"]}

    body = get_json(client, "/api/restatements", {"domain": "restaurant", "range": "1h"})
    assert answered(body) == expected(rows, "restaurant", start, end, MINUTE)

    frm, to = now - timedelta(hours=4), now - timedelta(hours=2)
    body = get_json(client, "/api/restatements", {"domain": "ecommerce", "from": frm.isoformat(), "to": to.isoformat()})
    assert [p[5] for p in answered(body)] == ["run-old"]


@pytest.mark.parametrize("query,param", [
    ({"range": "1h"}, "domain"),
    ({"domain": "shop"}, "domain"),
    ({"domain": "ecommerce", "range": "7d", "bucket": "1m"}, "bucket"),
    ({"domain": "ecommerce", "range": "all"}, "range"),
    ({"domain": "ecommerce", "from": "2026-01-01T00:00:00", "to": "2026-03-01T00:00:00"}, "to"),
])
def test_bad_parameters_are_400_naming_them(client, query, param):
    body = get_json(client, "/api/restatements", query, status=400)
    assert body["parameter"] == param and body["error"] == "invalid_parameter"


def test_openapi_lists_the_endpoint(client):
    doc = get_json(client, "/api/openapi.json")
    names = {p["name"] for p in doc["paths"]["/api/restatements"]["get"]["parameters"]}
    assert names == {"domain", "range", "from", "to", "bucket"}

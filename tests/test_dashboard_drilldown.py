"""The drill-down API against a real PostgreSQL: a figure's report rows, its
Dagster run and link, the raw rows behind it with their Kafka origin (checked
against SQL over the raw tables, written by the consumer's own writer), the
CSV export, and hostile parameters (400 JSON naming the parameter)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest

from dashboard import create_app
from tests.support.db import query as sql
from tests.support.drilldown_seed import seed_drilldown
from tests.test_dashboard_api import get_json, make_settings

DAGSTER = "http://dagster.example:3000"


@pytest.fixture
def seeded(database_url):
    return seed_drilldown(database_url)


@pytest.fixture
def client(seeded):
    app = create_app(make_settings(seeded.url, dagster_ui_url=DAGSTER))
    yield app.test_client()
    app.extensions["salespulse"]["db"].close()


def iso(ts) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def busiest_category(url, first, minutes):
    return sql(url, """SELECT p.category FROM transactions t JOIN products p USING (product_id)
                       WHERE t."timestamp" >= %s AND t."timestamp" < %s
                       GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1""",
               (first, first + timedelta(minutes=minutes)))[0][0]


def test_category_figure_report_row_run_and_the_purchases_behind_it(seeded, client):
    url, ws = seeded.url, seeded.first_minute + timedelta(minutes=1)
    category = busiest_category(url, ws, 1)
    body = get_json(client, "/api/drilldown", {"domain": "ecommerce", "report": "category",
                                               "window_start": iso(ws), "value": category, "limit": 500})
    (revenue, units, orders), = sql(url, """SELECT revenue, units, orders FROM report_ecommerce_category_minute
                                          WHERE window_start = %s AND category = %s""", (ws, category))
    assert body["figure"]["window_end"].startswith(iso(ws + timedelta(minutes=1))[:16])
    [row] = body["report"]["rows"]
    assert (Decimal(str(row["revenue"])), row["units"], row["orders"]) == (revenue, units, orders)
    assert row["run_id"] == seeded.run_id
    assert body["report"]["totals"]["orders"] == orders and body["report"]["totals"]["windows"] == 1
    [run] = body["runs"]
    assert run["run_id"] == seeded.run_id and run["url"] == f"{DAGSTER}/runs/{seeded.run_id}"
    assert run["status"] == "SUCCESS" and run["job_name"] == "reports_job"

    expected = sql(url, """SELECT e.event_id::text, e.kafka_partition, e.kafka_offset, t.total_amount
                           FROM events e JOIN transactions t USING (event_id) JOIN products p ON p.product_id = t.product_id
                           WHERE e."timestamp" >= %s AND e."timestamp" < %s AND p.category = %s
                           ORDER BY e."timestamp", e.id""", (ws, ws + timedelta(minutes=1), category))
    raw = body["raw"]
    assert len(expected) == orders and not raw["has_more"]
    assert [(r["event_id"], r["partition"], r["offset"], Decimal(str(r["total_amount"]))) for r in raw["rows"]] \
        == expected
    assert all(r["topic"] == "ecommerce.events" and r["event_type"] == "purchase" for r in raw["rows"])
    assert all(p is not None and o is not None for _, p, o, _ in expected)  # the consumer filled the origin
    assert sum(Decimal(str(r["total_amount"])) for r in raw["rows"]) == revenue


def test_raw_rows_are_paged_without_gaps_or_repeats(seeded, client):
    url = seeded.url
    args = {"domain": "ecommerce", "report": "overview", "window_start": iso(seeded.first_minute),
            "minutes": seeded.minutes, "limit": 7}
    seen, offset = [], 0
    while True:
        page = get_json(client, "/api/drilldown", {**args, "offset": offset})["raw"]
        seen += [r["event_id"] for r in page["rows"]]
        if not page["has_more"]:
            break
        assert page["next_offset"] == offset + 7
        offset = page["next_offset"]
    end = seeded.first_minute + timedelta(minutes=seeded.minutes)
    assert seen == [r[0] for r in sql(url, """SELECT event_id::text FROM events WHERE "timestamp" >= %s
                                               AND "timestamp" < %s ORDER BY "timestamp", id""",
                                      (seeded.first_minute, end))]
    body = get_json(client, "/api/drilldown", {**args, "event_type": "search"})
    assert body["report"]["totals"]["windows"] == seeded.minutes
    assert {r["event_type"] for r in body["raw"]["rows"]} == {"search"}


@pytest.mark.parametrize("report,column", [("channel", "channel"), ("category", "category"), ("item", "item_id")])
def test_restaurant_figures_list_their_orders_with_origin(seeded, client, report, column):
    url, ws, n = seeded.url, seeded.first_minute, seeded.minutes
    end = ws + timedelta(minutes=n)
    table = {"channel": "orders o", "category": "orders o JOIN order_items i USING (order_id)",
             "item": "orders o JOIN order_items i USING (order_id)"}[report]
    qualified = "o.channel" if report == "channel" else f"i.{column}"
    value = sql(url, f"""SELECT {qualified} FROM {table} WHERE o."timestamp" >= %s AND o."timestamp" < %s
                         ORDER BY 1 LIMIT 1""", (ws, end))[0][0]
    body = get_json(client, "/api/drilldown", {"domain": "restaurant", "report": report, "window_start": iso(ws),
                                               "minutes": n, "value": value, "limit": 500})
    expected = sql(url, f"""SELECT DISTINCT o.order_id::text, o.kafka_partition, o.kafka_offset, o."timestamp", o.id
                            FROM {table} WHERE o."timestamp" >= %s AND o."timestamp" < %s AND {qualified} = %s
                            ORDER BY o."timestamp", o.id""", (ws, end, value))
    assert [(r["order_id"], r["partition"], r["offset"]) for r in body["raw"]["rows"]] == \
        [e[:3] for e in expected]
    assert all(r["topic"] == "restaurant.orders" for r in body["raw"]["rows"])
    orders_total = sum(r["orders"] for r in body["report"]["rows"])
    assert body["report"]["totals"]["orders"] == orders_total == len(expected)
    if report != "channel":  # the matching lines add up to the report's quantity and revenue
        assert sum(r["matched_quantity"] for r in body["raw"]["rows"]) == body["report"]["totals"]["quantity"]
        assert sum(Decimal(str(r["matched_revenue"])) for r in body["raw"]["rows"]) == \
            Decimal(str(body["report"]["totals"]["revenue"]))


def test_newest_refresh_wins_and_a_window_without_run_has_no_link(seeded, client, database_url):
    ws = seeded.first_minute
    sql(database_url, "DELETE FROM report_refreshes WHERE run_id IS NOT NULL AND domain = 'restaurant'")
    body = get_json(client, "/api/drilldown", {"domain": "restaurant", "report": "overview", "window_start": iso(ws)})
    [run] = body["runs"]
    assert run["run_id"] is None and run["url"] is None
    body = get_json(client, "/api/drilldown", {"domain": "ecommerce", "report": "overview", "window_start": iso(ws)})
    assert [r["run_id"] for r in body["runs"]] == [seeded.run_id]


def test_csv_export_streams_every_raw_row_with_origin(seeded, client):
    url, ws, n = seeded.url, seeded.first_minute, seeded.minutes
    args = {"domain": "ecommerce", "report": "overview", "window_start": iso(ws), "minutes": n}
    body = get_json(client, "/api/drilldown", args)
    assert body["csv"].startswith("/api/drilldown/raw.csv?")
    resp = client.get(body["csv"])
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))
    expected = sql(url, """SELECT event_id::text, kafka_partition, kafka_offset FROM events
                           WHERE "timestamp" >= %s AND "timestamp" < %s ORDER BY "timestamp", id""",
                   (ws, ws + timedelta(minutes=n)))
    assert [(r["event_id"], int(r["partition"]), int(r["offset"])) for r in rows] == expected
    assert {r["topic"] for r in rows} == {"ecommerce.events"}
    # bounded: limit cuts the stream
    short = client.get("/api/drilldown/raw.csv", query_string={**args, "limit": 5})
    assert len(list(csv.DictReader(io.StringIO(short.get_data(as_text=True))))) == 5


BAD = [
    ("/api/drilldown", {"domain": "shop", "report": "overview", "window_start": "2026-01-01T10:00Z"}, "domain"),
    ("/api/drilldown", {"report": "overview", "window_start": "2026-01-01T10:00Z"}, "domain"),
    ("/api/drilldown", {"domain": "ecommerce", "report": "channel", "window_start": "2026-01-01T10:00Z",
                        "value": "x"}, "report"),
    ("/api/drilldown", {"domain": "ecommerce", "report": "overview", "window_start": "2026-01-01T10:00:30Z"},
     "window_start"),
    ("/api/drilldown", {"domain": "ecommerce", "report": "overview", "window_start": "yesterday"}, "window_start"),
    ("/api/drilldown", {"domain": "ecommerce", "report": "overview", "window_start": "1900-01-01T00:00Z"},
     "window_start"),
    ("/api/drilldown", {"domain": "ecommerce", "report": "overview", "window_start": "2026-01-01T10:00Z",
                        "limit": "1000000"}, "limit"),
    ("/api/drilldown", {"domain": "ecommerce", "report": "overview", "window_start": "2026-01-01T10:00Z",
                        "offset": "-1"}, "offset"),
    ("/api/drilldown", {"domain": "ecommerce", "report": "overview", "window_start": "2026-01-01T10:00Z",
                        "minutes": "100000"}, "minutes"),
    ("/api/drilldown", {"domain": "ecommerce", "report": "category", "window_start": "2026-01-01T10:00Z"}, "value"),
    ("/api/drilldown", {"domain": "ecommerce", "report": "overview", "window_start": "2026-01-01T10:00Z",
                        "value": "Books"}, "value"),
    ("/api/drilldown", {"domain": "ecommerce", "report": "category", "window_start": "2026-01-01T10:00Z",
                        "value": "x" * 201}, "value"),
    ("/api/drilldown", {"domain": "restaurant", "report": "overview", "window_start": "2026-01-01T10:00Z",
                        "event_type": "purchase"}, "event_type"),
    ("/api/drilldown", {"domain": "ecommerce", "report": "overview", "window_start": "2026-01-01T10:00Z",
                        "event_type": "checkout"}, "event_type"),
    ("/api/drilldown/raw.csv", {"domain": "ecommerce", "report": "overview", "window_start": "2026-01-01T10:00Z",
                                "limit": "100001"}, "limit"),
    ("/api/drilldown/raw.csv", {"domain": "restaurant", "report": "item", "window_start": "2026-01-01T10:00Z"},
     "value"),
    ("/api/drilldown/raw.csv", {"domain": "ecommerce", "report": "overview", "window_start": "2026-01-01T10:00\x00Z"},
     "window_start"),
]


@pytest.mark.parametrize("path,query,parameter", BAD)
def test_hostile_parameters_are_400_json_naming_the_parameter(client, path, query, parameter):
    resp = client.get(path, query_string=query)
    assert resp.status_code == 400 and resp.is_json, resp.get_data(as_text=True)[:300]
    body = resp.get_json()
    assert body["error"] == "invalid_parameter" and body["parameter"] == parameter, body


def test_openapi_documents_both_endpoints(client):
    doc = get_json(client, "/api/openapi.json")
    for path, model_fields in (("/api/drilldown", ("domain", "report", "window_start", "minutes", "value",
                                                   "event_type", "limit", "offset")),
                               ("/api/drilldown/raw.csv", ("domain", "report", "window_start", "minutes", "value",
                                                           "event_type", "limit"))):
        params = {p["name"]: p for p in doc["paths"][path]["get"]["parameters"]}
        assert set(params) == set(model_fields)
    assert "text/csv" in doc["paths"]["/api/drilldown/raw.csv"]["get"]["responses"]["200"]["content"]
    limit = next(p for p in doc["paths"]["/api/drilldown"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 500

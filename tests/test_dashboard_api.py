"""Dashboard API against a real PostgreSQL: values checked against SQL computed
here, independently of the app; bad parameters; auth; rate limit; CORS; outage."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg2
import pytest

from dashboard import create_app
from dashboard.api import ENDPOINTS
from salespulse.settings import Settings

from tests.conftest import free_port
from tests.support.db import query as sql
from tests.support.dashboard_seed import ecommerce_minute, insert_rows, minute, seed_all


def make_settings(url: str, **kw) -> Settings:
    base = {"database_url": url, "dashboard_cache_ttl": 0, "dashboard_rate_limit": "100000/minute",
            "dashboard_token": None, "cors_origins": "", "dagster_ui_url": "http://dagster.example:3000"}
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def seeded(database_url):
    now = seed_all(database_url)
    # a row far outside the 1h window: must never be counted by range=1h
    conn = psycopg2.connect(database_url)
    with conn, conn.cursor() as cur:
        insert_rows(cur, "report_ecommerce_overview_minute", [ecommerce_minute(minute(now) - timedelta(hours=3), 999)])
        insert_rows(cur, "report_restaurant_overview_minute", [{
            "window_start": minute(now) - timedelta(hours=3), "orders": 1000, "items_sold": 1,
            "revenue": Decimal("99999.00"), "avg_ticket": Decimal("99.99")}])
    conn.close()
    return database_url, now


@pytest.fixture
def client(seeded):
    url, _ = seeded
    app = create_app(make_settings(url))
    yield app.test_client()
    app.extensions["salespulse"]["db"].close()




def iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat()


def explicit(now: datetime, minutes_back: int = 20, minutes_to: int = 5) -> tuple[datetime, datetime, dict]:
    start = minute(now) - timedelta(minutes=minutes_back)
    end = minute(now) - timedelta(minutes=minutes_to)
    return start, end, {"from": iso(start), "to": iso(end)}


def get_json(client, path, query=None, status=200, **kw):
    resp = client.get(path, query_string=query or {}, **kw)
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.is_json
    return resp.get_json()


# ------------------------------------------------------------ e-commerce values
def test_ecommerce_summary_matches_sql(seeded, client):
    url, now = seeded
    start, end, q = explicit(now)
    body = get_json(client, "/api/metrics/summary", q)
    (events, revenue, orders, purchased, viewed, peak), = sql(url, """
        SELECT sum(events), sum(revenue), sum(purchases), sum(sessions_purchased), sum(sessions_viewed), max(active_users)
        FROM report_ecommerce_overview_minute WHERE window_start >= %s AND window_start < %s""", (start, end))
    assert body["events"] == events and body["orders"] == orders
    assert Decimal(str(body["revenue"])) == revenue
    assert body["conversion_rate"] == pytest.approx(float(purchased) / float(viewed), abs=1e-4)
    assert body["active_users_peak"] == peak
    assert body["windows"] == 15
    # range=1h: every seeded minute (1..30 min old), never the 3-hour-old row
    body = get_json(client, "/api/metrics/summary", {"range": "1h"})
    (events_1h,), = sql(url, "SELECT sum(events) FROM report_ecommerce_overview_minute WHERE window_start > now() - interval '40 minutes'")
    assert body["events"] == events_1h and body["windows"] == 30


def test_ecommerce_timeline_buckets_match_sql(seeded, client):
    url, now = seeded
    start, end, q = explicit(now, 40, 0)
    body = get_json(client, "/api/metrics/timeline", {**q, "bucket": "5m"})
    assert body["bucket_seconds"] == 300
    points = body["points"]
    first = datetime.fromtimestamp(start.timestamp() // 300 * 300, timezone.utc)
    assert len(points) == -(-(end - first).total_seconds() // 300)  # every 5-minute slot touching [from, to)
    assert datetime.fromisoformat(points[0]["t"]) == first
    expected = dict(sql(url, """
        SELECT to_timestamp(floor(extract(epoch FROM window_start) / 300) * 300), sum(events)
        FROM report_ecommerce_overview_minute WHERE window_start >= %s AND window_start < %s GROUP BY 1""", (start, end)))
    got = {datetime.fromisoformat(p["t"]): p["events"] for p in points}
    for t, n in expected.items():
        assert got[t] == n
    assert sum(got.values()) == sum(expected.values())
    assert all(v == 0 for t, v in got.items() if t not in expected)  # empty buckets are filled with zeros


def test_ecommerce_top_products_and_categories_match_sql(seeded, client):
    url, now = seeded
    start, end, q = explicit(now)
    body = get_json(client, "/api/metrics/top-products", {**q, "limit": 5})
    rows = sql(url, """SELECT product_id, sum(revenue) FROM report_ecommerce_product_minute
                      WHERE window_start >= %s AND window_start < %s
                      GROUP BY product_id ORDER BY sum(revenue) DESC, product_id LIMIT 5""", (start, end))
    assert [(p["product_id"], Decimal(str(p["revenue"]))) for p in body["products"]] == rows
    body = get_json(client, "/api/metrics/by-category", q)
    rows = sql(url, """SELECT category, sum(revenue), sum(units) FROM report_ecommerce_category_minute
                      WHERE window_start >= %s AND window_start < %s GROUP BY category""", (start, end))
    assert {(c["category"], Decimal(str(c["revenue"])), c["units"]) for c in body["categories"]} == set(rows)


def test_ecommerce_event_types_match_sql(seeded, client):
    url, now = seeded
    start, end, q = explicit(now)
    body = get_json(client, "/api/metrics/event-types", q)
    (pv, se, ac, rc, pu), = sql(url, """
        SELECT sum(page_views), sum(searches), sum(add_to_carts), sum(remove_from_carts), sum(purchases)
        FROM report_ecommerce_overview_minute WHERE window_start >= %s AND window_start < %s""", (start, end))
    assert {e["event_type"]: e["count"] for e in body["event_types"]} == {
        "page_view": pv, "search": se, "add_to_cart": ac, "remove_from_cart": rc, "purchase": pu}


def test_ecommerce_realtime_reads_last_minute_of_raw_tables(seeded, client):
    url, _ = seeded
    # an event 10 minutes old is outside the last minute
    sql_exec(url, """INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id)
                     VALUES (gen_random_uuid(), 'page_view', now() - interval '10 minutes', 'old', 'old')""")
    body = get_json(client, "/api/metrics/realtime")
    (events, users, purchases), = sql(url, """SELECT count(*), count(DISTINCT user_id), count(*) FILTER (WHERE event_type = 'purchase')
                                    FROM events WHERE "timestamp" >= now() - interval '1 minute'""")
    (orders, revenue), = sql(url, """SELECT count(*), sum(total_amount) FROM transactions
                                    WHERE "timestamp" >= now() - interval '1 minute'""")
    assert events == 60 and body["events"] == events
    assert body["active_users"] == users and body["event_types"]["purchase"] == purchases
    assert body["orders"] == orders and Decimal(str(body["revenue"])) == revenue
    assert body["events_per_second"] == pytest.approx(events / 60, abs=0.01)


def test_all_time_reads_materialized_views(seeded, client):
    url, _ = seeded
    body = get_json(client, "/api/metrics/top-products", {"range": "all", "limit": 3})
    assert body["source"] == "top_products"
    rows = sql(url, """SELECT t.product_id, sum(t.total_amount) FROM transactions t
                      GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3""")
    assert [(p["product_id"], Decimal(str(p["revenue"]))) for p in body["products"]] == rows
    body = get_json(client, "/api/metrics/by-category", {"range": "all"})
    rows = sql(url, """SELECT p.category, sum(t.total_amount) FROM transactions t JOIN products p USING (product_id)
                      GROUP BY 1""")
    assert {(c["category"], Decimal(str(c["revenue"]))) for c in body["categories"]} == set(rows)
    body = get_json(client, "/api/metrics/summary", {"range": "all"})
    (events, revenue), = sql(url, "SELECT (SELECT count(*) FROM events), (SELECT sum(total_amount) FROM transactions)")
    assert body["source"] == "daily_metrics" and body["events"] == events
    assert Decimal(str(body["revenue"])) == revenue
    body = get_json(client, "/api/metrics/timeline", {"range": "all"})
    assert sum(p["events"] for p in body["points"]) == events


# ------------------------------------------------------------ restaurant values
def test_restaurant_summary_timeline_match_sql(seeded, client):
    url, now = seeded
    start, end, q = explicit(now)
    body = get_json(client, "/api/restaurant/summary", q)
    (orders, items, revenue), = sql(url, """SELECT sum(orders), sum(items_sold), sum(revenue)
        FROM report_restaurant_overview_minute WHERE window_start >= %s AND window_start < %s""", (start, end))
    assert body["orders"] == orders and body["items_sold"] == items
    assert Decimal(str(body["revenue"])) == revenue
    assert body["avg_ticket"] == pytest.approx(float(revenue / orders), abs=0.005)
    body = get_json(client, "/api/restaurant/timeline", {**q, "bucket": "1m"})
    assert len(body["points"]) == 15
    assert sum(p["orders"] for p in body["points"]) == orders
    body = get_json(client, "/api/restaurant/summary", {"range": "1h"})
    assert body["orders"] < 1000  # the 3-hour-old row is outside


def test_restaurant_items_categories_channels_match_sql(seeded, client):
    url, now = seeded
    start, end, q = explicit(now)
    body = get_json(client, "/api/restaurant/top-items", {**q, "limit": 3, "sort": "quantity"})
    rows = sql(url, """SELECT item_id, sum(quantity) FROM report_restaurant_item_minute
                      WHERE window_start >= %s AND window_start < %s GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3""", (start, end))
    assert [(i["item_id"], i["quantity"]) for i in body["items"]] == rows
    body = get_json(client, "/api/restaurant/by-category", q)
    rows = sql(url, """SELECT category, sum(revenue) FROM report_restaurant_category_minute
                      WHERE window_start >= %s AND window_start < %s GROUP BY 1""", (start, end))
    assert {(c["category"], Decimal(str(c["revenue"]))) for c in body["categories"]} == set(rows)
    body = get_json(client, "/api/restaurant/channels", q)
    rows = sql(url, """SELECT channel, sum(orders), sum(revenue) FROM report_restaurant_channel_minute
                      WHERE window_start >= %s AND window_start < %s GROUP BY 1""", (start, end))
    assert {(c["channel"], c["orders"], Decimal(str(c["revenue"]))) for c in body["channels"]} == set(rows)


def test_restaurant_peak_hours_in_time_zone(seeded, client):
    url, now = seeded
    tz = "America/Sao_Paulo"
    body = get_json(client, "/api/restaurant/peak-hours", {"range": "24h", "tz": tz})
    assert [h["hour"] for h in body["hours"]] == list(range(24))
    rows = dict(sql(url, """SELECT extract(hour FROM window_start AT TIME ZONE %s)::int, sum(orders)
                           FROM report_restaurant_overview_minute WHERE window_start > now() - interval '23 hours'
                           GROUP BY 1""", (tz,)))
    assert {h["hour"]: h["orders"] for h in body["hours"] if h["orders"]} == rows
    assert body["peak_hour"] == max(rows, key=lambda h: (rows[h], -h))


def test_restaurant_realtime(seeded, client):
    url, _ = seeded
    body = get_json(client, "/api/restaurant/realtime")
    (orders, revenue, items), = sql(url, """SELECT count(*), sum(total_amount), sum(item_count) FROM orders
                                           WHERE "timestamp" >= now() - interval '1 minute'""")
    assert orders == 6 and body["orders"] == orders and body["items"] == items
    assert Decimal(str(body["revenue"])) == revenue
    assert sum(body["channels"].values()) == orders


# ------------------------------------------------------------ pipeline
def test_pipeline_status_matches_sql(seeded, client):
    url, _ = seeded
    body = get_json(client, "/api/pipeline/status", {"range": "1h", "limit": 3})
    latest = dict(sql(url, """SELECT DISTINCT ON (topic) topic, lag FROM pipeline_observations
                             ORDER BY topic, observed_at DESC"""))
    assert {t["topic"]: t["lag"] for t in body["topics"]} == latest
    assert body["lag_total"] == sum(latest.values())
    (dl,), = sql(url, "SELECT count(*) FROM dead_letters WHERE received_at > now() - interval '1 hour'")
    assert body["dead_letters"]["total"] == dl == 7
    reasons = {r["reason"]: r["count"] for r in body["dead_letters"]["reasons"]}
    assert reasons["invalid event_type"] >= 1 and "payload is not valid UTF-8 JSON" in reasons
    assert len(body["dead_letters"]["recent"]) == 3
    runs = [r[0] for r in sql(url, "SELECT run_id FROM pipeline_runs ORDER BY recorded_at DESC LIMIT 3")]
    assert [r["run_id"] for r in body["runs"]] == runs
    (computed, window), = sql(url, """SELECT max(computed_at), max(window_start) FROM
        (SELECT computed_at, window_start FROM report_ecommerce_overview_minute
         UNION ALL SELECT computed_at, window_start FROM report_restaurant_overview_minute) r""")
    assert datetime.fromisoformat(body["last_report_at"]) == computed
    assert datetime.fromisoformat(body["last_report_window_start"]) == window
    assert body["dagster_ui_url"] == "http://dagster.example:3000"
    assert body["series"] and body["throughput_messages_per_s"] > 0
    (events, orders), = sql(url, """SELECT (SELECT count(*) FROM events WHERE "timestamp" >= now() - interval '1 minute'),
                                           (SELECT count(*) FROM orders WHERE "timestamp" >= now() - interval '1 minute')""")
    assert body["ingest_last_minute"]["events"] == events == 60 and body["ingest_last_minute"]["orders"] == orders == 6


def test_pipeline_freshness_matches_sql(seeded, client):
    url, _ = seeded
    fresh = get_json(client, "/api/pipeline/status", {"range": "15m"})["freshness"]
    assert fresh["check_current"] and not fresh["stale"]
    assert {r["domain"]: r["minutes_behind"] for r in fresh["reports"]} == dict(
        sql(url, "SELECT domain, minutes_behind FROM pipeline_report_freshness"))
    sql_exec(url, """UPDATE pipeline_report_freshness SET stale = true, minutes_behind = 7,
                   newest_window = newest_raw_minute - interval '7 minutes' WHERE domain = 'restaurant'""")
    sql_exec(url, """UPDATE pipeline_run_queue SET queued = 3, blocked = true,
                        observed_at = now() - interval '5 minutes',
                        stalled = '[{"run_id": "r1", "job_name": "j", "status": "STARTED", "idle_seconds": 900}]'""")
    (raw, window), = sql(url, "SELECT newest_raw_minute, newest_window FROM pipeline_report_freshness "
                              "WHERE domain = 'restaurant'")
    stale = get_json(client, "/api/pipeline/status", {"range": "15m"})["freshness"]
    restaurant = next(r for r in stale["reports"] if r["domain"] == "restaurant")
    assert restaurant["stale"] and restaurant["minutes_behind"] == 7 and restaurant["target_minutes"] == 3
    assert datetime.fromisoformat(restaurant["newest_window"]) == window == raw - timedelta(minutes=7)
    assert stale["stale"] and stale["queue"]["blocked"] and stale["queue"]["stalled"][0]["run_id"] == "r1"
    # the oldest part of the record sets its age
    assert not stale["check_current"] and stale["check_age_seconds"] >= 300
    assert datetime.fromisoformat(stale["checked_at"]) == sql(url, "SELECT observed_at FROM pipeline_run_queue")[0][0]


# ------------------------------------------------------------ validation
BAD = [
    ("/api/metrics/summary", {"range": "2h"}, "range"),
    ("/api/metrics/summary", {"range": "1h'; DROP TABLE events;--"}, "range"),
    ("/api/metrics/summary", {"from": "yesterday"}, "from"),
    ("/api/metrics/summary", {"from": "2024-01-02T00:00:00", "to": "2024-01-01T00:00:00"}, "to"),
    ("/api/metrics/summary", {"from": "2024-01-01T00:00:00", "to": "2024-03-01T00:00:00"}, "to"),
    ("/api/metrics/summary", {"from": "1900-01-01T00:00:00"}, "from"),
    ("/api/metrics/summary", {"range": "all", "to": "2024-01-01T00:00:00"}, "to"),
    ("/api/metrics/timeline", {"bucket": "2m"}, "bucket"),
    ("/api/metrics/timeline", {"range": "7d", "bucket": "1m"}, "bucket"),
    ("/api/metrics/top-products", {"limit": "0"}, "limit"),
    ("/api/metrics/top-products", {"limit": "101"}, "limit"),
    ("/api/metrics/top-products", {"limit": "ten"}, "limit"),
    ("/api/metrics/event-types", {"range": "all"}, "range"),
    ("/api/restaurant/top-items", {"sort": "price"}, "sort"),
    ("/api/restaurant/peak-hours", {"tz": "Mars/Olympus"}, "tz"),
    ("/api/restaurant/peak-hours", {"tz": "UTC' OR 1=1"}, "tz"),
    ("/api/restaurant/timeline", {"to": "2024-01-01T00:00:00\x00"}, "to"),
    ("/api/pipeline/status", {"limit": "-1"}, "limit"),
]


@pytest.mark.parametrize("path,query,param", BAD, ids=[f"{p}?{'&'.join(q)}" for p, q, _ in BAD])
def test_bad_parameter_is_400_naming_it(client, path, query, param):
    body = get_json(client, path, query, status=400)
    assert body["error"] == "invalid_parameter" and body["parameter"] == param and body["status"] == 400
    assert body["message"]


def test_unknown_paths_and_methods_are_json(client):
    assert get_json(client, "/api/nope", status=404)["status"] == 404
    resp = client.post("/api/metrics/summary")
    assert resp.status_code == 405 and resp.is_json and resp.get_json()["error"] == "method_not_allowed"


def test_dashboard_connects_as_read_only_role(seeded):
    url, _ = seeded
    app = create_app(make_settings(url))
    db = app.extensions["salespulse"]["db"]
    assert db.query("SELECT current_user AS u")[0]["u"] == "salespulse_dashboard"
    with pytest.raises(psycopg2.Error):
        db.query("DELETE FROM events RETURNING 1")
    db.close()


# ------------------------------------------------------------ security
def test_bearer_token_when_configured(seeded):
    url, _ = seeded
    app = create_app(make_settings(url, dashboard_token="s3cret-token"))
    c = app.test_client()
    resp = c.get("/api/metrics/summary")
    assert resp.status_code == 401 and resp.is_json and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert c.get("/api/metrics/summary", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/metrics/summary", headers={"Authorization": "Basic s3cret-token"}).status_code == 401
    assert c.get("/api/metrics/summary", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert c.get("/api/pipeline/status", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert c.get("/health").status_code == 200  # open
    assert c.get("/").status_code == 200  # page shell holds no data; its script sends the token
    assert c.get("/api/openapi.json").status_code == 200
    app.extensions["salespulse"]["db"].close()


def test_no_token_configured_means_open(client):
    assert client.get("/api/metrics/summary").status_code == 200


def test_rate_limit_gives_429_json(seeded):
    url, _ = seeded
    app = create_app(make_settings(url, dashboard_rate_limit="3/minute"))
    c = app.test_client()
    codes = [c.get("/api/metrics/event-types").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    resp = c.get("/api/metrics/summary")
    assert resp.status_code == 429 and resp.is_json and resp.get_json()["status"] == 429
    assert "Retry-After" in resp.headers
    assert c.get("/health").status_code == 200  # health is never limited
    app.extensions["salespulse"]["db"].close()


def test_rate_limit_storage_failure_is_not_a_500(seeded, monkeypatch):
    """limits' memory storage can raise under concurrency (double-started timer);
    a storage failure must let the request through, not answer 500."""
    from dashboard.security import ThreadSafeMemoryStorage

    def broken(self, *args, **kwargs):
        raise RuntimeError("threads can only be started once")

    monkeypatch.setattr(ThreadSafeMemoryStorage, "incr", broken)
    url, _ = seeded
    app = create_app(make_settings(url, dashboard_rate_limit="3/minute"))
    assert [app.test_client().get("/api/metrics/event-types").status_code for _ in range(4)] == [200] * 4
    app.extensions["salespulse"]["db"].close()


def test_cors_allow_list(seeded):
    url, _ = seeded
    app = create_app(make_settings(url, cors_origins="https://ok.example, https://also.example",
                                   dashboard_token="tkn"))
    c = app.test_client()
    resp = c.get("/api/metrics/summary", headers={"Origin": "https://ok.example", "Authorization": "Bearer tkn"})
    assert resp.status_code == 200 and resp.headers["Access-Control-Allow-Origin"] == "https://ok.example"
    resp = c.get("/api/metrics/summary", headers={"Origin": "https://evil.example", "Authorization": "Bearer tkn"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    pre = c.options("/api/metrics/summary", headers={
        "Origin": "https://also.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Authorization"})
    assert pre.status_code == 200 and pre.headers["Access-Control-Allow-Origin"] == "https://also.example"
    assert "authorization" in pre.headers["Access-Control-Allow-Headers"].lower()
    app.extensions["salespulse"]["db"].close()


def test_no_cors_headers_without_allow_list(client):
    resp = client.get("/api/metrics/summary", headers={"Origin": "https://ok.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


# ------------------------------------------------------------ outage
def sql_exec(url, statement, params=None):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
    finally:
        conn.close()


def test_database_unreachable_gives_503_json():
    url = f"postgresql://salespulse:salespulse@127.0.0.1:{free_port()}/nowhere"
    app = create_app(make_settings(url))
    c = app.test_client()
    for ep in ENDPOINTS:
        resp = c.get(ep.path, query_string=ep.extra.get("example"))  # an endpoint with required parameters
        assert resp.status_code == 503 and resp.is_json, ep.path
        assert resp.get_json()["error"] == "database_unavailable"
    resp = c.get("/health")
    assert resp.status_code == 503 and resp.get_json()["status"] == "error"


def test_database_outage_and_recovery(seeded, postgres):
    url, _ = seeded
    dbname = url.rsplit("/", 1)[1]
    app = create_app(make_settings(url))
    c = app.test_client()
    assert c.get("/api/metrics/summary").status_code == 200
    pool = app.extensions["salespulse"]["db"]._get_pool()
    held = [pool.getconn() for _ in range(8)]  # the pool now keeps 8 idle connections
    for conn in held:
        pool.putconn(conn)
    admin = postgres.admin_url
    try:
        sql_exec(admin, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        sql_exec(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
        resp = c.get("/api/metrics/summary")
        assert resp.status_code == 503 and resp.is_json
        assert c.get("/health").status_code == 503
    finally:
        sql_exec(admin, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    # the first request after recovery succeeds: dead idle connections are dropped, not handed out one by one
    assert c.get("/api/metrics/summary").status_code == 200
    assert c.get("/health").get_json() == {"status": "ok", "database": "ok"}
    app.extensions["salespulse"]["db"].close()


def test_failed_computations_leave_nothing_in_the_answer_cache(seeded, postgres):
    """Hostile parameters that are refused (400) or whose computation fails (the
    database refusing connections: 503) do not grow the answer cache."""
    url, _ = seeded
    dbname = url.rsplit("/", 1)[1]
    app = create_app(make_settings(url, dashboard_cache_ttl=300))
    cache, c = app.extensions["salespulse"]["cache"], app.test_client()
    assert c.get("/api/metrics/summary").status_code == 200
    assert len(cache) == 1
    for path, query, _param in BAD:
        assert c.get(path, query_string=query).status_code == 400
    assert len(cache) == 1
    admin = postgres.admin_url
    try:
        sql_exec(admin, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        sql_exec(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
        for i in range(300):  # 300 distinct keys, each computation failing
            window = {"from": f"2026-01-{1 + i % 28:02d}T{i // 28:02d}:{i % 60:02d}:00",
                      "to": f"2026-01-{1 + i % 28:02d}T{i // 28:02d}:{i % 60:02d}:30"}
            path = ("/api/metrics/timeline", "/api/restaurant/summary", "/api/pipeline/status")[i % 3]
            assert c.get(path, query_string=window).status_code == 503, (path, window)
        assert len(cache) == 1
    finally:
        sql_exec(admin, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    assert c.get("/api/metrics/summary").status_code == 200  # the kept answer, still served
    app.extensions["salespulse"]["db"].close()


# ------------------------------------------------------------ OpenAPI + pages
def test_openapi_describes_every_route_and_parameter(client):
    doc = get_json(client, "/api/openapi.json")
    assert doc["openapi"].startswith("3.")
    routes = {r.rule for r in client.application.url_map.iter_rules() if r.rule.startswith(("/api/", "/health"))}
    routes.discard("/api/openapi.json")
    assert routes == set(doc["paths"])
    for ep in ENDPOINTS:
        names = {p["name"] for p in doc["paths"][ep.path]["get"]["parameters"]}
        assert names == {f.alias or n for n, f in ep.params.model_fields.items()}
    limit = next(p for p in doc["paths"]["/api/metrics/top-products"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["minimum"] == 1 and limit["schema"]["maximum"] == 100


def test_pages_and_local_plotly(client):
    for path in ("/", "/restaurant", "/pipeline"):
        resp = client.get(path)
        assert resp.status_code == 200 and resp.mimetype == "text/html"
        html = resp.get_data(as_text=True)
        assert "/static/vendor/plotly.min.js" in html and "cdn" not in html.lower()
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    js = client.get("/static/vendor/plotly.min.js")
    assert js.status_code == 200 and b"plotly.js" in js.get_data()[:200]

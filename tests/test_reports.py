"""Spark report computations against a real PostgreSQL and a real Spark Connect
server: every value is checked against SQL written independently here (not the
report code's SQL), plus hand-computed values for a crafted minute."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import psycopg2
import pytest

from orchestration.reports import ReportResult, refresh_ecommerce_reports, refresh_restaurant_reports
from orchestration.reports.common import align_range, jdbc_for, read_query
from orchestration.reports.ecommerce import events_query
from salespulse.report_queries import peak_hours
from orchestration.reports.sql_reference import sql_revenue
from salespulse.settings import Settings

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)  # range under test: [T0, T0 + 5 min)
END = T0 + timedelta(minutes=5)
CATEGORIES = ["books", "garden", "toys"]
EVENT_TYPES = ["page_view", "search", "add_to_cart", "remove_from_cart", "purchase"]

ECOM_TABLES = ("report_ecommerce_overview_minute", "report_ecommerce_category_minute",
               "report_ecommerce_product_minute")
REST_TABLES = ("report_restaurant_overview_minute", "report_restaurant_item_minute",
               "report_restaurant_category_minute", "report_restaurant_channel_minute")


# --- seeding ---------------------------------------------------------------------
class Seeder:
    def __init__(self, url: str):
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True
        self.products: dict[str, tuple[str, str, Decimal]] = {}

    def product(self, pid: str, category: str, price: str) -> None:
        self.products[pid] = (f"Product {pid}", category, Decimal(price))
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO products (product_id, product_name, category, price) VALUES (%s,%s,%s,%s) "
                        "ON CONFLICT (product_id) DO NOTHING", (pid, f"Product {pid}", category, Decimal(price)))

    def event(self, ts, etype: str, user: str, session: str, product: str | None = None, quantity: int = 1):
        event_id = uuid.uuid4()
        with self.conn.cursor() as cur:
            cur.execute('INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, product_id) '
                        "VALUES (%s,%s,%s,%s,%s,%s)", (str(event_id), etype, ts, user, session, product))
            if etype == "purchase":
                amount = self.products[product][2] * quantity
                cur.execute('INSERT INTO transactions (transaction_id, event_id, product_id, quantity, total_amount, '
                            'payment_method, "timestamp") VALUES (%s,%s,%s,%s,%s,%s,%s)',
                            (str(event_id), str(event_id), product, quantity, amount, "card", ts))

    def order(self, ts, channel: str, items: list[tuple[str, str, str, int, str]]):
        """items: (item_id, name, category, quantity, unit_price)"""
        order_id = str(uuid.uuid4())
        lines = [(i, it, Decimal(price) * q) for i, (it, _n, _c, q, price) in enumerate(items)]
        total = sum(t for _i, _it, t in lines)
        with self.conn.cursor() as cur:
            cur.execute('INSERT INTO orders (order_id, "timestamp", restaurant_id, table_number, channel, '
                        "total_amount, payment_method, item_count) VALUES (%s,%s,'r1',%s,%s,%s,'pix',%s)",
                        (order_id, ts, 3 if channel == "dine_in" else None, channel, total,
                         sum(q for *_x, q, _p in items)))
            for line, (item_id, name, category, q, price) in enumerate(items):
                cur.execute("INSERT INTO order_items (order_id, line_number, item_id, name, category, quantity, "
                            'unit_price, line_total, "timestamp") VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)',
                            (order_id, line, item_id, name, category, q, Decimal(price), Decimal(price) * q, ts))
        return order_id


def seed_ecommerce(s: Seeder, seed: int = 7) -> None:
    """Random traffic in minutes 0, 1 and 4 of the range (2 and 3 stay empty),
    rows just outside both ends, and the crafted funnel minute (minute 1)."""
    rnd = random.Random(seed)
    for i in range(12):
        s.product(f"p{i}", CATEGORIES[i % 3], f"{rnd.randint(100, 9999) / 100:.2f}")
    for minute in (0, 4):
        for _ in range(120):
            ts = T0 + timedelta(minutes=minute, seconds=rnd.uniform(0, 59.999))
            user = f"u{rnd.randint(1, 15)}"
            session = f"s{user}-{rnd.randint(1, 2)}"
            etype = rnd.choice(EVENT_TYPES)
            product = f"p{rnd.randint(0, 11)}" if etype != "search" else None
            s.event(ts, etype, user, session, product, quantity=rnd.randint(1, 4))
    # boundaries: the last microsecond before the range, the range's end itself
    s.event(T0 - timedelta(microseconds=1), "purchase", "u1", "edge-a", "p1", 5)
    s.event(END, "purchase", "u1", "edge-b", "p2", 5)
    s.event(END, "page_view", "u1", "edge-b", "p2")
    seed_crafted_minute(s)


def seed_crafted_minute(s: Seeder) -> None:
    """Minute 1 (10:01 UTC), known values, written with non-UTC offsets."""
    s.product("fx1", "books", "10.00")
    s.product("fx2", "toys", "2.50")
    m = T0 + timedelta(minutes=1)
    brt = timezone(timedelta(hours=-3))
    at = lambda sec: (m + timedelta(seconds=sec)).astimezone(brt)  # noqa: E731 - same instant, other offset
    # A: view -> cart -> purchase (2 x fx1 = 20.00)
    s.event(at(1), "page_view", "alice", "A", "fx1")
    s.event(at(2), "add_to_cart", "alice", "A", "fx1")
    s.event(at(3), "purchase", "alice", "A", "fx1", 2)
    # B: view -> cart, no purchase (abandoned)
    s.event(at(4), "page_view", "bob", "B", "fx2")
    s.event(at(5), "add_to_cart", "bob", "B", "fx2")
    s.event(at(6), "remove_from_cart", "bob", "B", "fx2")
    # C: cart + purchase without a view (not in the funnel); 3 x fx2 = 7.50
    s.event(at(7), "add_to_cart", "carol", "C", "fx2")
    s.event(at(8), "purchase", "carol", "C", "fx2", 3)
    # D: same user as A, another session: view + search only
    s.event(at(9), "page_view", "alice", "D", "fx2")
    s.event(at(59.999999), "search", "alice", "D")


def seed_restaurant(s: Seeder, seed: int = 11) -> None:
    rnd = random.Random(seed)
    menu = [("m1", "Feijoada", "mains", "42.90"), ("m2", "Moqueca", "mains", "55.00"),
            ("d1", "Suco", "drinks", "9.50"), ("d2", "Cerveja", "drinks", "12.00"), ("s1", "Pudim", "desserts", "14.25")]
    for minute in (0, 1, 4):
        for _ in range(25):
            ts = T0 + timedelta(minutes=minute, seconds=rnd.uniform(0, 59.999))
            picks = rnd.sample(menu, rnd.randint(1, 3))
            s.order(ts, rnd.choice(["dine_in", "takeaway", "delivery"]),
                    [(i, n, c, rnd.randint(1, 3), p) for i, n, c, p in picks])
    # the same item twice in one order (two lines): one order for the item
    s.order(T0 + timedelta(minutes=1, seconds=30), "delivery",
            [("m1", "Feijoada", "mains", 1, "42.90"), ("m1", "Feijoada", "mains", 2, "42.90")])
    s.order(T0 - timedelta(microseconds=1), "takeaway", [("d1", "Suco", "drinks", 9, "9.50")])
    s.order(END, "takeaway", [("d1", "Suco", "drinks", 9, "9.50")])


# --- helpers ----------------------------------------------------------------------
def fetch(url: str, query: str, params=()) -> list[tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def report(url: str, table: str, columns: str, order: str) -> list[tuple]:
    return fetch(url, f"SELECT {columns} FROM {table} WHERE window_start >= %s AND window_start < %s ORDER BY {order}",
                 (T0, END))


def cents(x) -> Decimal:
    return Decimal(x).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


# Independent SQL: windows via to_timestamp(floor(epoch / 60) * 60) (the report
# code uses neither this SQL nor date_bin).
W = "to_timestamp(floor(extract(epoch FROM {col}) / 60) * 60)"

EXPECTED_EVENTS_SQL = f"""
WITH e AS (SELECT {W.format(col='"timestamp"')} AS w, * FROM events WHERE "timestamp" >= %(s)s AND "timestamp" < %(e)s),
s AS (SELECT w, session_id,
             max((event_type = 'page_view')::int) AS v, max((event_type = 'add_to_cart')::int) AS c,
             max((event_type = 'purchase')::int) AS p FROM e GROUP BY w, session_id)
SELECT w, count(*),
       sum((event_type = 'page_view')::int), sum((event_type = 'search')::int),
       sum((event_type = 'add_to_cart')::int), sum((event_type = 'remove_from_cart')::int),
       sum((event_type = 'purchase')::int),
       count(DISTINCT user_id), count(DISTINCT session_id),
       (SELECT sum(v) FROM s WHERE s.w = e.w), (SELECT sum(v * c) FROM s WHERE s.w = e.w),
       (SELECT sum(v * c * p) FROM s WHERE s.w = e.w)
FROM e GROUP BY w ORDER BY w
"""
EXPECTED_SALES_SQL = f"""
SELECT {W.format(col='t."timestamp"')} AS w, sum(t.total_amount), sum(t.quantity), count(*)
FROM transactions t WHERE t."timestamp" >= %(s)s AND t."timestamp" < %(e)s GROUP BY 1 ORDER BY 1
"""


def expected_ecommerce_overview(url: str) -> list[tuple]:
    params = {"s": T0, "e": END}
    sales = {r[0]: r[1:] for r in fetch(url, EXPECTED_SALES_SQL, params)}
    rows = []
    for w, *counts in fetch(url, EXPECTED_EVENTS_SQL, params):
        counts = [int(x) for x in counts]
        viewed, carted, bought = counts[-3:]
        revenue, units, orders = sales.get(w, (Decimal("0"), 0, 0))
        rows.append((w, *counts, bought / viewed if viewed else 0.0, cents(revenue), int(units),
                     cents(Decimal(revenue) / orders) if orders else Decimal("0.00"),
                     (carted - bought) / carted if carted else 0.0))
    return rows


OVERVIEW_COLS = ("window_start, events, page_views, searches, add_to_carts, remove_from_carts, purchases, "
                 "active_users, active_sessions, sessions_viewed, sessions_carted, sessions_purchased, "
                 "conversion_rate, revenue, units, avg_order_value, cart_abandonment_rate")


def assert_same_rows(actual: list[tuple], expected: list[tuple]) -> None:
    assert len(actual) == len(expected), (actual, expected)
    for a, e in zip(actual, expected):
        assert len(a) == len(e)
        for x, y in zip(a, e):
            if isinstance(y, float):
                assert x == pytest.approx(y, abs=1e-12), (a, e)
            else:
                assert x == y, (a, e)


@pytest.fixture
def db(database_url, monkeypatch):
    """(admin url, settings for the test DB); the database's default time zone
    is set far from UTC so a time-zone-dependent query would show."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        dbname = database_url.rsplit("/", 1)[1]
        cur.execute(f"ALTER DATABASE \"{dbname}\" SET timezone TO 'Asia/Kathmandu'")  # +05:45
    conn.close()
    monkeypatch.setenv("DATABASE_URL", database_url)
    return database_url, Settings(database_url=database_url)


# --- e-commerce ---------------------------------------------------------------------
def test_ecommerce_reports_match_independent_sql(db, spark):
    url, settings = db
    seed_ecommerce(Seeder(url))
    result = refresh_ecommerce_reports(spark, settings, T0, END)

    assert isinstance(result, ReportResult)
    assert (result.window_start, result.window_end) == (T0, END)
    overview = report(url, "report_ecommerce_overview_minute", OVERVIEW_COLS, "window_start")
    expected = expected_ecommerce_overview(url)
    assert [r[0] for r in expected] == [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=4)]
    assert_same_rows(overview, expected)

    category = report(url, "report_ecommerce_category_minute", "window_start, category, revenue, units, orders",
                      "window_start, category")
    assert category == fetch(url, f"""
        SELECT {W.format(col='t."timestamp"')}, p.category, sum(t.total_amount), sum(t.quantity), count(*)
        FROM transactions t, products p WHERE p.product_id = t.product_id
          AND t."timestamp" >= %s AND t."timestamp" < %s GROUP BY 1, 2 ORDER BY 1, 2""", (T0, END))
    product = report(url, "report_ecommerce_product_minute",
                     "window_start, product_id, product_name, category, revenue, units, orders",
                     "window_start, product_id")
    assert product == fetch(url, f"""
        SELECT {W.format(col='t."timestamp"')}, t.product_id, p.product_name, p.category,
               sum(t.total_amount), sum(t.quantity), count(*)
        FROM transactions t, products p WHERE p.product_id = t.product_id
          AND t."timestamp" >= %s AND t."timestamp" < %s GROUP BY 1, 2, 3, 4 ORDER BY 1, 2""", (T0, END))
    assert len(category) >= 6 and len(product) >= 10  # the random minutes did sell

    assert result.rows == {"report_ecommerce_overview_minute": 3,
                           "report_ecommerce_category_minute": len(category),
                           "report_ecommerce_product_minute": len(product)}
    n_events, n_tx = fetch(url, 'SELECT (SELECT count(*) FROM events WHERE "timestamp" >= %(s)s AND "timestamp" < %(e)s),'
                                ' (SELECT count(*) FROM transactions WHERE "timestamp" >= %(s)s AND "timestamp" < %(e)s)',
                           {"s": T0, "e": END})[0]
    assert result.source_rows == n_events + n_tx
    assert result.spark_seconds > 0

    # revenue identity with the plain-SQL reference
    with psycopg2.connect(url) as conn:
        assert sql_revenue(conn, "ecommerce", T0, END) == sum(r[13] for r in overview) \
            == sum(r[2] for r in category) == sum(r[4] for r in product)


def test_ecommerce_crafted_minute_values(db, spark):
    """Hand-computed values of the crafted minute (written with -03:00 offsets)."""
    url, settings = db
    s = Seeder(url)
    seed_crafted_minute(s)
    minute = T0 + timedelta(minutes=1)
    result = refresh_ecommerce_reports(spark, settings, minute, minute + timedelta(minutes=1))
    assert result.rows["report_ecommerce_overview_minute"] == 1
    (row,) = fetch(url, f"SELECT {OVERVIEW_COLS} FROM report_ecommerce_overview_minute")
    assert row[0] == minute
    assert row[1:12] == (10, 3, 1, 3, 1, 2,  # events, views, searches, carts, removes, purchases
                         3, 4,               # users alice/bob/carol, sessions A/B/C/D
                         3, 2, 1)            # funnel: viewed A,B,D; carted A,B; purchased A
    assert row[12] == pytest.approx(1 / 3)
    assert row[13:16] == (Decimal("27.50"), 5, Decimal("13.75"))
    assert row[16] == pytest.approx(0.5)  # B abandoned of carted A, B
    assert fetch(url, "SELECT category, revenue, units, orders FROM report_ecommerce_category_minute ORDER BY 1") == [
        ("books", Decimal("20.00"), 2, 1), ("toys", Decimal("7.50"), 3, 1)]
    assert fetch(url, "SELECT product_id, product_name, revenue FROM report_ecommerce_product_minute ORDER BY 1") == [
        ("fx1", "Product fx1", Decimal("20.00")), ("fx2", "Product fx2", Decimal("7.50"))]


def test_rerun_replaces_and_never_duplicates(db, spark):
    url, settings = db
    s = Seeder(url)
    seed_ecommerce(s)
    seed_restaurant(s)
    refresh_ecommerce_reports(spark, settings, T0, END)
    refresh_restaurant_reports(spark, settings, T0, END)
    first = {t: report(url, t, "*", "1, 2") for t in ECOM_TABLES + REST_TABLES}
    again_e = refresh_ecommerce_reports(spark, settings, T0, END)
    again_r = refresh_restaurant_reports(spark, settings, T0, END)
    for table in ECOM_TABLES + REST_TABLES:
        now = report(url, table, "*", "1, 2")
        assert len(now) == len(first[table]) > 0
        # identical except computed_at (overview tables)
        strip = (lambda rows: [r[:-1] for r in rows]) if table.endswith("overview_minute") else (lambda rows: rows)
        assert strip(now) == strip(first[table])
    assert sum(again_e.rows.values()) + sum(again_r.rows.values()) == sum(len(v) for v in first.values())

    # late data for minute 4 arrives; a re-run of a wider, unaligned range updates it in place
    s.event(T0 + timedelta(minutes=4, seconds=1), "purchase", "late", "late-s", "p3", 2)
    result = refresh_ecommerce_reports(spark, settings, T0 - timedelta(seconds=30), END - timedelta(seconds=30))
    assert (result.window_start, result.window_end) == (T0 - timedelta(minutes=1), END)
    assert_same_rows(report(url, "report_ecommerce_overview_minute", OVERVIEW_COLS, "window_start"),
                     expected_ecommerce_overview(url))
    (n,) = fetch(url, "SELECT count(*) FROM report_ecommerce_overview_minute WHERE window_start = %s",
                 (T0 + timedelta(minutes=4),))[0]
    assert n == 1
    # the minute before T0 holds one edge purchase: it is now reported too
    (rev,) = fetch(url, "SELECT revenue FROM report_ecommerce_overview_minute WHERE window_start = %s",
                   (T0 - timedelta(minutes=1),))[0]
    assert rev == s.products["p1"][2] * 5


def test_empty_window_writes_nothing_and_keeps_neighbours(db, spark):
    url, settings = db
    s = Seeder(url)
    seed_ecommerce(s)
    seed_restaurant(s)
    refresh_ecommerce_reports(spark, settings, T0, END)
    refresh_restaurant_reports(spark, settings, T0, END)
    before = {t: report(url, t, "*", "1, 2") for t in ECOM_TABLES + REST_TABLES}

    # minutes 2 and 3 have no data in either domain
    gap_start, gap_end = T0 + timedelta(minutes=2), T0 + timedelta(minutes=4)
    e = refresh_ecommerce_reports(spark, settings, gap_start, gap_end)
    r = refresh_restaurant_reports(spark, settings, gap_start, gap_end)
    assert e.rows == {t: 0 for t in ECOM_TABLES} and e.source_rows == 0
    assert r.rows == {t: 0 for t in REST_TABLES} and r.source_rows == 0
    for table in ECOM_TABLES + REST_TABLES:
        assert report(url, table, "*", "1, 2") == before[table]  # neighbours untouched
    # a range in a database with no rows at all
    far = datetime(2030, 1, 1, tzinfo=UTC)
    assert sum(refresh_ecommerce_reports(spark, settings, far, far + timedelta(hours=1)).rows.values()) == 0


def test_time_zones_are_utc(db, spark):
    """Aware non-UTC and naive (= UTC) range bounds, a non-UTC database time zone
    (fixture) and a non-UTC Spark session time zone give the same UTC windows."""
    url, settings = db
    seed_crafted_minute(Seeder(url))
    minute = T0 + timedelta(minutes=1)
    saved = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/St_Johns")  # -03:30
    try:
        brt = timezone(timedelta(hours=-3))
        result = refresh_ecommerce_reports(spark, settings, minute.astimezone(brt),
                                           (minute + timedelta(minutes=1)).astimezone(brt))
    finally:
        spark.conf.set("spark.sql.session.timeZone", saved)
    assert result.window_start == minute and result.window_start.utcoffset() == timedelta(0)
    rows = fetch(url, "SELECT window_start, events FROM report_ecommerce_overview_minute")
    assert rows == [(minute, 10)]
    result = refresh_ecommerce_reports(spark, settings, minute.replace(tzinfo=None),
                                       (minute + timedelta(minutes=1)).replace(tzinfo=None))
    assert result.window_start == minute
    assert fetch(url, "SELECT window_start, events FROM report_ecommerce_overview_minute") == [(minute, 10)]
    assert align_range(datetime(2026, 3, 1, 7, 1, 30, tzinfo=timezone(timedelta(hours=-3))),
                       datetime(2026, 3, 1, 10, 2, 0, 1)) == (minute, minute + timedelta(minutes=2))


def test_time_range_is_pushed_down_to_postgresql(db, spark):
    url, settings = db
    df = read_query(spark, jdbc_for(settings), events_query(T0, END))
    plan = df._explain_string(mode="formatted")
    assert "JDBCRelation" in plan or "JDBC" in plan, plan
    assert f"\"timestamp\" >= TIMESTAMPTZ '{T0.isoformat()}'" in plan, plan
    assert f"\"timestamp\" < TIMESTAMPTZ '{END.isoformat()}'" in plan, plan
    assert jdbc_for(settings).user == "salespulse_analytics"


# --- restaurant -----------------------------------------------------------------------
def test_restaurant_reports_match_independent_sql(db, spark):
    url, settings = db
    seed_restaurant(Seeder(url))
    result = refresh_restaurant_reports(spark, settings, T0, END)
    win = W.format(col='o."timestamp"')
    rng = 'o."timestamp" >= %(s)s AND o."timestamp" < %(e)s'
    p = {"s": T0, "e": END}

    overview = report(url, "report_restaurant_overview_minute", "window_start, orders, items_sold, revenue, avg_ticket",
                      "window_start")
    expected = [(w, n, int(items), rev, cents(rev / n)) for w, n, items, rev in fetch(url, f"""
        WITH o AS (SELECT {win} AS w, o.* FROM orders o WHERE {rng}),
             i AS (SELECT o.w, sum(i.quantity) AS items FROM order_items i JOIN o USING (order_id) GROUP BY 1)
        SELECT o.w, count(*), i.items, sum(o.total_amount) FROM o JOIN i USING (w)
        GROUP BY o.w, i.items ORDER BY 1""", p)]
    assert [r[0] for r in expected] == [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=4)]
    assert overview == expected

    item = report(url, "report_restaurant_item_minute", "window_start, item_id, name, category, quantity, revenue, orders",
                  "window_start, item_id")
    assert item == fetch(url, f"""
        SELECT {win}, i.item_id, max(i.name), max(i.category), sum(i.quantity), sum(i.line_total),
               count(DISTINCT i.order_id)
        FROM order_items i JOIN orders o ON o.order_id = i.order_id WHERE {rng} GROUP BY 1, 2 ORDER BY 1, 2""", p)
    category = report(url, "report_restaurant_category_minute", "window_start, category, quantity, revenue, orders",
                      "window_start, category")
    assert category == fetch(url, f"""
        SELECT {win}, i.category, sum(i.quantity), sum(i.line_total), count(DISTINCT i.order_id)
        FROM order_items i JOIN orders o ON o.order_id = i.order_id WHERE {rng} GROUP BY 1, 2 ORDER BY 1, 2""", p)
    channel = report(url, "report_restaurant_channel_minute", "window_start, channel, orders, revenue, avg_ticket",
                     "window_start, channel")
    assert channel == [(w, c, n, rev, cents(rev / n)) for w, c, n, rev in fetch(url, f"""
        SELECT {win}, o.channel, count(*), sum(o.total_amount) FROM orders o WHERE {rng}
        GROUP BY 1, 2 ORDER BY 1, 2""", p)]

    # the order with the same item on two lines counts once for the item
    m1 = [r for r in item if r[0] == T0 + timedelta(minutes=1) and r[1] == "m1"][0]
    (m1_orders,) = fetch(url, f"""SELECT count(DISTINCT order_id) FROM order_items i JOIN orders o USING (order_id)
                                  WHERE i.item_id = 'm1' AND {win} = %(m)s""", {"m": T0 + timedelta(minutes=1)})[0]
    assert m1[6] == m1_orders

    n_orders, n_lines = fetch(url, f"""SELECT count(DISTINCT o.order_id), count(*) FROM orders o
                                       JOIN order_items i USING (order_id) WHERE {rng}""", p)[0]
    assert result.source_rows == n_orders + n_lines
    assert result.rows == {"report_restaurant_overview_minute": 3, "report_restaurant_item_minute": len(item),
                           "report_restaurant_category_minute": len(category),
                           "report_restaurant_channel_minute": len(channel)}
    with psycopg2.connect(url) as conn:
        assert sql_revenue(conn, "restaurant", T0, END) == sum(r[3] for r in overview) == sum(r[3] for r in channel)
        hours = peak_hours(conn, T0 - timedelta(hours=1), END)
    assert hours == [(10, sum(r[1] for r in overview), sum(r[3] for r in overview),
                      cents(sum(r[3] for r in overview) / sum(r[1] for r in overview)))]


def test_sql_revenue_rejects_unknown_domain(db):
    url, _settings = db
    with psycopg2.connect(url) as conn, pytest.raises(ValueError):
        sql_revenue(conn, "bakery", T0, END)


def test_long_range_reads_in_partitions_with_the_same_result(db, spark):
    """A backfill-sized range is read in several JDBC partitions (stride
    predicates on "timestamp"); the reports equal the small-range run."""
    url, settings = db
    s = Seeder(url)
    seed_ecommerce(s)
    seed_restaurant(s)
    refresh_ecommerce_reports(spark, settings, T0, END)
    refresh_restaurant_reports(spark, settings, T0, END)
    small = {t: report(url, t, "*", "1, 2") for t in ECOM_TABLES + REST_TABLES}

    wide_start, wide_end = T0 - timedelta(hours=3), T0 + timedelta(hours=3)
    plan = read_query(spark, jdbc_for(settings), events_query(wide_start, wide_end), wide_start, wide_end) \
        ._explain_string(mode="formatted")
    assert "numPartitions=3" in plan, plan
    e = refresh_ecommerce_reports(spark, settings, wide_start, wide_end)
    r = refresh_restaurant_reports(spark, settings, wide_start, wide_end)
    # the wide range also holds the edge rows just outside [T0, END): two more minutes
    assert e.rows["report_ecommerce_overview_minute"] == 3 + 2
    assert r.rows["report_restaurant_overview_minute"] == 3 + 2
    for table in ECOM_TABLES + REST_TABLES:
        strip = (lambda rows: [x[:-1] for x in rows]) if table.endswith("overview_minute") else (lambda rows: rows)
        assert strip(report(url, table, "*", "1, 2")) == strip(small[table])  # same rows inside [T0, END)
    assert_same_rows(report(url, "report_ecommerce_overview_minute", OVERVIEW_COLS, "window_start"),
                     expected_ecommerce_overview(url))
    with psycopg2.connect(url) as conn:
        for domain in ("ecommerce", "restaurant"):
            table = f"report_{domain}_overview_minute"
            (total,) = fetch(url, f"SELECT sum(revenue) FROM {table}")[0]
            assert total == sql_revenue(conn, domain, wide_start, wide_end)

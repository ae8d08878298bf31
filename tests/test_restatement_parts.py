"""Unit tests of the pure parts of the restatements: window ranges, run tags,
the scan bound from the marks, the windows that differ, the cursor."""

from datetime import datetime, timedelta, timezone

import pytest

from orchestration.reports.common import in_span, sql_ts, window_ranges
from orchestration.reports.windows import changed_windows, clip_ranges, merge_windows, ranges_sql
from orchestration.restatement import decode_minutes, encode_minutes, tag_name, windows_from_tags
from orchestration.sensors.late_rows import Cursor, Mark, by_hour, differing, next_since

H = datetime(2026, 3, 10, 9, 0, tzinfo=timezone.utc)
M = timedelta(minutes=1)


def test_windows_merge_into_contiguous_ranges():
    windows = [H + 7 * M, H + 5 * M, H + 6 * M, H + 30 * M, H + 6 * M + timedelta(seconds=20)]
    assert merge_windows(windows) == [(H + 5 * M, H + 8 * M), (H + 30 * M, H + 31 * M)]
    assert merge_windows([]) == []
    naive = datetime(2026, 3, 10, 9, 5)
    assert merge_windows([naive]) == [(H + 5 * M, H + 6 * M)]


def test_ranges_are_clipped_to_the_partition():
    ranges = [(H - 2 * M, H + M), (H + 59 * M, H + 61 * M), (H + 70 * M, H + 71 * M)]
    assert clip_ranges(ranges, H, H + 60 * M) == [(H, H + M), (H + 59 * M, H + 60 * M)]
    assert window_ranges(None, H, H + 60 * M) is None
    with pytest.raises(ValueError, match="none of the windows"):
        window_ranges([H + 70 * M], H, H + 60 * M)


def test_the_read_predicate_narrows_the_range_to_the_windows():
    ranges = merge_windows([H + 5 * M, H + 30 * M])
    sql = ranges_sql('"timestamp"', ranges, sql_ts)
    assert sql.count(" OR ") == 1 and sql.startswith("(") and sql.endswith(")")
    assert sql_ts(H + 5 * M) in sql and sql_ts(H + 31 * M) in sql
    assert in_span("ts", H, H + 60 * M) == f"ts >= {sql_ts(H)} AND ts < {sql_ts(H + 60 * M)}"
    assert in_span("ts", H, H + 60 * M, ranges).endswith(" AND " + ranges_sql("ts", ranges, sql_ts))
    with pytest.raises(ValueError):
        ranges_sql("ts", [], sql_ts)


def test_changed_windows_count_a_missing_row_as_zero():
    before = {H: 3, H + M: 4, H + 2 * M: 5}
    after = {H: 3, H + M: 6, H + 3 * M: 1}
    assert changed_windows(before, after) == {H + M: (4, 6), H + 2 * M: (5, 0), H + 3 * M: (0, 1)}


def test_run_tags_hold_the_minutes_of_the_hour():
    tag = encode_minutes([H + 30 * M, H + 5 * M, H + 5 * M], H)
    assert tag == "5,30"
    assert decode_minutes(tag, H) == [H + 5 * M, H + 30 * M]
    assert windows_from_tags({tag_name("ecommerce"): tag}, "ecommerce", H) == [H + 5 * M, H + 30 * M]
    assert windows_from_tags({tag_name("ecommerce"): tag}, "restaurant", H) is None
    for bad in ("", "5,x", "60", "-1", "5;6"):
        with pytest.raises(ValueError, match="minutes 0-59"):
            decode_minutes(bad, H)
    for bad in ([H + 60 * M], [H - M], [H + timedelta(seconds=30)], []):
        with pytest.raises(ValueError):
            encode_minutes(bad, H)


def test_the_scan_bound_follows_the_oldest_open_transaction():
    margin = timedelta(seconds=5)
    marks = [Mark(H, 100), Mark(H + M, 200), Mark(H + 2 * M, 300)]
    # every open transaction got its id after mark 200 was taken: scan from it
    since, kept, fell_back = next_since(marks, xmin=250, margin=margin)
    assert (since, kept, fell_back) == (H + M - margin, marks[1:], False)
    # a transaction with id 150 is still open: it may hold rows stamped after mark 100 only
    since, kept, fell_back = next_since(list(reversed(marks)), xmin=150, margin=margin)
    assert (since, kept, fell_back) == (H - margin, marks, False)
    # older than every mark: the oldest mark, flagged
    since, kept, fell_back = next_since(marks, xmin=50, margin=margin)
    assert (since, kept, fell_back) == (H - margin, marks, True)


def test_windows_differ_when_counts_differ_or_no_report_row():
    rows = [(H, 5, 5), (H + M, 6, 5), (H + 2 * M, 3, None), (H + 3 * M, 0, None), (H + 4 * M, 0, 2)]
    assert differing(rows) == [H + M, H + 2 * M, H + 4 * M]


def test_windows_group_by_utc_hour():
    berlin = timezone(timedelta(hours=1))
    w = datetime(2026, 3, 10, 10, 59, tzinfo=berlin)  # 09:59 UTC
    assert by_hour([H + 61 * M, w, H]) == {H: [H, w], H + 60 * M: [H + 61 * M]}


def test_cursor_round_trip_and_former_format():
    cursor = Cursor(since=H, marks=[Mark(H, 7)], pending={"ecommerce": [H + M], "restaurant": []},
                    ids={"events": 3})
    again = Cursor.from_json(cursor.to_json())
    assert again == Cursor(since=H, marks=[Mark(H, 7)], pending={"ecommerce": [H + M]}, ids={"events": 3})
    assert Cursor.from_json(None) is None
    assert Cursor.from_json('{"events": 120, "orders": 7}') is None  # the former id cursor

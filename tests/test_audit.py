"""``salespulse audit`` against a real PostgreSQL (conftest ``database_url``),
with ledger rows and raw rows inserted by hand: exit 0 when every partition's
ranges are contiguous and the raw tables agree, 1 (and the gap printed) when not."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from salespulse import cli
from salespulse.ops.audit import Discontinuity
from salespulse.settings import get_settings
from tests.support.orchestration import execute

GROUP = "salespulse-ingest"
EC = "ecommerce.events"
RO = "restaurant.orders"


def ledger(url, first, last, *, partition=0, topic=EC, incarnation="inc-1", group=GROUP,
           stored=None, duplicates=0, dead=0):
    """One batch range; ``stored`` defaults to every message not counted otherwise."""
    messages = last - first + 1
    stored = messages - duplicates - dead if stored is None else stored
    execute(url, """INSERT INTO ingest_ledger (consumer_group, topic, topic_incarnation, "partition",
                                               first_offset, last_offset, messages, stored, duplicates, dead_lettered)
                    VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)""",
            (group, topic, incarnation, partition, first, last, messages, stored, duplicates, dead))


@pytest.fixture
def audit_db(database_url, monkeypatch):
    """The CLI's settings point at the test database (no broker needed)."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


def audit(capsys, *args):
    code = cli.main(["audit", *args])
    out = capsys.readouterr().out
    return code, out


@pytest.fixture
def contiguous(audit_db):
    ledger(audit_db, 0, 9, duplicates=2)
    ledger(audit_db, 10, 19, dead=1)
    ledger(audit_db, 0, 4, partition=1)
    # the broker restarted: a new topic incarnation starts again at 0
    ledger(audit_db, 0, 2, incarnation="inc-2")
    ledger(audit_db, 0, 7, topic=RO, partition=2)
    return audit_db


def test_contiguous_ledger_exits_0(contiguous, capsys):
    code, out = audit(capsys)
    assert code == 0, out
    lines = out.splitlines()
    (p0,) = [line for line in lines if "inc-1" in line and "0..19" in line]
    # messages, stored, duplicates, dead-lettered, gaps of partition 0's two batches
    assert p0.split()[-5:] == ["20", "17", "2", "1", "0"]
    assert any("inc-2" in line and "0..2" in line for line in lines)
    assert any(RO in line and "0..7" in line for line in lines)
    assert "gaps/overlaps: 0" in out and "consistency violations: 0" in out and "OK" in lines[-1]

    code, out = audit(capsys, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["gaps"] == [] and report["consistency_violations"] == 0
    assert len(report["partitions"]) == 4


def test_a_gap_exits_1_and_is_printed(contiguous, capsys):
    ledger(contiguous, 25, 29)  # offsets 20..24 of partition 0 are in no batch
    code, out = audit(capsys)
    assert code == 1
    (gap,) = [line for line in out.splitlines() if line.startswith("GAP")]
    assert f"{EC}[0]" in gap and "inc-1" in gap and "offsets 20..24 (5)" in gap
    assert "gaps/overlaps: 1" in out and out.splitlines()[-1].startswith("FAILED")

    code, out = audit(capsys, "--json")
    assert code == 1
    (found,) = json.loads(out)["gaps"]
    assert found == {"consumer_group": GROUP, "topic": EC, "topic_incarnation": "inc-1", "partition": 0,
                     "expected_first": 20, "found_first": 25, "kind": "gap"}


def test_group_filter(contiguous, capsys):
    ledger(contiguous, 0, 4, group="other-group")
    ledger(contiguous, 9, 12, group="other-group")
    assert audit(capsys)[0] == 1
    code, out = audit(capsys, "--group", GROUP)
    assert code == 0 and "other-group" not in out
    code, out = audit(capsys, "--group", "other-group")
    assert code == 1 and "offsets 5..8 (4)" in out and GROUP + " " not in out


def test_a_purchase_without_its_transaction_exits_1(contiguous, capsys):
    event_id = str(uuid.uuid4())
    execute(contiguous, """INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, product_id)
                           VALUES (%s, 'purchase', %s, 'u-1', 's-1', 'p-1')""",
            (event_id, datetime(2026, 3, 10, 9, 30, tzinfo=timezone.utc)))
    code, out = audit(capsys)
    assert code == 1
    assert "gaps/overlaps: 0" in out and "consistency violations: 1" in out
    assert event_id in out
    report = json.loads(audit(capsys, "--json")[1])
    assert report["consistency_violations"] == 1 and event_id in report["violations"][0]["key"]


def test_empty_ledger_is_ok(audit_db, capsys):
    code, out = audit(capsys)
    assert code == 0 and "no batches recorded" in out


def test_discontinuity_wording():
    gap = Discontinuity(GROUP, EC, "", 3, 100, 103)
    overlap = Discontinuity(GROUP, EC, "inc-9", 3, 100, 95)
    assert gap.kind == "gap" and "offsets 100..102 (3) are in no batch" in gap.describe()
    assert "incarnation -" in gap.describe()
    assert overlap.kind == "overlap" and "starts at 95" in overlap.describe() and "up to 99" in overlap.describe()

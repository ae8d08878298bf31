"""The hostile-stream campaign, short form (the long form is ``make chaos``):
the same script, ``bench/chaos.py``, with 500 valid + 500 hostile messages,
3 consumer SIGKILLs and 1 PostgreSQL restart, against its own real broker and
database. Plus the oracle that decides where each hostile message must end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime

import pytest

from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC
from services.producer.simulation import EcommerceSimulation, RestaurantSimulation
from tests.support.hostile import (
    CONFLICT_REASON,
    DEAD_LETTER,
    DUPLICATE,
    KINDS,
    STORED,
    WINDOW_REASON,
    Message,
    Oracle,
    Recipe,
    draw_recipes,
    materialize,
)
from tests.support.consumer import REPO


@pytest.mark.slow(reason="fault campaign: bench/chaos.py with its own broker and PostgreSQL, consumer SIGKILLs, a PostgreSQL restart")
def test_short_campaign_every_message_ends_in_exactly_one_place():
    cmd = [sys.executable, "bench/chaos.py", "--valid", "500", "--hostile", "500", "--kills", "3",
           "--pg-restarts", "1", "--produce-seconds", "20", "--seed", "7", "--catch-up-timeout", "240"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=560)
    report = run.stdout[-6000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["checks_failed"] == [], report
    assert figures["lost"] == 0, report
    assert figures["crashes"] == 0, report
    assert (figures["kills"], figures["pg_restarts"]) == (3, 1), report
    assert figures["messages_in"] + figures["refused_at_produce"] == 1000, report
    assert figures["stored"] == figures["expected_stored"] > 0, report
    assert figures["duplicates"] == figures["expected_duplicates"] > 0, report
    assert figures["dead_lettered"] == figures["expected_dead_letters"] > 0, report
    assert figures["lag_end"] == 0 and figures["consumer_up"], report
    assert run.returncode == 0, report


# --------------------------------------------------------------------------- the oracle
def _valid(topic: str, seed: int = 3) -> Message:
    sim = EcommerceSimulation(seed=seed) if topic == ECOMMERCE_TOPIC.name else RestaurantSimulation(seed=seed)
    key, value = sim.next_message()
    return Message(topic, key.encode(), value)


def _fate(recipe: Recipe, topic: str = ECOMMERCE_TOPIC.name):
    oracle = Oracle(300, datetime.fromisoformat("2000-01-01T00:00:00+00:00"))
    original = _valid(topic, seed=1)
    assert oracle.fate(topic, original.value).fate == STORED
    message = materialize(recipe, _valid(topic, seed=2), [original])
    return message, oracle.fate(message.topic, message.value)


def test_oracle_resends_identical_is_duplicate_other_content_is_conflict():
    for topic in (ECOMMERCE_TOPIC.name, RESTAURANT_TOPIC.name):
        _msg, fate = _fate(Recipe("exact_resend", False, {"target": 0}), topic)
        assert fate.fate == DUPLICATE
        for mutation in range(3):
            msg, fate = _fate(Recipe("conflicting_resend", False, {"target": 0, "mutation": mutation, "text": "x"}),
                              topic)
            assert (fate.fate, fate.hint) == (DEAD_LETTER, CONFLICT_REASON), msg.value


def test_oracle_window_storage_limits_and_what_stays_valid():
    far = Recipe("far_future", False, {"when": datetime(9999, 12, 31, 23, 59, 59)})
    ancient = Recipe("ancient", False, {"when": datetime(1970, 1, 1)})
    for recipe in (far, ancient):
        fate = _fate(recipe)[1]
        assert (fate.fate, fate.hint) == (DEAD_LETTER, WINDOW_REASON)
    nul = Recipe("nul_in_value", False, {"escaped": True, "field": 0, "at": 1})
    huge = Recipe("huge_number", False, {"field": 0, "number": "1" + "0" * 12})
    for recipe in (nul, huge):  # valid by the contract, but PostgreSQL cannot hold it
        message, fate = _fate(recipe)
        assert fate.fate == DEAD_LETTER and fate.model is not None, message.value
    extra = Recipe("extra_fields", False, {"extra": {"x_a": [1, {"b": None}]}})
    nul_key = Recipe("nul_key", False, {"key": b"k\x00", "valid_value": True, "bad": b"x"})
    sql = Recipe("sql_in_strings", False, {"field": 0, "snippet": "'; DROP TABLE events; --", "suffix": ""})
    for recipe in (extra, nul_key, sql):  # key, extra fields and SQL-looking text do not make a message invalid
        assert _fate(recipe)[1].fate == STORED
    for recipe in (Recipe("empty_value", False), Recipe("none_value", False),
                   Recipe("deep_nesting", False, {"depth": 10_000, "brace": False, "whole": False})):
        assert _fate(recipe)[1].fate == DEAD_LETTER


def test_oracle_an_amount_no_decimal_can_round_is_refused_by_the_contract():
    """1e50 once escaped the contract as an InvalidOperation; now the oracle,
    which accepts only a ContractError as a refusal, sees a contract refusal."""
    for field in range(3):
        for number in ("1e50", "1" + "0" * 400, "123456789012345678901234567890.5"):
            message, fate = _fate(Recipe("huge_number", False, {"field": field, "number": number}))
            assert fate.fate == DEAD_LETTER and fate.model is None, message.value


def test_recipes_are_seeded_and_cover_every_kind():
    first = draw_recipes(len(KINDS) + 20, seed=5)
    assert first == draw_recipes(len(KINDS) + 20, seed=5)
    assert {r.kind for r in first} == set(KINDS)
    assert first != draw_recipes(len(KINDS) + 20, seed=6)

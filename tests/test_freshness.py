"""Freshness per domain: ``GET /api/pipeline/freshness`` against a real PostgreSQL, each
measure in each state (ok / late / stale, unknown) from seeded rows, values checked
against figures computed here; bad parameters; the OpenAPI document; and the Dagster
``reports_fresh`` checks (health job and ``freshness_sensor``) agreeing with the API on
the same database state."""

from __future__ import annotations

import math

import pytest
from dagster import (
    AssetCheckSeverity, AssetSelection, DagsterInstance, Definitions, asset, build_sensor_context, define_asset_job,
    in_process_executor,
)

from dashboard import create_app
from orchestration.assets.partitions import HOURLY
from orchestration.checks.freshness import ecommerce_reports_fresh, restaurant_reports_fresh
from orchestration.resources import PostgresResource
from orchestration.sensors.freshness import freshness_sensor
from salespulse.freshness import DOMAINS, RECORD_MAX_AGE_S, STATES, Targets, state, worst
from salespulse.settings import Settings
from tests.support.freshness_seed import Scenario, clear, seed

T = Targets.from_settings(Settings())  # the defaults, which the app and Dagster use in these tests


def app_settings(url: str, **kw) -> Settings:
    return Settings(**{"database_url": url, "dashboard_cache_ttl": 0, "dashboard_rate_limit": "100000/minute",
                       "dashboard_token": None, "cors_origins": "", **kw})


@pytest.fixture
def api(database_url):
    apps = []

    def get(query=None, status=200, **settings):
        if not apps or settings:
            apps.append(create_app(app_settings(database_url, **settings)))
        resp = apps[-1].test_client().get("/api/pipeline/freshness", query_string=query or {})
        assert resp.status_code == status, resp.get_data(as_text=True)
        assert resp.is_json
        return resp.get_json()

    yield get
    for app in apps:
        app.extensions["salespulse"]["db"].close()


def percentile_cont(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def scenario(target_state: str) -> Scenario:
    """Each measure of a domain in ``target_state``, values derived from the targets; plus one
    late event (stamped 30 s beyond the late bound) that must not count in the latency."""
    k = {"ok": 0.5, "late": (1 + T.stale_factor) / 2, "stale": T.stale_factor * 1.5}[target_state]
    rows = [T.rows_s * k * f for f in (0.6, 0.8, 0.9, 1.0)] if target_state != "ok" else \
           [T.rows_s * k * f for f in (0.2, 0.5, 0.9, 1.0)]
    assert max(rows) < T.late_event_s  # counted, not taken for late data
    return Scenario(latencies_s=rows, late_s=[T.late_event_s + 30], report_behind_s=T.reports_s * k,
                    lag=int(T.lag_messages * k))


# ----------------------------------------------------------------- the rule
def test_state_rule():
    target, factor = 5.0, 3.0
    assert state(None, target, factor) == "unknown"
    assert [state(v, target, factor) for v in (0, target, target + 0.01, target * factor, target * factor + 0.01)] \
        == ["ok", "ok", "late", "late", "stale"]
    assert worst(["ok", "unknown", "late"]) == "late" and worst(["unknown", "stale", "ok"]) == "stale"
    assert worst(["unknown", "unknown"]) == "unknown" and worst([]) == "unknown"
    assert STATES.index("unknown") < STATES.index("ok")  # unknown never outweighs a known state


# ------------------------------------------------------------------- the API
@pytest.mark.parametrize("wanted", ["ok", "late", "stale"])
def test_each_measure_in_each_state(database_url, api, wanted):
    other = {"ok": "stale", "late": "ok", "stale": "late"}[wanted]  # the other domain, to see them apart
    seen = {"ecommerce": scenario(wanted), "restaurant": scenario(other)}
    for domain, s in seen.items():
        seed(database_url, domain, s)
    body = api()
    assert set(body["domains"]) == set(DOMAINS)
    assert body["state"] == worst([wanted, other])
    assert body["targets"] == {"rows_s": T.rows_s, "reports_s": T.reports_s, "lag_messages": T.lag_messages,
                               "stale_factor": T.stale_factor, "late_event_s": T.late_event_s}
    for domain, s in seen.items():
        expected = wanted if domain == "ecommerce" else other
        got = body["domains"][domain]
        assert got["state"] == expected
        rows, reports, lag = got["rows"], got["reports"], got["lag"]
        assert (rows["state"], reports["state"], lag["state"]) == (expected,) * 3, got
        # the late event is left out of the sample
        assert rows["samples"] == len(s.latencies_s)
        assert rows["p50_s"] == pytest.approx(percentile_cont(s.latencies_s, 0.5), abs=0.01)
        assert rows["p95_s"] == pytest.approx(percentile_cont(s.latencies_s, 0.95), abs=0.01)
        assert rows["target_s"] == T.rows_s and rows["stale_after_s"] == T.rows_s * T.stale_factor
        assert reports["has_window"] and reports["behind_s"] == pytest.approx(s.report_behind_s, abs=0.01)
        assert reports["age_s"] >= reports["behind_s"]  # the newest event is not in the future
        assert lag["messages"] == s.lag and lag["topic"] == DOMAINS[domain].topic


def test_unknown_without_data_and_stale_without_any_report(database_url, api):
    body = api()
    assert body["state"] == "unknown"
    for got in body["domains"].values():
        assert got["state"] == "unknown"
        assert got["rows"]["samples"] == 0 and got["rows"]["p95_s"] is None
        assert got["reports"]["as_of"] is None and got["lag"]["messages"] is None
    # rows, no report window at all; a lag observation nobody refreshed
    seed(database_url, "restaurant", Scenario(latencies_s=[T.rows_s / 2], lag=0,
                                              lag_age_s=RECORD_MAX_AGE_S + 60))
    got = api()["domains"]["restaurant"]
    assert got["rows"]["state"] == "ok"
    assert got["reports"]["state"] == "stale" and not got["reports"]["has_window"]
    assert got["lag"]["state"] == "unknown" and got["lag"]["messages"] == 0
    assert got["lag"]["observation_age_s"] > RECORD_MAX_AGE_S
    assert got["state"] == "stale"
    # only late data arrived: no latency to judge (it is restated, not pipeline latency)
    clear(database_url)
    seed(database_url, "ecommerce", Scenario(late_s=[T.late_event_s * 3], report_behind_s=0))
    rows = api()["domains"]["ecommerce"]["rows"]
    assert rows["samples"] == 0 and rows["state"] == "unknown" and rows["newest_event_at"] is not None


def test_targets_come_from_the_settings(database_url, api):
    s = scenario("stale")
    seed(database_url, "ecommerce", s)
    assert api()["domains"]["ecommerce"]["state"] == "stale"
    looser = api(freshness_rows_target_s=max(s.latencies_s), freshness_reports_target_s=s.report_behind_s,
                 freshness_lag_target_messages=s.lag)
    got = looser["domains"]["ecommerce"]
    assert (got["rows"]["state"], got["reports"]["state"], got["lag"]["state"]) == ("ok", "ok", "ok")
    stricter = api(freshness_stale_factor=1.0, freshness_rows_target_s=min(s.latencies_s) / 2)
    assert stricter["domains"]["ecommerce"]["rows"]["state"] == "stale"  # factor 1: no "late" band


def test_domain_parameter_and_bad_values(database_url, api):
    body = api({"domain": "restaurant"})
    assert list(body["domains"]) == ["restaurant"]
    for bad in ("bogus", "ECOMMERCE", "", "x" * 5000, "ecommerce\x00"):
        err = api({"domain": bad}, status=400)
        assert err["error"] == "invalid_parameter" and err["status"] == 400
        assert err["parameter"] == "domain", err


def test_openapi_documents_the_endpoint(database_url):
    app = create_app(app_settings(database_url))
    try:
        doc = app.test_client().get("/api/openapi.json").get_json()
    finally:
        app.extensions["salespulse"]["db"].close()
    op = doc["paths"]["/api/pipeline/freshness"]["get"]
    (param,) = op["parameters"]
    assert param["name"] == "domain" and sorted(param["schema"]["enum"]) == sorted(DOMAINS)
    assert "400" in op["responses"] and "ok / late / stale" in op["summary"]


# ----------------------------------------------------------------- Dagster
def _stand_in(name):
    @asset(name=name, partitions_def=HOURLY, group_name=name.split("_")[0], description="stand-in")
    def _report():
        return None

    return _report


def dagster_evaluations(url: str) -> dict[str, dict]:
    """domain -> {state, passed, severity} as the health job's checks and freshness_sensor record them."""
    postgres = PostgresResource(database_url=url)
    checks = [ecommerce_reports_fresh, restaurant_reports_fresh]
    defs = Definitions(assets=[_stand_in("ecommerce_reports"), _stand_in("restaurant_reports")], asset_checks=checks,
                       jobs=[define_asset_job("health", selection=AssetSelection.checks(*checks))],
                       resources={"postgres": postgres}, executor=in_process_executor)
    result = defs.resolve_job_def("health").execute_in_process()
    assert result.success
    job = {e.asset_key.to_user_string().split("_")[0]: e for e in result.get_asset_check_evaluations()}
    with DagsterInstance.ephemeral() as instance:  # the sensor also reads the run queue
        sensed = freshness_sensor(build_sensor_context(instance=instance), postgres=postgres).asset_events
    sensor = {e.asset_key.to_user_string().split("_")[0]: e for e in sensed if e.check_name == "reports_fresh"}
    out = {}
    for domain in DOMAINS:
        a, b = job[domain], sensor[domain]
        assert a.check_name == b.check_name == "reports_fresh"
        assert (a.metadata["state"].value, a.passed, a.severity) == (b.metadata["state"].value, b.passed, b.severity)
        out[domain] = {"state": a.metadata["state"].value, "passed": a.passed, "severity": a.severity,
                       "measures": tuple(a.metadata[f"{m}_state"].value for m in ("rows", "reports", "lag"))}
    return out


def test_dagster_and_the_dashboard_agree(database_url, api):
    mapping = {"ok": (True, None), "unknown": (True, None), "late": (False, AssetCheckSeverity.WARN),
               "stale": (False, AssetCheckSeverity.ERROR)}

    def agree():
        shown = api()["domains"]
        checked = dagster_evaluations(database_url)
        for domain in DOMAINS:
            s, c = shown[domain], checked[domain]
            assert c["state"] == s["state"], (domain, s, c)
            assert c["measures"] == (s["rows"]["state"], s["reports"]["state"], s["lag"]["state"])
            passed, severity = mapping[s["state"]]
            assert c["passed"] == passed and (severity is None or c["severity"] == severity), c
        return {d: shown[d]["state"] for d in DOMAINS}

    assert agree() == {"ecommerce": "unknown", "restaurant": "unknown"}
    seed(database_url, "ecommerce", scenario("late"))
    seed(database_url, "restaurant", scenario("stale"))
    assert agree() == {"ecommerce": "late", "restaurant": "stale"}
    clear(database_url)
    seed(database_url, "ecommerce", scenario("ok"))
    seed(database_url, "restaurant", scenario("ok"))
    assert agree() == {"ecommerce": "ok", "restaurant": "ok"}

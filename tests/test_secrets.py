"""Secrets: the one start-up check of every SalesPulse container, and the local
defaults that apply to the local stack's embedded PostgreSQL only.

* ``salespulse check-secrets`` (salespulse/secret_check.py) refuses an empty
  secret, a published one (a ``change-me`` placeholder, any value of
  .env.example, a local default) and a short one; run here as compose runs it,
  through each service's entry point (tests/support/compose_local.py);
* ``salespulse migrate`` and ``reset-db`` without the role variables, pointed
  at a database that is not the local stack's, refuse before touching it;
* the local defaults still apply to the local stack's embedded cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
import pytest
import yaml

from salespulse.secret_check import MIN_LENGTH, SECRET_VARIABLES, URL_VARIABLES, problems, secret_problem
from salespulse.settings import (LOCAL_DATABASE_URL, LOCAL_ROLE_PASSWORDS, ROLE_INGEST, SecretError, Settings,
                                 with_credentials)
from tests.support.compose_local import COMPOSE_ADMIN, COMPOSE_SECRETS, Stack, Translator, compose_admin_role
from tests.test_compose import COMPOSE_FILE, our_image, read_env_file, interpolate

REPO = Path(__file__).resolve().parent.parent
GOOD = "Qx7v2Lr9Tz0Wm4Kp8Ns1Yc6B"  # what `secrets.token_urlsafe` gives, shortened


# ---------------------------------------------------------------- the rule
def test_every_published_value_is_refused():
    example = read_env_file(REPO / ".env.example")
    published = {k: v for k, v in example.items() if k in SECRET_VARIABLES}
    assert set(published) == set(SECRET_VARIABLES), "a secret of .env.example the check does not know"
    for name, value in published.items():
        assert "published placeholder" in secret_problem(name, value), name
    for role, value in LOCAL_ROLE_PASSWORDS.items():
        assert "local default" in secret_problem("INGEST_DB_PASSWORD", value), role
    assert "local default" in secret_problem("POSTGRES_PASSWORD", "salespulse")
    assert "placeholder" in secret_problem("REDIS_PASSWORD", "change-me-but-long-enough-now")


def test_empty_and_short_secrets_are_refused_and_a_generated_one_passes():
    assert "empty" in secret_problem("REDIS_PASSWORD", "")
    assert f"shorter than {MIN_LENGTH}" in secret_problem("REDIS_PASSWORD", "x" * (MIN_LENGTH - 1))
    assert secret_problem("REDIS_PASSWORD", "x" * MIN_LENGTH) is None
    assert secret_problem("DASHBOARD_TOKEN", GOOD) is None


def test_passwords_inside_urls_are_checked_and_never_printed():
    env = {"DATABASE_URL": "postgresql://salespulse:salespulse@db:5432/salespulse",
           "DASHBOARD_RATE_LIMIT_STORAGE": "redis://:change-me-redis@redis:6379/0",
           "INGEST_DATABASE_URL": f"postgresql://u:{GOOD}@db/x", "DASHBOARD_DB_PASSWORD": "tiny-pw-9x"}
    found = problems(env)
    assert len(found) == 3, found
    assert any("DATABASE_URL" in p for p in found) and any("DASHBOARD_RATE_LIMIT_STORAGE" in p for p in found)
    assert not any(secret in p for p in found for secret in ("salespulse@", "change-me-redis", "tiny-pw-9x", GOOD))
    # a URL without a password (compose's service URLs) has nothing to check
    assert problems({"DATABASE_URL": "postgresql://postgres:5432/salespulse"}) == []
    assert set(URL_VARIABLES) >= {"DATABASE_URL", "DASHBOARD_RATE_LIMIT_STORAGE"}


# ---------------------------------------------------------------- through compose's entry point
def compose_services(**env) -> dict:
    values = read_env_file(REPO / ".env.example")
    values.update(COMPOSE_SECRETS)
    values.update(env)
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), values)["services"]


def local_stack(services: dict, tmp_path: Path) -> Stack:
    """compose_local's Stack with this venv's `salespulse` (the check needs no service running)."""
    base_env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
                "PYTHONPATH": str(REPO)}
    return Stack(services, Translator({("postgres", 5432): 5432}, {}), base_env, str(REPO))


def test_every_salespulse_container_starts_through_the_check():
    for name, service in compose_services().items():
        if our_image(service):
            assert service["entrypoint"] == ["salespulse", "check-secrets", "--exec"], name


def test_with_real_secrets_every_service_passes_the_check(tmp_path):
    services = compose_services()
    stack = local_stack(services, tmp_path)
    for name, service in services.items():
        if our_image(service):
            out = stack.run(name, ["true"], timeout=120)  # the check, then exec of the command given
            assert out.returncode == 0, f"{name}: {out.stderr}"


@pytest.mark.parametrize("variable, value, reason", [
    ("POSTGRES_PASSWORD", "change-me-admin", "published placeholder"),
    ("POSTGRES_PASSWORD", "salespulse", "published placeholder or local default"),
    ("INGEST_DB_PASSWORD", "ingest-local", "local default"),
    ("ANALYTICS_DB_PASSWORD", "short-analytics", f"shorter than {MIN_LENGTH}"),
    ("DASHBOARD_DB_PASSWORD", "change-me-dashboard", "placeholder"),
    ("DAGSTER_PG_PASSWORD", "dagster", f"shorter than {MIN_LENGTH}"),
    ("REDIS_PASSWORD", "change-me-redis", "placeholder"),
    ("DASHBOARD_TOKEN", "tok3n", f"shorter than {MIN_LENGTH}"),
])
def test_a_refused_secret_stops_every_service_that_holds_it(tmp_path, variable, value, reason):
    """Each service given the variable (directly or inside a URL) refuses to start
    and says which variable; its command never runs."""
    services = compose_services(**{variable: value})
    stack = local_stack(services, tmp_path)
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    holders = [name for name, s in raw.items() if our_image(s) and "${" + variable in str(s.get("environment"))]
    assert holders, variable
    marker = tmp_path / "started"
    for name in holders:
        out = stack.run(name, ["touch", str(marker)], timeout=120)
        assert out.returncode == 2, f"{name}: {out.stdout} {out.stderr}"
        assert reason in out.stderr and "refusing to start" in out.stderr, f"{name}: {out.stderr}"
        assert value not in out.stderr.replace("salespulse ", "")  # the value is never printed
        assert not marker.exists(), name


def test_compose_refuses_to_interpolate_without_a_secret():
    text = COMPOSE_FILE.read_text()
    assert all("${" + name in text for name in SECRET_VARIABLES)
    for name in SECRET_VARIABLES:
        values = {**read_env_file(REPO / ".env.example"), **COMPOSE_SECRETS}
        del values[name]
        with pytest.raises(KeyError, match=name):
            interpolate(yaml.safe_load(text), values)


# ---------------------------------------------------------------- local defaults: the local stack only
def test_local_defaults_apply_only_to_the_local_stacks_embedded_cluster(monkeypatch):
    for name in ("INGEST_DB_PASSWORD", "ANALYTICS_DB_PASSWORD", "DASHBOARD_DB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    local = Settings(database_url=LOCAL_DATABASE_URL)
    assert local.role_passwords() == LOCAL_ROLE_PASSWORDS
    assert Settings(database_url="postgresql://salespulse:salespulse@127.0.0.1:61000/t_1").on_local_stack_database()
    for url in ("postgresql://salespulse:salespulse@db.example.com:5432/salespulse",  # another host
                f"postgresql://salespulse:{GOOD}@127.0.0.1:5432/salespulse",           # a real admin password
                "postgresql://postgres:5432/salespulse"):                              # compose's service URL
        settings = Settings(database_url=url)
        with pytest.raises(SecretError, match="INGEST_DB_PASSWORD is not set"):
            settings.role_url(ROLE_INGEST)
        assert Settings(database_url=url, ingest_db_password=GOOD).role_password(ROLE_INGEST) == GOOD


def _role_password_hashes(admin_url: str) -> dict:
    conn = psycopg2.connect(admin_url)
    with conn.cursor() as cur:
        cur.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)",
                    (list(LOCAL_ROLE_PASSWORDS),))
        hashes = dict(cur.fetchall())
    conn.close()
    return hashes


@pytest.mark.parametrize("argv", [["migrate"], ["reset-db", "--yes"]])
def test_migrate_and_reset_db_refuse_a_database_of_the_users_without_the_role_passwords(
        postgres, migrated_template, argv):
    """A database the user pointed at (a real admin password): without
    INGEST_/ANALYTICS_/DASHBOARD_DB_PASSWORD nothing is touched, no role gets a
    published password, and the message says which variable is missing."""
    name = f"s_{uuid.uuid4().hex[:10]}"
    fixture_url = postgres.create_database(name, template=migrated_template())
    compose_admin_role(postgres.admin_url)
    url = with_credentials(fixture_url, COMPOSE_ADMIN, COMPOSE_SECRETS["POSTGRES_PASSWORD"])
    conn = psycopg2.connect(fixture_url)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE keep_me (x int)")
    conn.close()
    before = _role_password_hashes(postgres.admin_url)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DB_PASSWORD") and not k.endswith("DATABASE_URL")}
    env.update(DATABASE_URL=url, PYTHONPATH=str(REPO))
    try:
        out = subprocess.run([sys.executable, "-m", "salespulse.cli", *argv], env=env, capture_output=True,
                             text=True, timeout=120, cwd=REPO)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "_DB_PASSWORD is not set" in out.stderr and "local stack" in out.stderr, out.stderr
        assert _role_password_hashes(postgres.admin_url) == before
        conn = psycopg2.connect(fixture_url)
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('keep_me') IS NOT NULL")
            assert cur.fetchone()[0], "the database was reset"
        conn.close()
        # with the variables it goes on (the roles get the given passwords)
        given = {"INGEST_DB_PASSWORD": GOOD + "i", "ANALYTICS_DB_PASSWORD": GOOD + "a", "DASHBOARD_DB_PASSWORD": GOOD + "d"}
        out = subprocess.run([sys.executable, "-m", "salespulse.cli", "migrate"], env={**env, **given},
                             capture_output=True, text=True, timeout=120, cwd=REPO)
        assert out.returncode == 0, out.stderr
        psycopg2.connect(with_credentials(fixture_url, ROLE_INGEST, given["INGEST_DB_PASSWORD"])).close()
    finally:
        # the cluster's roles back to the local defaults the other tests use
        from salespulse.db import set_role_passwords

        set_role_passwords(fixture_url, Settings(database_url=fixture_url))
        postgres.drop_database(name)

"""The one check of the secrets a deployed service is given, run before it starts.

Every SalesPulse container of docker-compose.yml starts as
``salespulse check-secrets --exec CMD...`` (its compose ``entrypoint``): the
secrets in its environment are checked, and only if none is refused does CMD
replace the check (``exec``, same process). A secret is refused when it is

* empty;
* a published value: an ``.env.example`` placeholder (``change-me...``) or a
  default of the local stack (:data:`salespulse.settings.LOCAL_ROLE_PASSWORDS`,
  the embedded cluster's admin password), which anyone who read this
  repository knows;
* shorter than :data:`MIN_LENGTH` characters.

Secrets are the variables of :data:`SECRET_VARIABLES`, and the password of
any URL in :data:`URL_VARIABLES` (a ``DATABASE_URL`` holding the admin
password, the Redis URL of the limiter). Values are never printed.

The local stack does not run this check: it runs with its published defaults
on 127.0.0.1 (and those defaults apply only to its own embedded PostgreSQL:
:meth:`salespulse.settings.Settings.role_password`).
"""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit

from salespulse.settings import LOCAL_ADMIN_PASSWORD, LOCAL_ROLE_PASSWORDS

#: Shortest secret accepted (``secrets.token_urlsafe(32)``, what .env.example
#: tells to use, gives 43 characters).
MIN_LENGTH = 16
PLACEHOLDER_PREFIX = "change-me"
#: Values published in this repository besides the ``change-me`` placeholders.
PUBLISHED_VALUES = frozenset({*LOCAL_ROLE_PASSWORDS.values(), LOCAL_ADMIN_PASSWORD})
#: Variables holding a secret, whichever service they are given to.
SECRET_VARIABLES = ("POSTGRES_PASSWORD", "INGEST_DB_PASSWORD", "ANALYTICS_DB_PASSWORD", "DASHBOARD_DB_PASSWORD",
                    "DAGSTER_PG_PASSWORD", "REDIS_PASSWORD", "DASHBOARD_TOKEN", "DAGSTER_UI_PASSWORD")
#: Variables holding a URL whose password (if it has one) is a secret.
URL_VARIABLES = ("DATABASE_URL", "INGEST_DATABASE_URL", "ANALYTICS_DATABASE_URL", "DASHBOARD_DATABASE_URL",
                 "DASHBOARD_RATE_LIMIT_STORAGE")
GENERATE = 'python3 -c "import secrets;print(secrets.token_urlsafe(32))"'


def secret_problem(name: str, value: str | None) -> str | None:
    """Why the secret ``name`` may not be ``value``, or None if it may."""
    if not value:
        return f"{name} is empty: set it in .env (generate one: {GENERATE})"
    if value.startswith(PLACEHOLDER_PREFIX) or value in PUBLISHED_VALUES:
        return f"{name} is a published placeholder or local default: generate one ({GENERATE})"
    if len(value) < MIN_LENGTH:
        return f"{name} is shorter than {MIN_LENGTH} characters: generate one ({GENERATE})"
    return None


def problems(environ=os.environ) -> list[str]:
    """Every refused secret of ``environ`` (one line each, without the values)."""
    found = []
    for name in SECRET_VARIABLES:
        if name in environ:
            found.append(secret_problem(name, environ[name]))
    for name in URL_VARIABLES:
        if environ.get(name):
            try:
                password = urlsplit(environ[name]).password
            except ValueError:
                password = None
            if password is not None:
                found.append(secret_problem(f"the password in {name}", password))
    return [p for p in found if p]


def cmd_check_secrets(args) -> int:
    refused = problems()
    for line in refused:
        print(f"check-secrets: {line}", file=sys.stderr)
    if refused:
        print("check-secrets: refusing to start", file=sys.stderr)
        return 2
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if args.exec:
        if not command:
            print("check-secrets: --exec needs a command", file=sys.stderr)
            return 2
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvp(command[0], command)  # does not return
    print("check-secrets: ok")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("check-secrets", help="refuse placeholder, published or short secrets in the "
                              "environment; with --exec CMD, then run CMD (compose's entry point)")
    p.add_argument("--exec", action="store_true", help="run the command that follows once the check passes")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command (after --exec)")
    p.set_defaults(func=cmd_check_secrets)

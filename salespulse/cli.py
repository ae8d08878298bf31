"""The ``salespulse`` command line: one entry point for operating the project.

Subcommands are contributed by the modules that own them: each module listed
in ``COMMAND_MODULES`` has ``register(subparsers)`` adding its commands, each
command's ``func(args) -> int`` being its implementation.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from importlib.metadata import entry_points

from salespulse.contracts import json_schemas
from salespulse.db import migrate
from salespulse.kafka import ensure_topics, recover_group
from salespulse.observability import configure_logging
from salespulse.settings import SecretError, get_settings

#: Modules of this package adding their own subcommands (stack runner, status, operations, Dagster
#: daemon/runs). Named, not imported: a module that is not installed (the image has no stack) adds none.
COMMAND_MODULES = ["salespulse.stack.runner", "salespulse.status", "salespulse.ops", "salespulse.dagster_daemon",
                   "salespulse.secret_check"]
#: entry-point group of commands defined by the services (pyproject.toml), e.g. the consumer's ``replay``
COMMAND_ENTRY_POINTS = "salespulse.commands"


def _cmd_migrate(args) -> int:
    applied = migrate(get_settings())
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def _cmd_topics(args) -> int:
    for name, parts in ensure_topics(get_settings().kafka_bootstrap_servers).items():
        print(f"{name}: {parts} partitions")
    return 0


def _cmd_contracts(args) -> int:
    print(json.dumps(json_schemas(), indent=2))
    return 0


def _cmd_recover_group(args) -> int:
    settings = get_settings()
    saved = recover_group(settings.kafka_bootstrap_servers, args.group or settings.consumer_group)
    for tp in saved:
        print(f"restored {tp.topic}[{tp.partition}] @ {tp.offset}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="salespulse", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply pending SQL migrations and role passwords").set_defaults(func=_cmd_migrate)
    sub.add_parser("topics", help="create every topic with its partition count").set_defaults(func=_cmd_topics)
    sub.add_parser("contracts", help="print the event contracts as JSON Schema").set_defaults(func=_cmd_contracts)
    recover = sub.add_parser("recover-group", help="save offsets, delete and restore a stuck consumer group")
    recover.add_argument("--group", help="group id (default: CONSUMER_GROUP)")
    recover.set_defaults(func=_cmd_recover_group)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
                raise
            continue  # optional command module not present
        module.register(sub)
    for entry_point in entry_points(group=COMMAND_ENTRY_POINTS):
        entry_point.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SecretError as exc:
        print(f"salespulse {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

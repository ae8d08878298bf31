"""Operations on the command line: backup/restore, consumer lag, reset-db, audit.

``register(subparsers)`` adds the commands to ``salespulse`` (salespulse/cli.py):

* ``salespulse backup --out FILE``   pg_dump -Fc of DATABASE_URL (``-`` = stdout)
* ``salespulse restore FILE``        the dump replaces the public schema, one transaction
* ``salespulse lag``                 committed offsets vs cached high watermarks
* ``salespulse reset-db --yes``      drop, re-create and re-migrate the database
* ``salespulse audit``               ingest ledger per partition, gaps, raw-table consistency
* ``salespulse dead-letter ID``      one dead letter (``--payload FILE``: its payload, if kept whole)

``python -m salespulse.ops.healthcheck URL...`` is the containers' health probe.
Submodules are imported when a command runs, so ``salespulse`` stays quick.
"""

from __future__ import annotations

import argparse


class OpsError(RuntimeError):
    """A failure to report to the operator as one clear line (exit status 2)."""


def command(module: str, func: str):
    """A command's ``func``: ``module.func(args)`` imported when it runs, its
    expected failures reported as one line (exit status 2). ``module`` is a
    dotted path, or a submodule name of ``salespulse.ops``."""

    def call(args: argparse.Namespace) -> int:
        import importlib
        import sys

        import psycopg2
        from confluent_kafka import KafkaException

        try:
            return getattr(importlib.import_module(module if "." in module else f"salespulse.ops.{module}"), func)(args)
        except OpsError as exc:
            print(f"salespulse {args.command}: {exc}", file=sys.stderr)
            return 2
        except KafkaException as exc:
            print(f"salespulse {args.command}: Kafka error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2
        except psycopg2.OperationalError as exc:
            print(f"salespulse {args.command}: database error: {str(exc).strip()}", file=sys.stderr)
            return 2

    return call


def register(subparsers) -> None:
    backup = subparsers.add_parser("backup", help="dump the database (pg_dump custom format)")
    backup.add_argument("--out", required=True, help="dump file to write ('-' = standard output)")
    backup.set_defaults(func=command("pg", "cmd_backup"))

    restore = subparsers.add_parser("restore", help="restore a dump made by `salespulse backup`")
    restore.add_argument("file", help="dump file ('-' = standard input)")
    restore.add_argument("--no-single-transaction", dest="single_transaction", action="store_false",
                         help="restore object by object instead of all-or-nothing")
    restore.set_defaults(func=command("pg", "cmd_restore"))

    lag = subparsers.add_parser("lag", help="consumer lag per partition (committed offset vs high watermark)")
    lag.add_argument("--group", help="consumer group (default: CONSUMER_GROUP)")
    lag.add_argument("--topic", action="append", help="topic to inspect (repeatable; default: the data topics)")
    lag.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lag.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the watermarks")
    lag.set_defaults(func=command("lag", "cmd_lag"))

    audit = subparsers.add_parser("audit", help="where every consumed offset went (ingest ledger); exit 1 on a gap")
    audit.add_argument("--group", help="only this consumer group (default: every group in the ledger)")
    audit.add_argument("--json", action="store_true", help="print JSON instead of a table")
    audit.set_defaults(func=command("audit", "cmd_audit"))

    dead = subparsers.add_parser("dead-letter", help="one dead letter: where it came from, why, its payload")
    dead.add_argument("id", type=int, help="dead_letters.id (the dashboard lists them)")
    dead.add_argument("--payload", help="write the payload to this file ('-' = standard output)")
    dead.add_argument("--truncated", action="store_true",
                      help="write a payload kept only in part (DEAD_LETTER_PAYLOAD_MAX_BYTES) as stored")
    dead.set_defaults(func=command("dead_letter", "cmd_dead_letter"))

    reset = subparsers.add_parser("reset-db", help="DROP the database, re-create it and migrate (destroys data)")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    reset.set_defaults(func=command("resetdb", "cmd_reset_db"))

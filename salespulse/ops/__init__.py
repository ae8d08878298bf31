"""Operations on the command line: backup/restore, consumer lag, replay, reset-db.

``register(subparsers)`` adds the commands to ``salespulse`` (salespulse/cli.py):

* ``salespulse backup --out FILE``   pg_dump -Fc of DATABASE_URL (``-`` = stdout)
* ``salespulse restore FILE``        pg_restore --clean --if-exists, one transaction
* ``salespulse lag``                 committed offsets vs cached high watermarks
* ``salespulse replay --topic T``    re-ingest a topic from an offset or a time
* ``salespulse reset-db --yes``      drop, re-create and re-migrate the database
* ``salespulse audit``               ingest ledger per partition, gaps, raw-table consistency

``python -m salespulse.ops.healthcheck URL...`` is the containers' health probe.
Submodules are imported when a command runs, so ``salespulse`` stays quick.
"""

from __future__ import annotations

import argparse


class OpsError(RuntimeError):
    """A failure to report to the operator as one clear line (exit status 2)."""


def _run(module: str, func: str):
    def call(args: argparse.Namespace) -> int:
        import importlib
        import sys

        import psycopg2
        from confluent_kafka import KafkaException

        try:
            return getattr(importlib.import_module(f"salespulse.ops.{module}"), func)(args)
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
    backup.set_defaults(func=_run("pg", "cmd_backup"))

    restore = subparsers.add_parser("restore", help="restore a dump made by `salespulse backup`")
    restore.add_argument("file", help="dump file ('-' = standard input)")
    restore.add_argument("--no-single-transaction", dest="single_transaction", action="store_false",
                         help="restore object by object instead of all-or-nothing")
    restore.set_defaults(func=_run("pg", "cmd_restore"))

    lag = subparsers.add_parser("lag", help="consumer lag per partition (committed offset vs high watermark)")
    lag.add_argument("--group", help="consumer group (default: CONSUMER_GROUP)")
    lag.add_argument("--topic", action="append", help="topic to inspect (repeatable; default: the data topics)")
    lag.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lag.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the watermarks")
    lag.set_defaults(func=_run("lag", "cmd_lag"))

    replay = subparsers.add_parser("replay", help="re-ingest a topic into the database (idempotent)")
    replay.add_argument("--topic", required=True, help="data topic (ecommerce.events, restaurant.orders)")
    start = replay.add_mutually_exclusive_group()
    start.add_argument("--from-offset", type=int, help="first offset to replay (default: the earliest)")
    start.add_argument("--from-timestamp", help="ISO-8601 time: replay messages from this time on (naive = UTC)")
    replay.add_argument("--partition", type=int, action="append",
                        help="partition to replay (repeatable; default: every partition)")
    replay.add_argument("--batch-size", type=int, default=None, help="messages per database transaction")
    replay.set_defaults(func=_run("replay", "cmd_replay"))

    audit = subparsers.add_parser("audit", help="where every consumed offset went (ingest ledger); exit 1 on a gap")
    audit.add_argument("--group", help="only this consumer group (default: every group in the ledger)")
    audit.add_argument("--json", action="store_true", help="print JSON instead of a table")
    audit.set_defaults(func=_run("audit", "cmd_audit"))

    reset = subparsers.add_parser("reset-db", help="DROP the database, re-create it and migrate (destroys data)")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    reset.set_defaults(func=_run("resetdb", "cmd_reset_db"))

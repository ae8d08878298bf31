"""``salespulse backup`` / ``salespulse restore``: pg_dump and pg_restore of DATABASE_URL.

* backup: ``pg_dump --format=custom`` (compressed; restores selectively and in
  any order); ``--out -`` streams it to standard output, e.g. out of a
  container: ``docker compose run --rm -T ops salespulse backup --out - > x.dump``.
* restore: ``pg_restore --clean --if-exists`` into the same URL, in ONE
  transaction with ``--exit-on-error`` (all or nothing). Objects of the dump
  are dropped and re-created; objects that are not in the dump are left alone.

The password is passed to the tools in ``PGPASSWORD``, never on their command
line (where ``ps`` would show it). Roles are cluster-wide and not part of a
dump: on a new server run ``salespulse migrate`` first (it creates the service
roles), then restore.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from salespulse.ops import OpsError
from salespulse.settings import get_settings


def pg_tool(name: str) -> str:
    """Path of ``pg_dump``/``pg_restore``/``psql``: the newest Debian
    /usr/lib/postgresql/N/bin one (a dump restores into the same or a newer
    major), else the one on PATH."""
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if versions:
        return versions[-1]
    found = shutil.which(name)
    if not found:
        raise OpsError(f"{name} not found: install the PostgreSQL client (Debian: postgresql-client-15)")
    return found


def split_password(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its password, and the environment that carries it."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password is None:
        return url, env
    env["PGPASSWORD"] = parsed.password
    return parsed._replace(password=None).render_as_string(hide_password=False), env


def _describe(url: str) -> str:
    parsed = make_url(url)
    return f"{parsed.host}:{parsed.port or 5432}" + (f"/{parsed.database}" if parsed.database else "")


def backup(url: str, out: str) -> None:
    """pg_dump -Fc of ``url`` into ``out`` (a path, or '-' for stdout)."""
    safe_url, env = split_password(url)
    cmd = [pg_tool("pg_dump"), "--format=custom", "--no-password", f"--dbname={safe_url}"]
    if out != "-":
        target = Path(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        cmd.append(f"--file={partial}")
        result = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise OpsError(f"pg_dump failed ({result.returncode}): {result.stderr.strip()}")
        partial.replace(target)  # never leave a truncated file under the final name
        return
    sys.stdout.flush()
    try:
        sys.stdout.fileno()
        sink = sys.stdout.buffer  # a real file descriptor: pg_dump writes to it directly
    except (AttributeError, OSError, ValueError):
        sink = subprocess.PIPE  # e.g. a captured stream: relay the bytes
    result = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.PIPE)
    if sink is subprocess.PIPE and result.returncode == 0:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
    if result.returncode != 0:
        raise OpsError(f"pg_dump failed ({result.returncode}): {result.stderr.decode(errors='replace').strip()}")


def restore(url: str, source: str, *, single_transaction: bool = True) -> None:
    """pg_restore --clean --if-exists of ``source`` (a path, or '-' for stdin) into ``url``."""
    safe_url, env = split_password(url)
    cmd = [pg_tool("pg_restore"), "--clean", "--if-exists", "--no-password", "--exit-on-error",
           f"--dbname={safe_url}"]
    if single_transaction:
        cmd.append("--single-transaction")
    stdin = None
    if source == "-":
        stdin = sys.stdin.buffer
    else:
        if not Path(source).is_file():
            raise OpsError(f"no such dump file: {source}")
        cmd.append(source)
    result = subprocess.run(cmd, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if result.returncode != 0:
        raise OpsError(f"pg_restore failed ({result.returncode}): {result.stderr.decode(errors='replace').strip()}")


def cmd_backup(args) -> int:
    url = get_settings().database_url
    backup(url, args.out)
    if args.out != "-":
        size = Path(args.out).stat().st_size
        print(f"backup of {_describe(url)} written to {args.out} ({size} bytes)")
    else:
        print(f"backup of {_describe(url)} written to standard output", file=sys.stderr)
    return 0


def cmd_restore(args) -> int:
    url = get_settings().database_url
    restore(url, args.file, single_transaction=args.single_transaction)
    print(f"restored {args.file} into {_describe(url)}")
    return 0

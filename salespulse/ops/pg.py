"""``salespulse backup`` / ``salespulse restore``: pg_dump and pg_restore of DATABASE_URL.

* backup: ``pg_dump --format=custom`` (compressed; restores selectively and in
  any order); ``--out -`` streams it to standard output, e.g. out of a
  container: ``docker compose run --rm -T ops salespulse backup --out - > x.dump``.
* restore: the dump replaces the ``public`` schema of the URL's database, in
  ONE transaction that stops at the first error (all or nothing): the dump is
  turned into SQL by ``pg_restore`` (a broken dump fails here, before anything
  is touched), then ``psql`` runs ``DROP SCHEMA public CASCADE; CREATE SCHEMA
  public`` and that SQL. Not ``pg_restore --clean``: it tries to drop the
  constraints each month partition inherits (sql/100), which PostgreSQL
  refuses. Objects that are not in the dump are gone afterwards.

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
import tempfile
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


#: what the dump's SQL is run after: the dump re-creates every object
CLEAN_SCHEMA = "DROP SCHEMA public CASCADE;\nCREATE SCHEMA public;\n"


def restore(url: str, source: str, *, single_transaction: bool = True) -> None:
    """Replace the public schema of ``url`` with the dump ``source`` (a path,
    or '-' for stdin); see the module docstring."""
    safe_url, env = split_password(url)
    stdin = None
    if source == "-":
        stdin = sys.stdin.buffer
    elif not Path(source).is_file():
        raise OpsError(f"no such dump file: {source}")
    with tempfile.TemporaryDirectory(prefix="salespulse-restore-") as work:
        clean, script = Path(work, "clean.sql"), Path(work, "dump.sql")
        clean.write_text(CLEAN_SCHEMA)
        cmd = [pg_tool("pg_restore"), "--exit-on-error", "-f", str(script)] + ([] if source == "-" else [source])
        result = subprocess.run(cmd, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if result.returncode != 0:
            raise OpsError(f"pg_restore failed ({result.returncode}): {result.stderr.decode(errors='replace').strip()}")
        cmd = [pg_tool("psql"), "--no-psqlrc", "--quiet", "--no-password", "-v", "ON_ERROR_STOP=1",
               f"--dbname={safe_url}", "-f", str(clean), "-f", str(script)]
        if single_transaction:
            cmd.insert(1, "--single-transaction")
        result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if result.returncode != 0:
            raise OpsError(f"restore failed (psql {result.returncode}): "
                           f"{result.stderr.decode(errors='replace').strip()}")


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

"""Container health probe: ``python -m salespulse.ops.healthcheck TARGET...``.

Each TARGET is ``http(s)://host:port/path`` (healthy when it answers 2xx
within the timeout) or ``tcp://host:port`` (healthy when it accepts a
connection). Exit status 0 when every target is healthy, 1 otherwise, with
one line per failed target on stderr. Standard library only (the images have
no curl), so it is cheap to run every few seconds.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit


def check(target: str, timeout: float = 3.0) -> str | None:
    """None when ``target`` is healthy, else the reason it is not."""
    parts = urlsplit(target)
    if parts.scheme == "tcp":
        if not parts.hostname or not parts.port:
            return f"{target}: expected tcp://host:port"
        try:
            socket.create_connection((parts.hostname, parts.port), timeout=timeout).close()
        except OSError as exc:
            return f"{target}: {exc}"
        return None
    if parts.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(target, timeout=timeout) as response:  # noqa: S310 - operator-given URL
                status = response.status
        except urllib.error.HTTPError as exc:
            return f"{target}: HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return f"{target}: {getattr(exc, 'reason', exc)}"
        return None if 200 <= status < 300 else f"{target}: HTTP {status}"
    return f"{target}: unsupported scheme (use http://, https:// or tcp://)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m salespulse.ops.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", metavar="TARGET")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    failures = [reason for reason in (check(t, args.timeout) for t in args.targets) if reason]
    for reason in failures:
        print(f"unhealthy: {reason}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

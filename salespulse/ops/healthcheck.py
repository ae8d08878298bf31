"""Container health probe: ``python -m salespulse.ops.healthcheck TARGET...``.

Each TARGET is ``http(s)://host:port/path`` (healthy when it answers 2xx
within the timeout) or ``tcp://host:port`` (healthy when it accepts a
connection). Exit status 0 when every target is healthy, 1 otherwise, with
one line per failed target on stderr. Standard library only (the images have
no curl), so it is cheap to run every few seconds.

The one health probe of the code base: ``salespulse status``
(salespulse/status.py) probes the stack's services with the same
:func:`probe_tcp` and :func:`probe_http`.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit


def probe_tcp(host: str, port: int, timeout: float = 3.0) -> str | None:
    """None when ``host:port`` accepts a connection, else the reason it does not."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return str(exc)
    return None


def probe_http(url: str, timeout: float = 3.0, *, read: int = 0) -> tuple[str | None, bytes]:
    """``(None, body)`` when ``url`` answers 2xx, else ``(reason, b"")``; ``body``
    is the first ``read`` bytes of the answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # an operator-given URL (not user input)
            status = response.status
            body = response.read(read) if read else b""
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}", b""
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc)), b""
    return (None, body) if 200 <= status < 300 else (f"HTTP {status}", b"")


def check(target: str, timeout: float = 3.0) -> str | None:
    """None when ``target`` is healthy, else the reason it is not."""
    parts = urlsplit(target)
    if parts.scheme == "tcp":
        if not parts.hostname or not parts.port:
            return f"{target}: expected tcp://host:port"
        reason = probe_tcp(parts.hostname, parts.port, timeout)
    elif parts.scheme in ("http", "https"):
        reason, _body = probe_http(target, timeout)
    else:
        return f"{target}: unsupported scheme (use http://, https:// or tcp://)"
    return None if reason is None else f"{target}: {reason}"


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

"""POST a JSON alert to a webhook URL (``ALERT_WEBHOOK_URL``): no paid service,
any receiver that accepts a JSON POST (a chat incoming-webhook, a small relay,
``nc -l``) will do.

Bounded on every side: ``timeout_s`` per attempt, at most ``attempts``
attempts with a short doubling pause (0.5 s, 1 s, ...), and a failure is
returned, never raised, so a dead receiver cannot fail the check that alerts.
A 4xx answer other than 408/429 is not retried (the same body would be
refused again).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

#: pause before the second attempt; doubled for each further one
FIRST_PAUSE_S = 0.5


@dataclass(frozen=True)
class Delivery:
    ok: bool
    attempts: int
    http_status: int | None = None
    error: str | None = None


def valid_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def post_json(url: str, payload: dict, *, timeout_s: float, attempts: int) -> Delivery:
    """POST ``payload`` as JSON; 2xx = delivered."""
    if not valid_url(url):
        return Delivery(False, 0, error=f"not an http(s) URL: {url!r}")
    body = json.dumps(payload, default=str).encode()
    status, error = None, None
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            time.sleep(FIRST_PAUSE_S * 2 ** (attempt - 2))
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "salespulse-alerts"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                status = response.status
            if 200 <= status < 300:
                return Delivery(True, attempt, status)
            error = f"HTTP {status}"
        except urllib.error.HTTPError as exc:
            status, error = exc.code, f"HTTP {exc.code} {exc.reason}"
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                return Delivery(False, attempt, status, error)
        except (OSError, ValueError) as exc:  # refused, timeout, DNS, bad URL
            status, error = None, f"{type(exc).__name__}: {exc}"
    return Delivery(False, attempts, status, error)

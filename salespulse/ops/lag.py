"""``salespulse lag``: how far a consumer group is behind, per partition.

lag = high watermark - committed offset (the next offset the group reads); a
partition the group never committed counts everything retained. The figures
come from ``salespulse.lag.group_lag``: committed offsets from the group
coordinator (the group is not joined, so running this beside live consumers
never triggers a rebalance), high watermarks from an observer consumer's
cached watermarks (never a fresh watermark query, see ``salespulse.lag``).
"""

from __future__ import annotations

import json
from dataclasses import asdict

from salespulse.contracts import TOPICS
from salespulse.kafka import admin_client, existing_topics
from salespulse.lag import PartitionLag, group_lag
from salespulse.ops import OpsError
from salespulse.settings import get_settings


def consumer_lag(bootstrap: str, group: str, topics: list[str] | None = None, timeout: float = 15.0
                 ) -> list[PartitionLag]:
    """Lag of ``group`` on every partition of ``topics`` (default: the data topics)."""
    present = existing_topics(admin_client(bootstrap))
    names = topics or list(TOPICS)
    missing = [t for t in names if t not in present]
    if missing:
        raise OpsError(f"unknown topic(s): {', '.join(missing)} (present: {', '.join(sorted(present)) or 'none'})")
    return group_lag(bootstrap, group, {t: present[t] for t in names}, timeout)


def format_table(group: str, rows: list[PartitionLag]) -> str:
    header = ("topic", "partition", "committed", "high", "lag")
    cells = [header] + [(r.topic, str(r.partition), "-" if r.committed is None else str(r.committed),
                         "?" if r.high is None else str(r.high), "?" if r.lag is None else str(r.lag))
                        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [f"group {group}"]
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    total = sum(r.lag for r in rows if r.lag is not None)
    unknown = sum(1 for r in rows if r.lag is None)
    lines.append(f"total lag: {total}" + (f" ({unknown} partition(s) unknown)" if unknown else ""))
    return "\n".join(lines)


def cmd_lag(args) -> int:
    settings = get_settings()
    group = args.group or settings.consumer_group
    rows = consumer_lag(settings.kafka_bootstrap_servers, group, args.topic, args.timeout)
    if args.json:
        print(json.dumps({"group": group, "total_lag": sum(r.lag for r in rows if r.lag is not None),
                          "partitions": [asdict(r) for r in rows]}, indent=2))
    else:
        print(format_table(group, rows))
    return 0

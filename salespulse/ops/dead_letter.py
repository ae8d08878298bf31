"""``salespulse dead-letter ID [--payload FILE]``: one dead letter, and its payload.

A dead letter keeps its payload up to ``DEAD_LETTER_PAYLOAD_MAX_BYTES``
(sql/120), with the size and SHA-256 of the whole payload; the size bound of
the retention job may empty the payload of one the checks still read. Asking
for the payload of such a dead letter is refused with the reason and where
the whole message may still be (the topic while the broker retains it, its
``.dlq`` copy), unless ``--truncated`` asks for the stored prefix.
"""

from __future__ import annotations

import hashlib
import sys

import psycopg2

from salespulse.ops import OpsError
from salespulse.settings import get_settings


def fetch(cur, ident: int) -> dict:
    cur.execute("""SELECT id, topic, topic_incarnation, "partition", "offset", key, error, received_at,
                          payload, coalesce(payload_bytes, octet_length(payload)), payload_sha256
                   FROM dead_letters WHERE id = %s""", (ident,))
    row = cur.fetchone()
    if row is None:
        raise OpsError(f"no dead letter {ident} (deleted by retention, or never stored)")
    names = ("id", "topic", "incarnation", "partition", "offset", "key", "error", "received_at", "payload",
             "payload_bytes", "payload_sha256")
    out = dict(zip(names, row))
    out["payload"] = None if out["payload"] is None else bytes(out["payload"])
    out["stored_bytes"] = 0 if out["payload"] is None else len(out["payload"])
    out["truncated"] = (out["payload_bytes"] or 0) > out["stored_bytes"]
    return out


def payload_of(d: dict, truncated_ok: bool = False) -> bytes:
    """The stored payload; a clear error when it is not the whole one."""
    if d["truncated"] and not truncated_ok:
        where = f"{d['topic']}[{d['partition']}] offset {d['offset']}" + (
            f" (topic incarnation {d['incarnation']})" if d["incarnation"] else "")
        raise OpsError(
            f"dead letter {d['id']} keeps {d['stored_bytes']:,} of its {d['payload_bytes']:,} payload bytes "
            f"(DEAD_LETTER_PAYLOAD_MAX_BYTES, or emptied by DEAD_LETTER_MAX_MB); sha256 of the whole payload: "
            f"{d['payload_sha256'].strip()}. The whole message is at {where} while the broker retains it, "
            f"and in its .dlq copy (cut to fit the broker, header dlq.truncated); --truncated writes the "
            f"stored prefix")
    payload = d["payload"] or b""
    if not d["truncated"] and hashlib.sha256(payload).hexdigest() != d["payload_sha256"].strip():
        raise OpsError(f"dead letter {d['id']}: the stored payload does not match its sha256")
    return payload


def cmd_dead_letter(args) -> int:
    settings = get_settings()
    with psycopg2.connect(settings.database_url, connect_timeout=5) as conn, conn.cursor() as cur:
        d = fetch(cur, args.id)
    conn.close()
    size = (f"{d['payload_bytes']:,} bytes" + (f" ({d['stored_bytes']:,} kept)" if d["truncated"] else "")
            if d["payload_bytes"] is not None else "no payload (null value)")
    info = sys.stderr if args.payload == "-" else sys.stdout
    print(f"dead letter {d['id']}: {d['topic']}[{d['partition']}] offset {d['offset']}"
          + (f" incarnation {d['incarnation']}" if d["incarnation"] else ""), file=info)
    print(f"  received {d['received_at']:%Y-%m-%d %H:%M:%S %Z}, key {d['key']!r}", file=info)
    print(f"  payload {size}, sha256 {d['payload_sha256'].strip()}", file=info)
    print(f"  error: {d['error']}", file=info)
    if args.payload:
        payload = payload_of(d, args.truncated)
        if args.payload == "-":
            sys.stdout.buffer.write(payload)
            sys.stdout.flush()
        else:
            with open(args.payload, "wb") as f:
                f.write(payload)
    return 0

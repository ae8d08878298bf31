"""The chaos campaign's checks and report (``bench/chaos.py`` runs them at the end).

Each check reads the ground truth itself: the broker (every acknowledged
message read back at its offset, the ``.dlq`` topics), PostgreSQL (raw tables,
``dead_letters``, ``ingest_ledger``) and the group's committed offsets; and
compares it with the plan (what was sent, where it landed, where it must end).
A failure line names the message (index, kind, topic[partition]@offset) so it
can be replayed from the same ``--seed``.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import psycopg2
from confluent_kafka import Consumer, KafkaError, TopicPartition

from salespulse.contracts import TOPICS, EcommerceEvent
from salespulse.kafka import committed_offsets

MAX_LINES = 12  # failure lines kept per check (all are counted)
CHECKS = (
    "broker kept every acknowledged message",
    "every valid message stored exactly once, as sent first",
    "no row from a message that must not be stored",
    "every duplicate a no-op",
    "every hostile message dead-lettered exactly once",
    "dead letters keep raw key, value, headers and a reason",
    "nothing else dead-lettered",
    "every dead letter published to its .dlq topic",
    "ingest_ledger contiguous from offset 0 to the end",
    "ingest_ledger totals equal messages in",
    "raw tables consistent",
    "lag 0 at the end",
    "consumer up at the end",
    "no consumer crash other than the kills",
    "faults injected as asked",
)


@dataclass
class Outcome:
    figures: dict = field(default_factory=dict)
    failures: dict = field(default_factory=lambda: {c: [] for c in CHECKS})
    counts: Counter = field(default_factory=Counter)
    kinds: dict = field(default_factory=lambda: defaultdict(Counter))

    def fail(self, check: str, line: str, kind: str | None = None) -> None:
        self.counts[check] += 1
        if len(self.failures[check]) < MAX_LINES:
            self.failures[check].append(line)
        if kind:
            self.kinds[kind]["problems"] += 1

    @property
    def failed(self) -> list[str]:
        return [c for c in CHECKS if self.counts[c]]

    @property
    def passed(self) -> bool:
        return not self.failed and self.figures.get("lost", 1) == 0 and self.figures.get("crashes", 1) == 0

    def summary(self) -> dict:
        return {**self.figures, "checks_failed": self.failed, "passed": self.passed}

    def table(self) -> str:
        f = self.figures
        rows = [
            ("messages in", f["messages_in"], f"valid {f['valid_in']}, hostile {f['hostile_in']}"),
            ("refused by the broker at produce time", f["refused_at_produce"], f.get("refused_reasons", "")),
            ("stored (rows)", f["stored"], f"expected {f['expected_stored']}"),
            ("duplicates (ledger)", f["duplicates"], f"expected {f['expected_duplicates']}"),
            ("dead-lettered", f["dead_lettered"], f"expected {f['expected_dead_letters']}"),
            ("lost", f["lost"], "must be 0"),
            ("misrouted", f["misrouted"], "stored/dead-lettered where they must not be"),
            ("crashes other than the kills", f["crashes"], "must be 0"),
            ("consumer SIGKILLs", f["kills"], ""),
            ("PostgreSQL restarts", f["pg_restarts"], ""),
            ("longest stall (s)", f["longest_stall_s"], "lag > 0 and no committed offset moving"),
            ("lag at the end", f["lag_end"], ""),
        ]
        out = ["", f"{'figure':<40}{'value':>10}  note", "-" * 78]
        out += [f"{name:<40}{str(value):>10}  {note}" for name, value, note in rows]
        out += ["", f"{'kind':<22}{'sent':>7}{'stored':>8}{'dup':>6}{'dead':>7}{'problems':>10}", "-" * 60]
        for kind, c in sorted(self.kinds.items()):
            out.append(f"{kind:<22}{c['sent']:>7}{c['stored']:>8}{c['duplicate']:>6}{c['dead_letter']:>7}"
                       f"{c['problems']:>10}")
        out += ["", "checks:"]
        for check in CHECKS:
            n = self.counts[check]
            out.append(f"  [{'FAIL' if n else ' ok '}] {check}" + (f" ({n} failures)" if n else ""))
            out += [f"      {line}" for line in self.failures[check]]
        return "\n".join(out)


# --------------------------------------------------------------------------- ground truth
def _headers(msg) -> list:
    try:
        return [(k, v if v is not None else b"") for k, v in (msg.headers() or [])]
    except Exception as exc:  # noqa: BLE001 - a header the client cannot decode
        return [("<unreadable>", repr(exc).encode())]


def read_back(bootstrap: str, highs: dict, timeout: float = 180.0) -> dict:
    """Every acknowledged message as the broker serves it: (t, p, o) -> (key, sha256, headers)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-readback-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "fetch.max.bytes": 52_428_800})
    consumer.assign([TopicPartition(t, p, 0) for (t, p) in highs])
    out: dict = {}
    left = dict(highs)
    deadline = time.monotonic() + timeout
    try:
        while any(n > 0 for n in left.values()) and time.monotonic() < deadline:
            for msg in consumer.consume(500, 1.0):
                if msg.error():
                    continue
                tp = (msg.topic(), msg.partition())
                out[(*tp, msg.offset())] = (msg.key(), hashlib.sha256(msg.value() or b"").hexdigest(), _headers(msg))
                if msg.offset() + 1 >= highs.get(tp, 0):
                    left[tp] = 0
    finally:
        consumer.close()
    return out


def read_dlq(bootstrap: str, timeout: float = 120.0, quiet: float = 2.0) -> dict:
    """Published dead letters: source (t, p, o) -> list of header-name sets, one per copy."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-dlq-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": True, "fetch.max.bytes": 52_428_800})
    consumer.assign([TopicPartition(t.dlq, 0, 0) for t in TOPICS.values()])
    out: dict = defaultdict(list)
    eof: set = set()
    quiet_since = time.monotonic()
    deadline = quiet_since + timeout
    try:
        while time.monotonic() < deadline and (len(eof) < len(TOPICS) or time.monotonic() - quiet_since < quiet):
            for msg in consumer.consume(500, 0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        eof.add(msg.topic())
                    continue
                quiet_since = time.monotonic()
                h = dict(_headers(msg))
                try:
                    src = (h["dlq.source.topic"].decode(), int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))
                except (KeyError, ValueError):
                    continue
                out[src].append(set(h))
    finally:
        consumer.close()
    return out


def _rows(cur, sql: str, params=None) -> list:
    cur.execute(sql, params)
    return cur.fetchall()


def _expected_rows(model) -> tuple:
    """(main row, child rows) as the raw tables must hold this model."""
    if isinstance(model, EcommerceEvent):
        p = model.product
        row = (model.event_type, model.timestamp, model.user_id, model.session_id, p.id if p else None,
               model.search_query)
        tx = [(p.id, model.quantity, model.total_amount, model.payment_method, model.timestamp)] \
            if model.event_type == "purchase" else []
        return row, tx
    row = (model.timestamp, model.restaurant_id, model.table_number, model.channel, model.total_amount,
           model.payment_method, sum(i.quantity for i in model.items))
    return row, [(i.item_id, i.name, i.category, i.quantity, i.unit_price, i.line_total) for i in model.items]


def _model_id(model) -> str:
    return str(model.event_id if isinstance(model, EcommerceEvent) else model.order_id)


# --------------------------------------------------------------------------- verify
def verify(plan, progress, services, supervisor, args, faults_done) -> Outcome:
    out = Outcome()
    bootstrap, url = services.broker.bootstrap, services.pg.admin_url
    delivered = [m for m in plan if m.delivered]
    for m in delivered:
        out.kinds[m.origin]["sent"] += 1
        out.kinds[m.origin][m.fate] += 1
    readback = read_back(bootstrap, progress.highs)
    _check_broker(out, delivered, readback)
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            dlq = read_dlq(bootstrap)
            wanted = {(m.topic, m.partition, m.offset) for m in delivered if m.fate == "dead_letter"}
            if wanted - set(dlq):  # a second, slower read tells a late copy from a missing one
                dlq = read_dlq(bootstrap, quiet=10.0)
            lost, misrouted = _check_messages(out, cur, delivered, readback, dlq)
            ledger = _check_ledger(out, cur, progress.highs, args.group, delivered)
    finally:
        conn.close()
    committed = {(tp.topic, tp.partition): tp.offset for tp in committed_offsets(bootstrap, args.group)}
    lag = 0
    for tp, high in sorted(progress.highs.items()):
        behind = high - max(committed.get(tp, 0), 0)
        if behind:
            lag += behind
            out.fail("lag 0 at the end", f"{tp[0]}[{tp[1]}]: committed {committed.get(tp)} of {high}")
    if not supervisor.up:
        out.fail("consumer up at the end", "the consumer process is not running")
    crashes = Counter((c["exit_code"], c["log_tail"][-400:]) for c in supervisor.crashes)
    for (code, tail), n in crashes.items():
        out.fail("no consumer crash other than the kills", f"{n}x exit code {code}; log tail: {tail!r}")
    out.counts["no consumer crash other than the kills"] = len(supervisor.crashes)
    kills = supervisor.kills
    restarts = sum(1 for _, what in faults_done if what == "pg")
    if kills != args.kills or restarts != args.pg_restarts:
        out.fail("faults injected as asked", f"{kills}/{args.kills} kills, {restarts}/{args.pg_restarts} restarts")
    refused = [m for m in plan if not m.delivered]
    dead = [m for m in delivered if m.fate == "dead_letter"]
    out.figures.update(
        messages_in=len(delivered), valid_in=sum(m.origin == "valid" for m in delivered),
        hostile_in=sum(m.origin != "valid" for m in delivered), refused_at_produce=len(refused),
        refused_reasons="; ".join(f"{n}x {r[:80]}" for r, n in Counter(m.refused for m in refused).items()),
        expected_stored=sum(m.fate == "stored" for m in delivered),
        expected_duplicates=sum(m.fate == "duplicate" for m in delivered), expected_dead_letters=len(dead),
        duplicates=ledger.get("duplicates"), lost=lost, misrouted=misrouted, crashes=len(supervisor.crashes),
        kills=kills, pg_restarts=restarts, longest_stall_s=round(progress.longest_stall, 1), lag_end=lag,
        consumer_up=supervisor.up, seed=args.seed)
    return out


def _check_broker(out: Outcome, delivered, readback) -> None:
    for m in delivered:
        got = readback.get((m.topic, m.partition, m.offset))
        if got is None or got[0] != m.key or got[1] != m.sha256:
            out.fail("broker kept every acknowledged message", f"{m.describe()}: read back {got and got[:2]!r:.120}")


def _check_messages(out: Outcome, cur, delivered, readback, dlq) -> tuple[int, int]:
    """Every message where its fate says, and nowhere else. Returns (lost, misrouted)."""
    events = {r[0]: r[1:] for r in _rows(cur, 'SELECT event_id::text, event_type, "timestamp", user_id, session_id, '
                                              'product_id, search_query FROM events')}
    tx = defaultdict(list)
    for r in _rows(cur, 'SELECT event_id::text, product_id, quantity, total_amount, payment_method, "timestamp" '
                        "FROM transactions"):
        tx[r[0]].append(r[1:])
    orders = {r[0]: r[1:] for r in _rows(cur, 'SELECT order_id::text, "timestamp", restaurant_id, table_number, '
                                              "channel, total_amount, payment_method, item_count FROM orders")}
    items = defaultdict(list)
    for r in _rows(cur, "SELECT order_id::text, item_id, name, category, quantity, unit_price, line_total "
                        "FROM order_items ORDER BY order_id, line_number"):
        items[r[0]].append(r[1:])
    cols = {r[0] for r in _rows(cur, "SELECT column_name FROM information_schema.columns "
                                     "WHERE table_name = 'dead_letters'")}
    extra = [c for c in ("key_bytes", "headers") if c in cols]
    dls = defaultdict(list)
    # the whole payload's size (sql/120 stores the payload up to a cap, with its full size)
    length = "coalesce(payload_bytes, octet_length(payload))" if "payload_bytes" in cols else "octet_length(payload)"
    for r in _rows(cur, f'SELECT topic, "partition", "offset", payload_sha256, {length}, error'
                        + "".join(f", {c}" for c in extra) + " FROM dead_letters"):
        dls[r[:3]].append(dict(zip(("sha", "length", "error", *extra), r[3:])))
    for c in ("key_bytes", "headers"):
        if c not in cols:
            out.fail("dead letters keep raw key, value, headers and a reason", f"dead_letters has no {c} column")
    out.figures["stored"] = len(events) + len(orders)
    out.figures["dead_lettered"] = len(dls)

    def state(m) -> str:
        """Whether this message's own content is what the raw tables hold for its id."""
        if m.model is None:
            return "absent"
        ident = _model_id(m.model)
        main, children = (events, tx) if isinstance(m.model, EcommerceEvent) else (orders, items)
        if ident not in main:
            return "absent"
        row, kids = _expected_rows(m.model)
        return "same" if main[ident] == row and children.get(ident, []) == kids else "other"

    lost = misrouted = 0
    stored_ids = set()
    for m in delivered:
        where = (m.topic, m.partition, m.offset)
        rows, st = dls.pop(where, []), state(m)
        if m.fate == "stored":
            stored_ids.add(_model_id(m.model))
            if rows:
                misrouted += 1
                out.fail("every valid message stored exactly once, as sent first",
                         f"{m.describe()}: dead-lettered: {rows[0]['error'][:200]!r}", m.origin)
            elif st != "same":
                lost += st == "absent"
                out.fail("every valid message stored exactly once, as sent first",
                         f"{m.describe()}: {'missing' if st == 'absent' else 'stored with other content'}", m.origin)
        elif m.fate == "duplicate":
            if rows:
                misrouted += 1
                out.fail("every duplicate a no-op", f"{m.describe()}: dead-lettered: {rows[0]['error'][:200]!r}",
                         m.origin)
        elif len(rows) == 1:
            _check_dead_letter(out, m, rows[0], readback.get(where))
            if where not in dlq:
                out.fail("every dead letter published to its .dlq topic", f"{m.describe()}: not in the .dlq topic")
            elif m.size > 900_000 and not any("dlq.truncated" in h for h in dlq[where]):
                out.fail("every dead letter published to its .dlq topic",
                         f"{m.describe()}: published without a dlq.truncated header")
        elif rows:
            out.fail("every hostile message dead-lettered exactly once",
                     f"{m.describe()}: {len(rows)} dead letters", m.origin)
        else:
            found = "stored instead" if st == "same" else "neither stored nor dead-lettered"
            misrouted += st == "same"
            lost += st != "same"
            out.fail("every hostile message dead-lettered exactly once", f"{m.describe()}: {found}", m.origin)
    for ident in (set(events) | set(orders)) - stored_ids:
        out.fail("no row from a message that must not be stored", f"row with id {ident}")
    for where, rows in dls.items():
        out.fail("nothing else dead-lettered", f"{where}: {len(rows)} dead letter(s) for no planned message")
    return lost, misrouted


def _check_dead_letter(out: Outcome, m, row: dict, broker) -> None:
    check = "dead letters keep raw key, value, headers and a reason"
    length = row["length"] if row["length"] is not None else -1
    if row["sha"] != m.sha256 or length not in ((m.size,) if m.size > 0 else (0, -1)):
        out.fail(check, f"{m.describe()}: payload {length} B sha {row['sha'][:12]} (sent {m.sha256[:12]})",
                 m.origin)
    if not row["error"] or (m.hint and m.hint not in row["error"]):
        out.fail(check, f"{m.describe()}: reason {row['error'][:200]!r}, expected to say {m.hint!r}", m.origin)
    if broker is None:
        return
    key, _sha, headers = broker
    if "key_bytes" in row and (bytes(row["key_bytes"]) if row["key_bytes"] is not None else None) != key:
        out.fail(check, f"{m.describe()}: key_bytes {row['key_bytes']!r:.80} != {key!r:.80}", m.origin)
    if "headers" in row:
        stored = [(h.get("key"), base64.b64decode(h.get("value_b64") or "")) for h in (row["headers"] or [])]
        if stored != headers:
            out.fail(check, f"{m.describe()}: headers {stored!r:.120} != {headers!r:.120}", m.origin)


def _check_ledger(out: Outcome, cur, highs: dict, group: str, delivered) -> dict:
    """Contiguous ranges from 0 to the last offset per partition; totals = messages in."""
    contiguous, totals = CHECKS[8], CHECKS[9]
    if _rows(cur, "SELECT to_regclass('ingest_ledger')")[0][0] is None:
        out.fail(contiguous, "no ingest_ledger table")
        out.fail(totals, "no ingest_ledger table")
        return {}
    try:
        from salespulse.integrity import consistency_violations, ledger_gaps
    except ImportError as exc:
        out.fail(contiguous, f"salespulse.integrity: {exc}")
        out.fail(CHECKS[10], f"salespulse.integrity: {exc}")
    else:
        for gap in ledger_gaps(cur):
            out.fail(contiguous, f"ledger_gaps: {gap}")
        for violation in consistency_violations(cur):
            out.fail(CHECKS[10], f"consistency_violations: {violation}")
    ranges = defaultdict(list)
    sums = Counter()
    for topic, part, first, last, n, stored, dup, dead in _rows(
            cur, 'SELECT topic, "partition", first_offset, last_offset, messages, stored, duplicates, dead_lettered '
                 "FROM ingest_ledger WHERE consumer_group = %s ORDER BY topic, \"partition\", first_offset", (group,)):
        ranges[(topic, part)].append((first, last, n))
        sums.update(messages=n, stored=stored, duplicates=dup, dead_lettered=dead)
    for tp, high in sorted(highs.items()):
        expected = 0
        for first, last, n in ranges.get(tp, []):
            if first != expected:
                out.fail(contiguous, f"{tp[0]}[{tp[1]}]: range {first}-{last} follows offset {expected - 1}")
            if n != last - first + 1:
                out.fail(totals, f"{tp[0]}[{tp[1]}]: range {first}-{last} counts {n} messages")
            expected = last + 1
        if expected != high:
            out.fail(contiguous, f"{tp[0]}[{tp[1]}]: ledger ends at offset {expected - 1}, last message {high - 1}")
    want = Counter(messages=len(delivered), stored=sum(m.fate == "stored" for m in delivered),
                   duplicates=sum(m.fate == "duplicate" for m in delivered),
                   dead_lettered=sum(m.fate == "dead_letter" for m in delivered))
    for name in want:
        if sums[name] != want[name]:
            out.fail(totals, f"ledger {name} {sums[name]}, expected {want[name]}")
    return dict(sums)

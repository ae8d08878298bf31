"""Alerts as asset checks (every minute, ``pipeline_checks_job``), severity WARN.
Failing ones show on the dashboard's pipeline page and are POSTed to
``ALERT_WEBHOOK_URL`` once per window (``orchestration.checks.outcomes``).

* ``revenue_drop`` (each report asset): the revenue of the newest complete
  block of ``ALERT_REVENUE_WINDOW_MINUTES`` (5) minutes — blocks aligned on the
  clock, so a lasting drop is one alert per block, not one a minute — against
  its baseline: the mean revenue of the same block on the previous
  ``ALERT_HISTORY_DAYS`` (7) days that have report rows within an hour of it;
  with no such day, the trailing hour's revenue per minute (since the first
  report row of that hour) times the block's length. Fires when the block's
  revenue is below ``(1 - ALERT_REVENUE_DROP)`` × baseline (default: half).
  A block is complete once a report computation at least ``CUTOFF_GRACE``
  after its end exists; minutes without a report row count as no revenue.
  No baseline (a new stack, under one block of history) → pass.
* ``funnel_break`` (``ecommerce_reports``): per minute of the last
  ``FUNNEL_MINUTES`` (10) closed minutes (up to ``CUTOFF_GRACE`` ago), cart
  events that break the funnel, per session and product over the previous
  ``FUNNEL_LOOKBACK`` (24 h): a purchase with nothing in the cart (no
  ``add_to_cart`` left), and a ``remove_from_cart`` beyond the additions
  (more removals than additions so far). The producer's sessions only take
  what they carted, so any is a defect upstream (or a lost event); a minute
  with more than ``ALERT_FUNNEL_MAX_BROKEN`` (0) fails.
* ``dead_letter_rate_alert`` (``dead_letters``): ``checks.integrity.dead_letter_rate``
  (the 5-minute health check's measure, last hour vs ``DEAD_LETTER_MAX_RATE``)
  every minute, recorded and notified; its window is the clock hour, so a
  lasting rate is notified once an hour.
"""


from datetime import datetime, timedelta, timezone
from decimal import Decimal

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetKey, asset_check

from orchestration.assets.reports import REPORT_ASSET_BY_DOMAIN
from orchestration.checks.integrity import dead_letter_rate
from orchestration.checks.outcomes import Verdict, conclude
from orchestration.checks.window import CUTOFF_GRACE
from orchestration.resources import PostgresResource
from salespulse.catalog import DOMAINS
from salespulse.settings import Settings

FUNNEL_MINUTES = 10
FUNNEL_LOOKBACK = timedelta(hours=24)
#: a previous day counts as history when its report has rows this close to the block
HISTORY_NEAR = timedelta(hours=1)
TRAILING = timedelta(hours=1)
WARN = AssetCheckSeverity.WARN


def _floor_block(moment: datetime, minutes: int) -> datetime:
    epoch_minutes = int(moment.timestamp() // 60)
    return datetime.fromtimestamp((epoch_minutes - epoch_minutes % minutes) * 60, tz=timezone.utc)


# --- revenue drop --------------------------------------------------------------

def revenue_drop(postgres: PostgresResource, domain: str, *, drop: float | None = None,
                 block_minutes: int | None = None, history_days: int | None = None) -> Verdict:
    settings = postgres.settings()
    drop = settings.alert_revenue_drop if drop is None else drop
    block = timedelta(minutes=block_minutes or settings.alert_revenue_window_minutes)
    days = history_days or settings.alert_history_days
    table = DOMAINS[domain].overview
    with postgres.connection() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT now(), max(computed_at) FROM {table} WHERE window_start >= now() - %s",
                    (TRAILING + 2 * block,))
        now, computed = cur.fetchone()
        if computed is None:
            return Verdict(True, f"no {table} rows in the last hour: nothing to compare")
        end = _floor_block(min(now, computed - CUTOFF_GRACE), int(block.total_seconds() // 60))
        start = end - block

        def revenue(a: datetime, b: datetime) -> Decimal:
            cur.execute(f"SELECT COALESCE(sum(revenue), 0) FROM {table} WHERE window_start >= %s AND window_start < %s",
                        (a, b))
            return Decimal(cur.fetchone()[0])

        current = revenue(start, end)
        history = []
        for k in range(1, days + 1):
            a, b = start - timedelta(days=k), end - timedelta(days=k)
            cur.execute(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE window_start >= %s AND window_start < %s)",
                        (a - HISTORY_NEAR, b + HISTORY_NEAR))
            if cur.fetchone()[0]:
                history.append(revenue(a, b))
        if history:
            baseline = sum(history) / len(history)
            source = f"the same {block.seconds // 60} minutes on {len(history)} previous day(s)"
        else:
            cur.execute(f"SELECT min(window_start) FROM {table} WHERE window_start >= %s AND window_start < %s",
                        (start - TRAILING, start))
            first = cur.fetchone()[0]
            covered = start - first if first else timedelta(0)
            if covered < block:
                return Verdict(True, f"no history for {start:%H:%M}–{end:%H:%M} UTC yet (no previous days, "
                                     f"{int(covered.total_seconds() // 60)} min of trailing data)",
                               details={"revenue": current, "window_start": start})
            baseline = revenue(first, start) * Decimal(block / covered)
            source = f"the trailing {int(covered.total_seconds() // 60)} minutes"
    limit = baseline * Decimal(1 - drop)
    fired = baseline > 0 and current < limit
    figures = {"revenue": float(current), "baseline": round(float(baseline), 2), "baseline_from": source,
               "threshold": round(float(limit), 2), "max_drop": drop}
    window = {"key": start.isoformat(), "start": start, "end": end, "kind": "revenue_drop", **figures}
    change = f"{float(current / baseline - 1):+.0%}" if baseline else "n/a"
    description = (f"{domain} revenue {current} in {start:%H:%M}–{end:%H:%M} UTC vs baseline {baseline:.2f} "
                   f"({source}): {change}; alert below {limit:.2f}")
    return Verdict(not fired, ("REVENUE DROP: " if fired else "") + description,
                   windows=[window] if fired else [], details={**figures, "window_start": start, "window_end": end})


def revenue_drop_check(domain: str):
    report_asset = REPORT_ASSET_BY_DOMAIN[domain]

    @asset_check(asset=report_asset, name="revenue_drop", description=(
        "Alert: revenue of the newest complete ALERT_REVENUE_WINDOW_MINUTES block below (1 - ALERT_REVENUE_DROP) x "
        "the same block on previous days (ALERT_HISTORY_DAYS), or the trailing hour without history."))
    def check(context: AssetCheckExecutionContext, postgres: PostgresResource) -> AssetCheckResult:
        return conclude(context, postgres, report_asset.key, "revenue_drop", revenue_drop(postgres, domain), WARN)

    return check


#: domain -> its check (one per catalogued domain)
REVENUE_DROP = {domain: revenue_drop_check(domain) for domain in DOMAINS}
ecommerce_revenue_drop, restaurant_revenue_drop = REVENUE_DROP["ecommerce"], REVENUE_DROP["restaurant"]

# --- funnel break ------------------------------------------------------------------

_FUNNEL_SQL = """
WITH takes AS (
    SELECT e.event_id, e.event_type, e."timestamp", e.user_id, e.session_id, e.product_id
    FROM events e
    WHERE e."timestamp" >= %(start)s AND e."timestamp" < %(end)s
      AND e.event_type IN ('remove_from_cart', 'purchase')
), judged AS (
    SELECT t.*, (
        SELECT count(*) FILTER (WHERE x.event_type = 'add_to_cart')
             - count(*) FILTER (WHERE x.event_type <> 'add_to_cart')
        FROM events x
        WHERE x.user_id = t.user_id AND x.session_id = t.session_id AND x.product_id = t.product_id
          AND x.event_type IN ('add_to_cart', 'remove_from_cart', 'purchase')
          AND x."timestamp" >= t."timestamp" - %(lookback)s
          AND (x."timestamp" < t."timestamp"
               OR (x."timestamp" = t."timestamp" AND (x.event_type = 'add_to_cart' OR x.event_id < t.event_id)))
    ) AS in_cart  -- additions minus removals/purchases before this one
    FROM takes t
)
SELECT date_trunc('minute', "timestamp") AS minute,
       count(*) FILTER (WHERE event_type = 'purchase' AND in_cart <= 0) AS purchases_without_cart,
       count(*) FILTER (WHERE event_type = 'remove_from_cart' AND in_cart <= 0) AS removals_beyond_additions,
       count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
       count(*) FILTER (WHERE event_type = 'remove_from_cart') AS removals
FROM judged GROUP BY 1 ORDER BY 1
"""


def funnel_break(postgres: PostgresResource, *, max_broken: int | None = None,
                 minutes: int = FUNNEL_MINUTES) -> Verdict:
    max_broken = postgres.settings().alert_funnel_max_broken if max_broken is None else max_broken
    with postgres.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT now()")
        now = cur.fetchone()[0]
        end = (now - CUTOFF_GRACE).replace(second=0, microsecond=0)
        start = end - timedelta(minutes=minutes)
        cur.execute(_FUNNEL_SQL, {"start": start, "end": end, "lookback": FUNNEL_LOOKBACK})
        rows = cur.fetchall()
    windows, totals = [], {"purchases": 0, "removals": 0, "purchases_without_cart": 0, "removals_beyond_additions": 0}
    for minute, no_cart, beyond, purchases, removals in rows:
        for key, value in (("purchases_without_cart", no_cart), ("removals_beyond_additions", beyond),
                           ("purchases", purchases), ("removals", removals)):
            totals[key] += value
        if no_cart + beyond > max_broken:
            windows.append({"key": minute.isoformat(), "start": minute, "end": minute + timedelta(minutes=1),
                            "kind": "funnel_break", "purchases_without_cart": no_cart,
                            "removals_beyond_additions": beyond, "purchases": purchases, "removals": removals})
    if windows:
        w = windows[0]
        description = (f"FUNNEL BREAK in {len(windows)} minute(s), first {w['start']:%H:%M} UTC: "
                       f"{w['purchases_without_cart']} purchase(s) without a cart, "
                       f"{w['removals_beyond_additions']} removal(s) beyond additions")
    else:
        description = (f"cart funnel intact in [{start:%H:%M}, {end:%H:%M}) UTC: {totals['purchases']} purchases, "
                       f"{totals['removals']} removals, each of something carted")
    return Verdict(not windows, description, windows=windows,
                   details={**totals, "window_start": start, "window_end": end, "max_broken": max_broken})


@asset_check(asset=REPORT_ASSET_BY_DOMAIN["ecommerce"], name="funnel_break", description=(
    "Alert: per minute of the last 10, purchases with nothing in the session's cart and removals beyond its "
    "additions (per product, over the previous 24 h) above ALERT_FUNNEL_MAX_BROKEN."))
def ecommerce_funnel_break(context: AssetCheckExecutionContext, postgres: PostgresResource) -> AssetCheckResult:
    return conclude(context, postgres, REPORT_ASSET_BY_DOMAIN["ecommerce"].key, "funnel_break",
                    funnel_break(postgres), WARN)


# --- dead-letter rate ------------------------------------------------------------

def dead_letter_alert(postgres: PostgresResource, max_rate: float | None = None) -> Verdict:
    result = dead_letter_rate(postgres, postgres.settings().dead_letter_max_rate if max_rate is None else max_rate)
    figures = {k: v.value for k, v in result.metadata.items()}
    now = datetime.now(timezone.utc)
    hour = now.replace(minute=0, second=0, microsecond=0)
    window = {"key": hour.isoformat(), "start": now - timedelta(hours=1), "end": now, "kind": "dead_letter_rate",
              **figures}
    return Verdict(result.passed, result.description, windows=[] if result.passed else [window], details=figures)


@asset_check(asset="dead_letters", name="dead_letter_rate_alert", description=(
    f"Alert: dead letters above DEAD_LETTER_MAX_RATE (default {Settings.model_fields['dead_letter_max_rate'].default:.0%}) "
    "of the last hour's messages, "
    "every minute (the measure of dead_letter_rate), recorded for the dashboard and notified once an hour."))
def dead_letter_rate_alert(context: AssetCheckExecutionContext, postgres: PostgresResource) -> AssetCheckResult:
    return conclude(context, postgres, AssetKey("dead_letters"), "dead_letter_rate_alert",
                    dead_letter_alert(postgres), WARN)


alert_checks = [*REVENUE_DROP.values(), ecommerce_funnel_break, dead_letter_rate_alert]

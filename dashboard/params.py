"""Query-parameter models (pydantic): validation for every API endpoint.

Each endpoint declares one model; :func:`parse` validates ``request.args``
against it and raises :class:`BadParameter` (HTTP 400 naming the parameter).
The same models generate the OpenAPI parameter list (see ``openapi.py``).
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from salespulse.freshness import DOMAINS as FRESHNESS_DOMAINS

RANGES: dict[str, timedelta] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
BUCKETS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
MAX_SPAN = timedelta(days=31)
MAX_BUCKETS = 2000
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)
TIMEZONES = frozenset(zoneinfo.available_timezones()) | {"UTC"}

RangeName = Literal["15m", "1h", "6h", "24h", "7d"]
RangeOrAll = Literal["15m", "1h", "6h", "24h", "7d", "all"]
BucketName = Literal["1m", "5m", "15m", "1h", "1d"]


class BadParameter(Exception):
    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter
        self.message = message


class Params(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    def cache_key(self) -> tuple:
        return tuple(sorted(self.model_dump(by_alias=True, mode="json").items()))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class TimeRange(Params):
    """A window: ``range`` relative to now, or explicit ``from``/``to`` (ISO-8601; naive = UTC)."""

    range: RangeName = Field("1h", description="Window ending now: 15m, 1h, 6h, 24h or 7d (ignored when `from` is given).")
    from_: datetime | None = Field(None, alias="from", description="Start (ISO-8601, naive = UTC). Takes precedence over `range`.")
    to: datetime | None = Field(None, description="End (ISO-8601, naive = UTC); default now. At most 31 days after `from`.")

    @field_validator("from_", "to")
    @classmethod
    def _bounded(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        value = _utc(value)
        if not EARLIEST <= value <= LATEST:
            raise ValueError("must be between 2000-01-01 and 2100-01-01")
        return value

    @model_validator(mode="after")
    def _order(self):
        if self.from_ is None and self.to is not None and self.range == "all":
            raise BadParameter("to", "`to` needs `from` when range=all")
        if self.from_ is not None:
            end = self.to or datetime.now(timezone.utc)
            if end <= self.from_:
                raise BadParameter("to" if self.to else "from", "`to` must be after `from`")
            if end - self.from_ > MAX_SPAN:
                raise BadParameter("to" if self.to else "from", "the window may span at most 31 days")
        return self

    @property
    def is_all(self) -> bool:
        return self.range == "all" and self.from_ is None and self.to is None

    def window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        now = now or datetime.now(timezone.utc)
        if self.from_ is not None:
            return self.from_, self.to or now
        end = self.to or now
        if self.range == "all":
            return EARLIEST, end
        return end - RANGES[self.range], end


class RangeAllParams(TimeRange):
    range: RangeOrAll = Field("1h", description="Window ending now: 15m, 1h, 6h, 24h, 7d, or `all` (all-time, from the materialized views).")


class TimelineParams(TimeRange):
    bucket: BucketName | None = Field(None, description="Bucket width: 1m, 5m, 15m, 1h or 1d (default: chosen from the window).")

    @model_validator(mode="after")
    def _bucket_count(self):
        if self.bucket is not None and not self.is_all:
            start, end = self.window()
            if (end - start) / BUCKETS[self.bucket] > MAX_BUCKETS:
                raise BadParameter("bucket", f"too many buckets (at most {MAX_BUCKETS}); choose a wider bucket")
        return self

    def bucket_width(self) -> timedelta:
        if self.bucket is not None:
            return BUCKETS[self.bucket]
        span = self.window()[1] - self.window()[0]
        for name in ("1m", "5m", "15m", "1h", "1d"):
            if span / BUCKETS[name] <= 360:
                return BUCKETS[name]
        return BUCKETS["1d"]


class EcommerceTimelineParams(TimelineParams):
    range: RangeOrAll = Field("1h", description="Window ending now: 15m, 1h, 6h, 24h, 7d, or `all` (daily points from the `daily_metrics` view).")


class LimitParams(RangeAllParams):
    limit: int = Field(10, ge=1, le=100, description="Number of rows (1..100).")


class ItemParams(TimeRange):
    limit: int = Field(10, ge=1, le=100, description="Number of rows (1..100).")
    sort: Literal["revenue", "quantity"] = Field("revenue", description="Order by revenue or quantity sold.")


class PeakHoursParams(TimeRange):
    range: RangeName = Field("7d", description="Window ending now: 15m, 1h, 6h, 24h or 7d.")
    tz: str = Field("UTC", max_length=64, description="IANA time zone for the hour of day, e.g. Europe/Lisbon.")

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value not in TIMEZONES:
            raise ValueError("unknown time zone")
        return value


class NoParams(Params):
    pass


class PipelineParams(TimeRange):
    limit: int = Field(10, ge=1, le=100, description="Number of recent dead letters and runs (1..100).")


class FreshnessParams(Params):
    domain: Literal[tuple(FRESHNESS_DOMAINS)] | None = Field(  # type: ignore[valid-type]
        None, description="Only this domain: " + " or ".join(FRESHNESS_DOMAINS) + " (default: every domain).")


def parse(model: type[Params], args) -> Params:
    """Validate ``request.args`` (first value of each key) against ``model``."""
    data: dict[str, Any] = {}
    for key in args.keys():
        value = args.get(key)
        if "\x00" in value:
            raise BadParameter(key, "NUL characters are not allowed")
        data[key] = value
    try:
        return model.model_validate(data)
    except BadParameter:
        raise
    except ValidationError as exc:
        err = exc.errors()[0]
        if err.get("type") == "value_error" and isinstance(err.get("ctx", {}).get("error"), BadParameter):
            bad = err["ctx"]["error"]
            raise BadParameter(bad.parameter, bad.message) from None
        loc = err.get("loc") or ("query",)
        name = str(loc[0])
        field = model.model_fields.get(name)
        if field is not None and field.alias:
            name = field.alias
        raise BadParameter(name, f"invalid `{name}`: {err.get('msg')}") from None

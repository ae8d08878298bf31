"""Spark report computations for both domains (plain Python, no Dagster imports).

Public API (the Dagster assets code against exactly this)::

    from orchestration.reports import (REPORT_DOMAINS, spark_session, refresh_ecommerce_reports,
                                       refresh_restaurant_reports, ReportResult)

    spark = spark_session()                 # Spark Connect, cached per remote
    result = refresh_ecommerce_reports(spark, settings, start, end)
    result = refresh_restaurant_reports(spark, settings, start, end)

    REPORT_DOMAINS["ecommerce"].tables      # the tables a domain's refresh writes
    REPORT_DOMAINS["ecommerce"].refresh     # = refresh_ecommerce_reports


Each refresh reads the raw tables of ``[start, end)`` over JDBC (the time range
pushed down into PostgreSQL), aggregates per minute window with the DataFrame
API on the Spark Connect server, collects the (small) aggregates to the driver
and replaces the report rows of every minute window in ``[start, end)`` in ONE
PostgreSQL transaction, as the analytics role. Metric definitions: see the
module docstrings of :mod:`orchestration.reports.ecommerce` and
:mod:`orchestration.reports.restaurant`, and ``docs/reports.md``.

:data:`REPORT_DOMAINS` (one :class:`ReportDomain` per domain: its raw and
report tables, its refresh) is what the Dagster assets and asset checks are
derived from; a new domain's module adds its ``REPORTS`` here.
"""

from orchestration.reports import ecommerce, restaurant
from orchestration.reports.common import ReportDomain, ReportResult, spark_session
from orchestration.reports.ecommerce import refresh_ecommerce_reports
from orchestration.reports.restaurant import refresh_restaurant_reports

#: domain name -> its reports
REPORT_DOMAINS: dict[str, ReportDomain] = {r.name: r for r in (ecommerce.REPORTS, restaurant.REPORTS)}

__all__ = ["REPORT_DOMAINS", "ReportDomain", "ReportResult", "spark_session", "refresh_ecommerce_reports",
           "refresh_restaurant_reports"]

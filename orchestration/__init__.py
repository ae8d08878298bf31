"""SalesPulse's Dagster code location.

``orchestration.definitions`` composes the asset graph (Kafka topics -> raw
tables -> Spark report assets -> materialized views -> dashboard), the
schedules, sensors, asset checks and resources defined in the small modules
of this package. ``orchestration.reports`` holds the Spark report code the
report assets call.
"""

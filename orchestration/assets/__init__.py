"""The asset graph: Kafka topics -> raw tables -> Spark reports -> views -> dashboard."""

from orchestration.assets.reports import ecommerce_reports, restaurant_reports
from orchestration.assets.sources import dashboard, kafka_topics, raw_tables
from orchestration.assets.views import materialized_views

report_assets = [ecommerce_reports, restaurant_reports]
all_assets = [*kafka_topics, *raw_tables, *report_assets, *materialized_views, dashboard]

__all__ = ["all_assets", "report_assets", "materialized_views", "kafka_topics", "raw_tables", "dashboard"]

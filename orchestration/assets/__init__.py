"""The asset graph: Kafka topics -> raw tables -> Spark reports -> views -> dashboard."""

from orchestration.assets.reports import REPORT_ASSETS
from orchestration.assets.sources import dashboard, kafka_topics, raw_tables
from orchestration.assets.views import materialized_views

all_assets = [*kafka_topics, *raw_tables, *REPORT_ASSETS, *materialized_views, dashboard]

__all__ = ["all_assets", "REPORT_ASSETS", "materialized_views", "kafka_topics", "raw_tables", "dashboard"]

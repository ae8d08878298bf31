"""Sensors: new raw data, Kafka consumer lag, run status, freshness."""

from orchestration.sensors.freshness import freshness_sensor
from orchestration.sensors.kafka_lag import kafka_lag_sensor
from orchestration.sensors.new_data import new_data_sensor
from orchestration.sensors.run_status import record_run_failures, record_run_successes

all_sensors = [new_data_sensor, kafka_lag_sensor, record_run_failures, record_run_successes, freshness_sensor]

__all__ = ["all_sensors", "new_data_sensor", "kafka_lag_sensor", "record_run_failures", "record_run_successes",
           "freshness_sensor"]

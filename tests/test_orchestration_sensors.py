"""Sensors and schedules with build_sensor_context / build_schedule_context on a
real PostgreSQL (and a real broker for the lag sensor)."""

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from dagster import (
    AssetKey,
    DagsterRunStatus,
    RunsFilter,
    asset,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
    materialize,
)

from orchestration.assets.views import VIEW_KEYS
from orchestration.jobs import refresh_job
from orchestration.resources import KafkaResource, PostgresResource
from orchestration.schedules import refresh_every_minute
from orchestration.sensors.kafka_lag import kafka_lag_sensor, observe_topics
from orchestration.restatement import TAG_PREFIX as RESTATE
from orchestration.sensors.new_data import new_data_sensor
from orchestration.sensors.run_status import record_run_failures, record_run_successes
from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC
from salespulse.settings import get_settings
from salespulse.kafka import consumer_config, producer_config
from tests.support.orchestration import BASE_HOUR, query, seed_ecommerce, seed_restaurant

EC = AssetKey("ecommerce_reports")
RO = AssetKey("restaurant_reports")
VIEWS = set(VIEW_KEYS)  # the all-time views (and aggregates) refreshed with the newest hour


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


def tick(sensor, instance, cursor, **resources):
    context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return sensor(context)


# --- new-data sensor -----------------------------------------------------------

def test_new_data_sensor_requests_touched_partitions_once(database_url, instance, monkeypatch):
    monkeypatch.setenv("LATE_ROWS_MARGIN_SECONDS", "0")  # the history below is not rescanned
    get_settings.cache_clear()
    pg = PostgresResource(database_url=database_url)
    seed_ecommerce(database_url, BASE_HOUR - timedelta(hours=5))  # history before the sensor starts

    first = tick(new_data_sensor, instance, None, postgres=pg)
    assert first.run_requests == []  # first tick only records where the next scan starts
    assert "initialised" in first.skip_reason.skip_message
    cursor = json.loads(first.cursor)
    assert cursor["ids"]["events"] == query(database_url, "SELECT max(id) FROM events")[0][0]

    h0, h1 = BASE_HOUR, BASE_HOUR + timedelta(hours=1)
    n_events = seed_ecommerce(database_url, h0) + seed_ecommerce(database_url, h1, minutes=(7,))
    n_orders = seed_restaurant(database_url, h1)
    second = tick(new_data_sensor, instance, first.cursor, postgres=pg)
    by_partition = {r.partition_key: r for r in second.run_requests}
    assert set(by_partition) == {"2026-03-10-09:00", "2026-03-10-10:00"}
    assert set(by_partition["2026-03-10-09:00"].asset_selection) == {EC}
    # the newest e-commerce hour also refreshes the (all-time) views; 10:00 has orders too
    assert set(by_partition["2026-03-10-10:00"].asset_selection) == {EC, RO} | VIEWS
    # exactly the touched minutes of each domain
    assert {k: {t: v for t, v in r.tags.items() if t.startswith(RESTATE)} for k, r in by_partition.items()} == {
        "2026-03-10-09:00": {RESTATE + "ecommerce": "0,1,5,30,59"},
        "2026-03-10-10:00": {RESTATE + "ecommerce": "7", RESTATE + "restaurant": "2,3,30,58"},
    }
    assert all(r.job_name in (None, refresh_job.name) for r in second.run_requests)
    observed = {e.asset_key.to_user_string(): e.metadata for e in second.asset_events}
    assert observed["events"]["new_rows"].value == n_events
    assert observed["orders"]["new_rows"].value == n_orders
    assert set(observed) == {"events", "products", "transactions", "orders", "order_items", "dead_letters"}

    # no run has written those reports yet: the windows are pending, asked for again
    third = tick(new_data_sensor, instance, second.cursor, postgres=pg)
    assert {(r.partition_key, tuple(sorted(r.tags.items()))) for r in third.run_requests} == \
        {(r.partition_key, tuple(sorted(r.tags.items()))) for r in second.run_requests}
    assert json.loads(third.cursor)["pending"] == json.loads(second.cursor)["pending"]

    # a late order for the closed 09:00 hour joins that partition's run, restaurant minute 59
    seed_restaurant(database_url, h0, minutes=(59,), per_minute=1, seed=99)
    fourth = tick(new_data_sensor, instance, third.cursor, postgres=pg)
    nine = {r.partition_key: r for r in fourth.run_requests}["2026-03-10-09:00"]
    assert set(nine.asset_selection) == {EC, RO}
    assert nine.tags[RESTATE + "restaurant"] == "59"
    get_settings.cache_clear()


def test_new_data_sensor_skips_a_partition_whose_run_is_still_queued(database_url, instance):
    pg = PostgresResource(database_url=database_url)
    first = tick(new_data_sensor, instance, None, postgres=pg)
    seed_restaurant(database_url, BASE_HOUR)
    _queue_run(instance, "2026-03-10-09:00")  # a queued full refresh of that hour
    second = tick(new_data_sensor, instance, first.cursor, postgres=pg)
    assert second.run_requests == []
    assert "run in flight" in second.skip_reason.skip_message
    # a queued run restating other minutes does not cover them
    instance.delete_run(_queued_run_id(instance))
    _queue_run(instance, "2026-03-10-09:00", {RESTATE + "restaurant": "2"})
    third = tick(new_data_sensor, instance, second.cursor, postgres=pg)
    assert [r.tags[RESTATE + "restaurant"] for r in third.run_requests] == ["2,3,30,58"]


def _queued_run_id(instance):
    return instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.NOT_STARTED]))[0].run_id


def _queue_run(instance, partition_key, tags=None):
    from dagster._core.storage.dagster_run import DagsterRun

    run = DagsterRun(job_name=refresh_job.name, run_id=uuid.uuid4().hex, status=DagsterRunStatus.NOT_STARTED,
                     tags={"dagster/partition": partition_key, **(tags or {})})
    instance.add_run(run)
    return run


# --- minute schedule ------------------------------------------------------------

def test_minute_schedule_targets_the_current_hour_and_closes_the_previous(instance):
    at = datetime(2026, 3, 10, 9, 17, tzinfo=timezone.utc)
    requests = refresh_every_minute(build_schedule_context(instance=instance, scheduled_execution_time=at))
    assert [(r.partition_key, r.asset_selection) for r in requests] == [("2026-03-10-09:00", None)]

    at = datetime(2026, 3, 10, 10, 1, tzinfo=timezone.utc)
    requests = refresh_every_minute(build_schedule_context(instance=instance, scheduled_execution_time=at))
    assert [(r.partition_key, r.asset_selection and set(r.asset_selection)) for r in requests] == [
        ("2026-03-10-09:00", {EC, RO}), ("2026-03-10-10:00", None)]

    _queue_run(instance, "2026-03-10-10:00")  # still waiting: no second copy
    at = datetime(2026, 3, 10, 10, 5, tzinfo=timezone.utc)
    result = refresh_every_minute(build_schedule_context(instance=instance, scheduled_execution_time=at))
    assert "already has a waiting run" in result.skip_message


# --- Kafka lag sensor -------------------------------------------------------------

def count_messages(bootstrap: str, topic: str, partitions: int) -> int:
    """Independent count: read every partition from the start to its end."""
    consumer = Consumer(consumer_config(bootstrap, f"count-{uuid.uuid4().hex[:6]}",
                                        **{"enable.partition.eof": True}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    done, total = set(), 0
    while len(done) < partitions:
        msg = consumer.poll(5)
        assert msg is not None, "timed out counting messages"
        if msg.error():
            done.add(msg.partition())
        else:
            total += 1
    consumer.close()
    return total


def commit_offsets(bootstrap: str, group: str, offsets: dict[int, int], topic: str) -> None:
    consumer = Consumer(consumer_config(bootstrap, group))
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    consumer.close()


def test_kafka_lag_sensor_observes_records_and_flags(settings, broker, database_url):
    topic = ECOMMERCE_TOPIC.name
    producer = Producer(producer_config(broker.bootstrap))
    for i in range(60):
        producer.produce(topic, key=f"user-{i % 7}", value=b"{}", partition=i % ECOMMERCE_TOPIC.partitions)
    producer.produce(RESTAURANT_TOPIC.dlq, value=b"bad")
    assert producer.flush(30) == 0
    total = count_messages(broker.bootstrap, topic, ECOMMERCE_TOPIC.partitions)
    assert total >= 60

    group = f"ingest-{uuid.uuid4().hex[:6]}"
    commit_offsets(broker.bootstrap, group, {0: 4, 1: 2}, topic)  # the group consumed 6 messages
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap, consumer_group=group, lag_threshold=10)
    pg = PostgresResource(database_url=database_url)

    result = tick(kafka_lag_sensor, None, None, kafka=kafka, postgres=pg)
    obs = {e.asset_key.to_user_string(): e.metadata for e in result.asset_events}
    ec = obs["kafka_ecommerce_events"]
    assert ec["high_watermark"].value == total
    assert ec["committed"].value == 6
    assert ec["consumer_lag"].value == total - 6
    assert ec["lag_exceeded"].value is True
    assert obs["kafka_restaurant_orders_dlq"]["high_watermark"].value >= 1
    assert "consumer_lag" not in obs["kafka_restaurant_orders_dlq"]
    assert "LAG ABOVE THRESHOLD" in result.skip_reason.skip_message
    rows = query(database_url, "SELECT topic, high_watermark, committed, lag, messages_per_s FROM pipeline_observations")
    assert sorted(rows) == sorted([
        (topic, total, 6, total - 6, None),
        (RESTAURANT_TOPIC.name, obs["kafka_restaurant_orders"]["high_watermark"].value, 0,
         obs["kafka_restaurant_orders"]["high_watermark"].value, None),
    ])

    # the group catches up on both topics (the session broker may hold other tests'
    # restaurant orders); 5 more messages arrive -> throughput, lag 5, under the threshold
    for name, key in ((topic, "kafka_ecommerce_events"), (RESTAURANT_TOPIC.name, "kafka_restaurant_orders")):
        commit_offsets(broker.bootstrap, group,
                       {int(p): h["high_watermark"] for p, h in obs[key]["partitions"].value.items()},
                       name)
    for i in range(5):
        producer.produce(topic, key=f"user-{i}", value=b"{}", partition=0)
    assert producer.flush(30) == 0
    second = tick(kafka_lag_sensor, None, result.cursor, kafka=kafka, postgres=pg)
    ec2 = {e.asset_key.to_user_string(): e.metadata for e in second.asset_events}["kafka_ecommerce_events"]
    assert ec2["high_watermark"].value == total + 5
    assert ec2["consumer_lag"].value == 5
    assert ec2["lag_exceeded"].value is False
    assert ec2["messages_per_s"].value > 0
    assert second.skip_reason.skip_message == "lag within threshold"
    assert query(database_url, "SELECT count(*) FROM pipeline_observations WHERE topic = %s", (topic,))[0][0] == 2


def test_observe_topics_never_commits_for_the_ingestion_group(settings, broker):
    group = f"ingest-{uuid.uuid4().hex[:6]}"
    observe_topics(broker.bootstrap, group)
    from salespulse.kafka import committed_offsets

    assert all(tp.offset < 0 for tp in committed_offsets(broker.bootstrap, group))


# --- run status sensors -------------------------------------------------------------

def test_run_failure_and_success_are_recorded(database_url, instance):
    pg = PostgresResource(database_url=database_url)

    @asset
    def broken_report():
        raise RuntimeError("spark connect unreachable")

    failed = materialize([broken_report], instance=instance, raise_on_error=False, tags={"dagster/partition": "2026-03-10-09:00"})
    assert not failed.success
    context = build_run_status_sensor_context(
        sensor_name="record_run_failures", dagster_instance=instance, dagster_run=failed.dagster_run,
        dagster_event=failed.get_run_failure_event(), resources={"postgres": pg},
    ).for_run_failure()
    record_run_failures(context)

    @asset
    def fine_report():
        return 1

    ok = materialize([fine_report], instance=instance)
    context = build_run_status_sensor_context(
        sensor_name="record_run_successes", dagster_instance=instance, dagster_run=ok.dagster_run,
        dagster_event=ok.get_run_success_event(), resources={"postgres": pg},
    )
    record_run_successes(context)

    rows = {r[0]: r[1:] for r in query(database_url, "SELECT run_id, job_name, status, partition, message FROM pipeline_runs")}
    job, status, partition, message = rows[failed.run_id]
    assert (job, status, partition) == (failed.dagster_run.job_name, "FAILURE", "2026-03-10-09:00")
    assert "spark connect unreachable" in message
    assert rows[ok.run_id][1:3] == ("SUCCESS", None)
    # recording again (a retried tick) updates in place
    record_run_successes(context)
    assert query(database_url, "SELECT count(*) FROM pipeline_runs")[0][0] == 2


def test_new_data_sensor_leaves_the_current_hour_to_a_running_schedule(database_url, instance, monkeypatch):
    from orchestration.sensors import new_data

    pg = PostgresResource(database_url=database_url)
    # the sensor's clock held in this hour (no waiting out an hour boundary that falls mid-test)
    now = datetime.now(timezone.utc).replace(minute=30, second=0, microsecond=0)
    monkeypatch.setattr(new_data, "utc_now", lambda: now)
    current = now.strftime("%Y-%m-%d-%H:00")
    first = tick(new_data_sensor, instance, None, postgres=pg)
    seed_ecommerce(database_url, now.replace(minute=0, second=0, microsecond=0), minutes=(0,), per_minute=3)
    # no schedule run: the sensor refreshes the current hour itself
    alone = tick(new_data_sensor, instance, first.cursor, postgres=pg)
    assert [r.partition_key for r in alone.run_requests] == [current]
    # the schedule launched a run for this hour a moment ago: left to it
    from dagster._core.storage.dagster_run import DagsterRun

    instance.add_run(DagsterRun(job_name=refresh_job.name, run_id=uuid.uuid4().hex, status=DagsterRunStatus.SUCCESS,
                                tags={"dagster/partition": current, "salespulse/trigger": "refresh_every_minute"}))
    covered = tick(new_data_sensor, instance, first.cursor, postgres=pg)
    assert covered.run_requests == []
    assert "running schedule" in covered.skip_reason.skip_message


def test_new_data_sensor_ignores_hours_outside_the_partitions_and_survives_a_reset(database_url, instance):
    pg = PostgresResource(database_url=database_url)
    first = tick(new_data_sensor, instance, None, postgres=pg)
    future = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) + timedelta(hours=3)
    seed_ecommerce(database_url, future, minutes=(1,), per_minute=2)  # a skewed producer clock
    seed_ecommerce(database_url, datetime(2020, 5, 1, tzinfo=timezone.utc), minutes=(1,), per_minute=2, seed=8)
    result = tick(new_data_sensor, instance, first.cursor, postgres=pg)
    assert result.run_requests == [] and result.skip_reason.skip_message == "no new rows"

    # the cursor's transaction ids are ahead of the database's (a database replaced): marks restart
    seed_restaurant(database_url, BASE_HOUR, minutes=(1,), per_minute=1)
    ahead = json.loads(result.cursor)
    ahead["marks"] = [[at, xid + 10**9] for at, xid in ahead["marks"]]
    again = tick(new_data_sensor, instance, json.dumps(ahead), postgres=pg)
    assert [(r.partition_key, set(r.asset_selection)) for r in again.run_requests] == [("2026-03-10-09:00", {RO})]
    assert all(xid < 10**9 for _at, xid in json.loads(again.cursor)["marks"])


def test_kafka_lag_observations_show_the_embedded_brokers_rotations(settings, broker, database_url, monkeypatch,
                                                                   tmp_path):
    from salespulse.broker_rotation import RotationFiles, RotationState
    from salespulse.settings import get_settings

    monkeypatch.setenv("SALESPULSE_STATE_DIR", str(tmp_path))
    get_settings.cache_clear()
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap, consumer_group=f"g-{uuid.uuid4().hex[:6]}")
    pg = PostgresResource(database_url=database_url)
    before = tick(kafka_lag_sensor, None, None, kafka=kafka, postgres=pg)
    assert all("broker_rotations" not in e.metadata for e in before.asset_events)  # no embedded broker here
    RotationFiles(tmp_path).save_state(RotationState(rotations=3, held_messages=120, threshold=500,
                                                     last_rotation_at=1_700_000_000.0, last_pause_s=1.5))
    after = tick(kafka_lag_sensor, None, before.cursor, kafka=kafka, postgres=pg)
    ec = {e.asset_key.to_user_string(): e.metadata for e in after.asset_events}["kafka_ecommerce_events"]
    assert (ec["broker_rotations"].value, ec["broker_held_messages"].value) == (3, 120)
    assert ec["broker_last_rotation_at"].value == 1_700_000_000.0

"""A cheap code location for tests/test_dagster_runs.py: ``work_job``, one
partitioned op that returns at once, or — when the run has the tag
``hold=1`` — writes ``<DAGSTER_RUNS_TEST_DIR>/<run_id>.pid`` (its pid and its
code server's) and waits until ``release`` appears there, so a test can kill
or stop a run mid-flight without Spark."""

import os
import time
from pathlib import Path

from dagster import Definitions, StaticPartitionsDefinition, in_process_executor, job, op

PARTITIONS = StaticPartitionsDefinition(["p1", "p2", "p3", "p4", "p5"])


@op
def work(context) -> None:
    if context.run.tags.get("hold") != "1":
        return
    folder = Path(os.environ["DAGSTER_RUNS_TEST_DIR"])
    (folder / f"{context.run_id}.pid").write_text(f"{os.getpid()} {os.getppid()}")
    deadline = time.monotonic() + 120
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.2)


@job(partitions_def=PARTITIONS, executor_def=in_process_executor)
def work_job():
    work()


defs = Definitions(jobs=[work_job])

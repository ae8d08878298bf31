"""Holding a batch while a failed step (its write, its dead letters) waits for a retry.

Meanwhile every assigned partition is paused, yet the consumer is still
polled: a consumer not polled within ``max.poll.interval.ms`` leaves its
group, and rebalance callbacks only run inside a poll. Messages that still
arrive (from a partition assigned meanwhile) join the batch being filled.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from confluent_kafka import Consumer

#: the longest a single poll of the wait takes (the stop is checked between polls)
POLL_S = 0.5


class Hold:
    """``wait(seconds)`` with the partitions paused; ``release()`` resumes them."""

    def __init__(self, consumer: Callable[[], Consumer], accept: Callable[[Iterable], None], poll_size: int,
                 stopped: Callable[[], bool], after_poll: Callable[[], None]):
        self.consumer = consumer  # the consumer (it exists once the service runs)
        self.accept = accept
        self.poll_size = poll_size
        self.stopped = stopped
        self.after_poll = after_poll  # e.g. the drain check
        self.paused = False

    def wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopped():
            self._pause(True)  # again each time: partitions assigned meanwhile too
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            self.accept(self.consumer().consume(num_messages=self.poll_size, timeout=min(remaining, POLL_S)))
            self.after_poll()

    def release(self) -> None:
        if self.paused:
            self._pause(False)

    def _pause(self, paused: bool) -> None:
        consumer = self.consumer()
        parts = consumer.assignment()
        if parts:
            (consumer.pause if paused else consumer.resume)(parts)
        self.paused = paused

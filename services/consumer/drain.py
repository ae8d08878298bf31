"""Stopping: at once, or after draining what the broker still holds.

``stop()`` only asks. Without a drain (``CONSUMER_DRAIN_ON_STOP_S`` = 0) the
loop stops consuming at once. With one, it keeps consuming until the
assigned partitions are caught up (a known watermark for each, none ahead of
the position, nothing waiting to be batched), the drain time is over, or
every partition was taken away; the local stack's broker keeps messages in
memory only, so what is not drained before it stops is gone.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sized

from .rebalance import Key, Partitions

log = logging.getLogger("services.consumer")


class Drain:
    """The stop request (thread-safe) and, after it, when to stop consuming."""

    def __init__(self, seconds: float, partitions: Partitions, lag: Callable[[], dict[Key, int] | None],
                 filling: Sized):
        self.seconds = seconds
        self.partitions = partitions
        self.lag = lag  # per assigned partition; None if unknown
        self.filling = filling  # the batch being filled
        self.requested = threading.Event()  # stop() was called
        self.over = threading.Event()  # stop consuming now
        self.deadline: float | None = None

    def request(self) -> None:
        self.requested.set()
        if self.seconds <= 0:
            self.over.set()

    def stopped(self) -> bool:
        return self.over.is_set()

    def check(self) -> None:
        """After a stop request with a drain: stop once caught up or out of time."""
        if not self.requested.is_set() or self.over.is_set():
            return
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.seconds
            log.info("stop requested: draining the assigned partitions", extra={
                "event": "drain_started", "max_seconds": self.seconds})
        lag, assigned = self.lag(), self.partitions.assigned
        caught_up = lag is not None and len(lag) == len(assigned) and sum(lag.values()) == 0 and not self.filling
        if caught_up or now >= self.deadline or (self.partitions.ever_assigned and not assigned):
            log.info("drain finished", extra={"event": "drain_finished", "caught_up": caught_up,
                                              "lag": sum(lag.values()) if lag else None})
            self.over.set()

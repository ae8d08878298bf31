"""When a batch is complete: full, old enough, or the stream paused.

``consume(num_messages=n, timeout=t)`` blocks until n messages or t seconds,
so a batch is filled in calls: the first waits for one message (with a
linger) or a full batch (without); later ones ask for the room left, each
waiting at most the linger. A call that returns fewer messages than asked
within the linger means librdkafka's local queue is drained: the burst is
over, so the batch is written at once. While a backlog is read every call
returns full, so batches stay large; a slow stream is written message by
message burst, without waiting ``max_wait``.

A batch is also complete once its messages hold ``max_bytes`` (key + value
bytes, ``CONSUMER_BATCH_MAX_BYTES``): 500 messages of 1 MB would otherwise be
half a gigabyte held twice (the batch being filled and the one being
written). The first call then takes one message, and each later call asks
for no more than fit at the larger of the batch's average message size and
its (or the previous batch's) largest message, so a batch of big messages
overshoots the bound by about one message; at worst (big messages right
after a stream of small ones) by what one call returns, which librdkafka's
bounded prefetch queue caps (salespulse.kafka.prefetch_config).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

#: the longest a call waits for a batch's first message (the loop then checks stop, end and lag)
IDLE_POLL_S = 0.5


@dataclass(frozen=True)
class BatchPolicy:
    size: int  # messages per batch at most
    max_wait: float  # seconds since a batch's first message, at most
    linger: float  # write once no message came for this long (0: fill to size or max_wait)
    max_bytes: int | None = None  # key + value bytes per batch at most (None: no byte bound)

    def __post_init__(self) -> None:
        if self.size < 1 or self.max_wait <= 0 or self.linger < 0:
            raise ValueError("batch size and max wait must be positive, linger not negative")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError("the batch byte bound must be positive")

    def room(self, held: int, held_bytes: int, largest: int = 0) -> int:
        """Messages the batch may still take: by count, and by the bytes left at
        the larger of the batch's average message size and ``largest`` (the
        largest message of this batch and the previous one), at least one
        while bytes are left."""
        room = self.size - held
        if self.max_bytes is not None and held:
            left = self.max_bytes - held_bytes
            if left <= 0:
                return 0
            room = min(room, max(1, left // max(held_bytes // held, largest, 1)))
        return room

    def fill(self, consume: Callable[..., Sequence], accept: Callable[[Sequence], None], held: Callable[[], int],
             stopped: Callable[[], bool], complete: Callable[[], bool] = lambda: False,
             held_bytes: Callable[[], int] = lambda: 0, largest: Callable[[], int] = lambda: 0) -> None:
        """Consume into the batch (``accept``; ``held()`` = its size, ``held_bytes()``
        its key + value bytes, ``largest()`` the largest recent message) until it
        is complete, or nothing came (idle), or ``stopped()``; ``complete()`` may
        end it early (every partition at its end)."""
        deadline = None
        while not stopped():
            room = self.room(held(), held_bytes(), largest())
            if room <= 0:
                return
            if deadline is None:
                # the first message alone when bytes are bounded: its size says how many more fit
                first = 1 if self.linger or self.max_bytes is not None else room
                wanted, timeout = first, min(IDLE_POLL_S, self.max_wait)
            else:
                wanted, timeout = room, deadline - time.monotonic()
                if timeout <= 0:
                    return
                if self.linger:
                    timeout = min(timeout, self.linger)
            started = time.monotonic()
            msgs = consume(num_messages=wanted, timeout=timeout)
            accept(msgs)
            if not held():
                return  # idle: back to the main loop (stop, end and lag checks)
            if deadline is None:
                deadline = started + self.max_wait
            elif self.linger and len(msgs) < wanted:
                return  # nothing more within the linger: write what we have
            if complete():
                return

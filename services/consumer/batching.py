"""When a batch is complete: full, old enough, or the stream paused.

``consume(num_messages=n, timeout=t)`` blocks until n messages or t seconds,
so a batch is filled in calls: the first waits for one message (with a
linger) or a full batch (without); later ones ask for the room left, each
waiting at most the linger. A call that returns fewer messages than asked
within the linger means librdkafka's local queue is drained: the burst is
over, so the batch is written at once. While a backlog is read every call
returns full, so batches stay large; a slow stream is written message by
message burst, without waiting ``max_wait``.
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

    def __post_init__(self) -> None:
        if self.size < 1 or self.max_wait <= 0 or self.linger < 0:
            raise ValueError("batch size and max wait must be positive, linger not negative")

    def fill(self, consume: Callable[..., Sequence], accept: Callable[[Sequence], None], held: Callable[[], int],
             stopped: Callable[[], bool], complete: Callable[[], bool] = lambda: False) -> None:
        """Consume into the batch (``accept``; ``held()`` = its size) until it is
        complete, or nothing came (idle), or ``stopped()``; ``complete()`` may end
        it early (every partition at its end)."""
        deadline = None
        while not stopped():
            room = self.size - held()
            if room <= 0:
                return
            if deadline is None:
                wanted, timeout = (1 if self.linger else room), min(IDLE_POLL_S, self.max_wait)
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

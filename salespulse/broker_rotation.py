"""Rotation of the embedded broker: a bounded window instead of all history.

The embedded broker (tansu, in memory) keeps every message it ever received
until a topic is deleted, and its CPU grows with the data it holds
(docs/broker.md, defect 1). So the stack restarts it empty whenever it holds
more than ``BROKER_ROTATE_MESSAGES`` messages, without losing any:

1. the coordinator (in the broker's wrapper process, :mod:`salespulse.stack.broker`)
   writes a *pause request*: a file in ``<state>/broker/`` naming the rotation;
2. every producer registered in that folder sees it before it generates its
   next event, flushes what it holds (all delivered), acknowledges, and waits;
3. the coordinator waits for every live producer's acknowledgement, then for
   the consumer group to have committed the end of every data partition with
   the high watermarks standing still (a producer that never registered and
   keeps sending makes the rotation give up, not lose its messages);
4. it restarts the broker on the same port (topics re-created first), records
   the rotation and lifts the pause; each producer builds a new Kafka client
   (an idempotent producer never recovers from a broker restart: defect 2).

The consumer then re-joins a new group and reads the topics' new
incarnations from offset 0; writes are keyed by the events' own ids, so
nothing is written twice. A pause that is never lifted (the coordinator
killed mid-rotation) expires: producers go on after ``deadline``.

Dead-letter topics (``<topic>.dlq``) are not consumed by the pipeline; their
content is also in the ``dead_letters`` table, and a rotation drops it from
the broker like everything else.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

#: how often a producer looks for a pause request (a stat() of one file)
CHECK_EVERY_S = 0.05


@dataclass
class RotationState:
    """What ``salespulse status``, the metrics and the Dagster lag observations show."""

    rotations: int = 0
    held_messages: int = 0  # at the last check
    threshold: int = 0
    last_rotation: str = ""  # the id of the last rotation carried out (producers rebuild after it)
    last_rotation_at: float | None = None  # unix time
    last_pause_s: float | None = None  # producers paused, in seconds
    last_held_messages: int | None = None  # what the broker held when it was rotated
    last_phases_s: dict | None = None  # the last rotation's phases: producers paused, consumer drained, restart
    aborted: int = 0  # rotations given up (a producer or the consumer did not get there in time)
    last_abort_reason: str = ""
    checked_at: float | None = None


class RotationFiles:
    """The folder through which the coordinator and the producers agree (``<state>/broker``)."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir) / "broker"
        self.pause_file = self.dir / "pause"
        self.producers = self.dir / "producers"
        self.state_file = self.dir / "rotation.json"

    # -- the coordinator's side ------------------------------------------------
    def request_pause(self, rotation: str, deadline: float) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.pause_file, json.dumps({"rotation": rotation, "deadline": deadline}))

    def lift_pause(self) -> None:
        self.pause_file.unlink(missing_ok=True)

    def live_producers(self) -> dict[int, str]:
        """pid -> the rotation it acknowledged ('' for none), of producers still alive."""
        found = {}
        for path in self.producers.iterdir() if self.producers.is_dir() else []:
            if not path.name.isdigit():
                continue  # a producer's acknowledgement being written (see _write_atomic)
            pid = int(path.name)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                path.unlink(missing_ok=True)  # a producer that died without unregistering
                continue
            except PermissionError:
                pass  # alive, another user's
            try:
                found[pid] = path.read_text().strip()
            except FileNotFoundError:
                continue
        return found

    def save_state(self, state: RotationState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.state_file, json.dumps(asdict(state)))

    def load_state(self) -> RotationState | None:
        try:
            return RotationState(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    # -- the producers' side ---------------------------------------------------
    def pause_requested(self, now: float | None = None) -> str | None:
        """The rotation a pause is requested for, unless none is or it expired."""
        try:
            request = json.loads(self.pause_file.read_text())
        except (OSError, ValueError):
            return None
        if (now or time.time()) > request.get("deadline", 0):
            return None
        return str(request.get("rotation", ""))

    def register(self, pid: int) -> bool:
        try:
            self.producers.mkdir(parents=True, exist_ok=True)
            (self.producers / str(pid)).write_text("")
            return True
        except OSError:
            return False

    def acknowledge(self, pid: int, rotation: str) -> None:
        _write_atomic(self.producers / str(pid), rotation)

    def unregister(self, pid: int) -> None:
        (self.producers / str(pid)).unlink(missing_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ProducerPause:
    """A producer's side of a rotation: call :meth:`hold` before generating each event.

    A no-op (one ``stat`` every :data:`CHECK_EVERY_S`) unless a rotation asks
    for a pause. ``publisher`` needs ``flush(timeout) -> int`` (messages left),
    ``poll(timeout)`` and ``rebuild()``.
    """

    def __init__(self, state_dir: Path, pid: int | None = None):
        self.files = RotationFiles(state_dir)
        self.pid = pid or os.getpid()
        self.registered = self.files.register(self.pid)
        self._next_check = 0.0

    def hold(self, publisher, stop_event: threading.Event) -> bool:
        """Pause while a rotation asks for it; True if the producer paused."""
        now = time.monotonic()
        if not self.registered or now < self._next_check:
            return False
        self._next_check = now + CHECK_EVERY_S
        rotation = self.files.pause_requested()
        if rotation is None:
            return False
        left = publisher.flush(10.0)
        if left == 0:  # every message delivered: the broker may go
            try:
                self.files.acknowledge(self.pid, rotation)
            except OSError as exc:  # no acknowledgement: the rotation gives up, nothing is lost
                log.warning("could not acknowledge the pause: %s", exc)
        log.info("paused for a broker rotation", extra={"rotation": rotation, "undelivered": left})
        while self.files.pause_requested() == rotation and not stop_event.is_set():
            publisher.poll(CHECK_EVERY_S)
        state = self.files.load_state()
        if state and state.last_rotation == rotation:  # carried out, not given up
            publisher.rebuild()  # a new idempotent producer for the new broker (defect 2)
        return True

    def close(self) -> None:
        if self.registered:
            self.files.unregister(self.pid)


class Rotator:
    """The coordinator: measures what the broker holds and rotates it past the threshold.

    ``observe()`` returns the group's lag per data partition (a list of
    :class:`salespulse.lag.PartitionLag`); ``restart()`` restarts the broker
    empty, its topics created, on the same address.
    """

    def __init__(self, files: RotationFiles, threshold: int, observe: Callable[[], list],
                 restart: Callable[[], None], timeout_s: float = 30.0):
        self.files, self.threshold, self.observe, self.restart = files, threshold, observe, restart
        self.timeout_s = timeout_s
        self.state = files.load_state() or RotationState()
        self.state.threshold = threshold
        files.lift_pause()  # a request left by a coordinator that was killed mid-rotation

    def check(self) -> bool:
        """Measure what the broker holds; rotate if over the threshold. True if it rotated."""
        lags = self.observe()
        self.state.held_messages = held_messages(lags)
        self.state.checked_at = time.time()
        rotated = False
        if self.threshold and self.state.held_messages >= self.threshold:
            rotated = self.rotate()
        self.files.save_state(self.state)
        return rotated

    def rotate(self) -> bool:
        rotation, started = uuid.uuid4().hex[:12], time.monotonic()
        deadline = started + self.timeout_s
        self.files.request_pause(rotation, time.time() + self.timeout_s + 15)
        try:
            reason = self._wait_for_producers(rotation, deadline)
            paused = time.monotonic()
            reason = reason or self._wait_for_drain(deadline)
            drained = time.monotonic()
            if reason:
                self.state.aborted += 1
                self.state.last_abort_reason = reason
                log.warning("broker rotation given up: %s", reason)
                return False
            held = self.state.held_messages
            self.restart()
            self.state.rotations += 1
            self.state.last_rotation = rotation
            self.state.last_rotation_at = time.time()
            self.state.last_held_messages = held
            self.state.held_messages = 0
            self.state.last_pause_s = round(time.monotonic() - started, 2)
            self.state.last_phases_s = {"producers": round(paused - started, 2), "drain": round(drained - paused, 2),
                                        "restart": round(time.monotonic() - drained, 2)}
            self.files.save_state(self.state)  # before the pause is lifted: producers read it
            log.warning("broker rotated: held %d messages, producers paused %.2f s %s", held,
                        self.state.last_pause_s, self.state.last_phases_s)
            return True
        finally:
            self.files.lift_pause()

    def _wait_for_producers(self, rotation: str, deadline: float) -> str:
        while True:
            waiting = [pid for pid, acked in self.files.live_producers().items() if acked != rotation]
            if not waiting:
                return ""
            if time.monotonic() > deadline:
                return f"producers {waiting} did not pause in time"
            time.sleep(0.05)

    def _wait_for_drain(self, deadline: float) -> str:
        """The group has committed every partition's end, and the ends stood still."""
        before = None
        while True:
            lags = self.observe()
            ends = {(p.topic, p.partition): p.high for p in lags}
            drained = all(p.high is not None and p.lag == 0 for p in lags)
            if drained and ends == before:
                return ""
            if time.monotonic() > deadline:
                behind = sum(p.lag or 0 for p in lags)
                return f"the consumer had not committed the end ({behind} messages behind) or producers kept sending"
            before = ends if drained else None
            time.sleep(0.25)

    def run(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.wait(interval_s):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - a failed check must not end the broker
                log.warning("broker rotation check failed: %r", exc)


def held_messages(lags: list) -> int:
    """Messages the broker holds: from each partition's low to its high watermark."""
    return sum((p.high or 0) - (p.low or 0) for p in lags)

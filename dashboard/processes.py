"""The local stack's processes as supervisord sees them, for the pipeline page.

Under ``make run`` every process runs under supervisord; one that exited is
restarted with back-off, and the page says so ("consumer: restarting after an
exit at 04:05:03"), as ``salespulse status`` does. The app image has no local
stack (``salespulse.stack`` is left out of it) and compose restarts
containers itself, so there the answer is ``None``: nothing to show.
"""

from __future__ import annotations

from pathlib import Path


def local_processes(state_dir: Path) -> list[dict] | None:
    """``[{name, state, detail, running}]`` of the local stack, or None when none runs here."""
    try:
        from salespulse.stack.supervise import process_states
    except ImportError:
        return None  # the runtime image: no embedded stack
    states = process_states(state_dir)
    if states is None:
        return None
    return [{"name": s.name, "state": s.state, "detail": s.detail, "running": s.state == "RUNNING"}
            for s in states]

"""Secrets in process arguments: ``/proc/PID/cmdline`` is readable by every
local user (``ps`` shows it), so no process the project starts may carry a
password, a token or a URL with a password in its arguments."""

from __future__ import annotations

from pathlib import Path


def arguments_holding(secrets: list[str], pids: list[int] | None = None) -> dict[int, list[str]]:
    """PID -> the ``secrets`` found in its arguments, over ``pids`` (default: every
    process of the machine). Empty when none is found."""
    needles = [s for s in secrets if s]
    assert needles, "nothing to look for"
    found: dict[int, list[str]] = {}
    entries = [Path(f"/proc/{pid}") for pid in pids] if pids is not None else \
        [e for e in Path("/proc").iterdir() if e.name.isdigit()]
    for entry in entries:
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
        except OSError:
            continue
        hits = [s for s in needles if s in argv]
        if hits:
            found[int(entry.name)] = hits
    return found


def process_count(pids: list[int] | None = None) -> int:
    """How many of ``pids`` (or of the machine's processes) have readable arguments."""
    entries = [Path(f"/proc/{pid}") for pid in pids] if pids is not None else \
        [e for e in Path("/proc").iterdir() if e.name.isdigit()]
    count = 0
    for entry in entries:
        try:
            if (entry / "cmdline").read_bytes():
                count += 1
        except OSError:
            continue
    return count

"""``python -m salespulse.stack.launch NAME [--wait MARKER] -- CMD...``: how supervisord starts a stack process.

1. ``--wait MARKER``: block until the file MARKER holds this run's id
   (``SALESPULSE_STACK_RUN``), i.e. until the stack's set-up (migrations,
   topics, Dagster config) is done;
2. prefix every line the command writes (stdout and stderr) with NAME: the
   output goes through a ``sed`` that ignores SIGTERM/SIGINT/SIGHUP, so it
   outlives the command's last line and exits when the pipe closes;
3. ask the kernel to send SIGTERM when supervisord dies (``PR_SET_PDEATHSIG``,
   kept across exec): a ``kill -9`` or OOM kill of supervisord then stops the
   stack's processes (each through its own SIGTERM path) instead of leaving
   orphans that hold the ports and the data directories;
4. exec the command with default signal dispositions, so it keeps this pid
   (the one supervisord signals and watches).

Standard library only, so ten of these starting at once cost little.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from salespulse.parent_death import die_with_parent

#: Width of the name prefixed to each output line.
NAME_WIDTH = 19
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: supervisord's pid, read as early as possible (see stop_with_parent)
_PARENT_AT_START = os.getppid()


def stop_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when its parent dies; exit now if it already has."""
    die_with_parent(signal.SIGTERM)
    if parent_pid == 1 or os.getppid() != parent_pid:  # the parent died before the request took effect
        raise SystemExit(f"parent {parent_pid} is gone; not starting")


def wait_for_marker(marker: Path, run_id: str) -> None:
    while True:
        try:
            if marker.read_text() == run_id:
                return
        except OSError:
            pass
        time.sleep(0.3)


def _ignore_stop_signals() -> None:  # in the sed child, between fork and exec
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def prefix_output(name: str) -> None:
    """Route this process's stdout and stderr through ``sed`` adding ``name | ``."""
    sed = subprocess.Popen(["sed", "-u", f"s/^/{name:<{NAME_WIDTH}} | /"], stdin=subprocess.PIPE,
                           preexec_fn=_ignore_stop_signals)
    os.dup2(sed.stdin.fileno(), 1)
    os.dup2(sed.stdin.fileno(), 2)
    sed.stdin.close()


def launch(name: str | None, command: list[str], marker: Path | None = None) -> None:
    if not command:
        raise SystemExit("no command given")
    stop_with_parent(_PARENT_AT_START)
    if marker is not None:
        wait_for_marker(marker, os.environ.get("SALESPULSE_STACK_RUN", "manual"))
    if name:
        prefix_output(name)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    os.execvp(command[0], command)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m salespulse.stack.launch", description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--wait", type=Path, metavar="MARKER", help="wait until MARKER holds this run's id")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    launch(args.name, command, args.wait)


if __name__ == "__main__":
    main(sys.argv[1:])

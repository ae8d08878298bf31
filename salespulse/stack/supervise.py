"""supervisord for the local stack: its configuration, and its state for ``salespulse status``.

Why supervisord (PyPI ``supervisor``): it restarts a process that exits with
a growing back-off, and it stops process *groups* one after the other in
reverse priority order, waiting for each group to be gone (SIGTERM to the
whole process group, SIGKILL after ``stopwaitsecs``) before the next. The
stack's start and stop order is therefore just the priorities in
:func:`salespulse.stack.runner.plan`.

This module imports nothing from ``supervisor`` at import time: the
production image does not ship it, and ``salespulse status`` must still work
there (it then reports no supervised processes).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from salespulse.stack.runner import Service

#: supervisord restarts a process that exits within ``startsecs`` of being
#: started after 1 s, 2 s, 3 s, ... and gives up (state FATAL) after this many tries.
START_RETRIES = 20


def supervisor_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "supervisor"


def socket_path(state_dir: Path) -> Path:
    return supervisor_dir(state_dir) / "supervisor.sock"


def _quote(value: str) -> str:
    """A value for supervisord's config: ``%`` is its interpolation character."""
    return str(value).replace("%", "%%")


def render_config(services: list["Service"], state_dir: Path, cwd: Path) -> str:
    """supervisord.conf for ``services``.

    Every program's output goes to supervisord's stdout (the terminal of
    ``make run``); each process prefixes its own lines with its name (see
    :mod:`salespulse.stack.launch`). Programs sharing a ``group`` start and stop
    together at the group's priority.
    """
    sup = supervisor_dir(state_dir)
    lines = [
        "[supervisord]", "nodaemon=true", f"logfile={_quote(sup / 'supervisord.log')}",
        "logfile_maxbytes=5MB", "logfile_backups=1", "loglevel=info",
        f"pidfile={_quote(sup / 'supervisord.pid')}", f"childlogdir={_quote(sup)}", "identifier=salespulse",
        *(["user=root"] if os.geteuid() == 0 else []), "",  # as root: say so (no "privileges not dropped" alarm)
        "[unix_http_server]", f"file={_quote(socket_path(state_dir))}", "chmod=0700", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{_quote(socket_path(state_dir))}", "",
    ]
    groups: dict[str, list["Service"]] = {}
    for service in services:
        env = ",".join(f'{k}="{_quote(v)}"' for k, v in service.env.items())
        lines += [
            f"[program:{service.name}]",
            "command=" + " ".join(_quote(_shell_word(w)) for w in service.command),
            f"directory={_quote(cwd)}",
            f"priority={service.priority}",
            "autostart=true", "autorestart=true",
            f"startsecs={service.start_secs}", f"startretries={START_RETRIES}",
            "stopsignal=TERM", f"stopwaitsecs={service.stop_wait}",
            "stopasgroup=true", "killasgroup=true",
            "stdout_logfile=/dev/stdout", "stdout_logfile_maxbytes=0", "redirect_stderr=true",
        ]
        if env:
            lines.append(f"environment={env}")
        lines.append("")
        if service.group:
            groups.setdefault(service.group, []).append(service)
    for group, members in groups.items():
        lines += [f"[group:{group}]", "programs=" + ",".join(s.name for s in members),
                  f"priority={members[0].priority}", ""]
    return "\n".join(lines)


def _shell_word(word: str) -> str:
    """supervisord splits ``command`` like a POSIX shell would (shlex)."""
    import shlex

    return shlex.quote(word)


# -- state, for `salespulse status` -------------------------------------------------
@dataclass
class ProcessState:
    name: str
    state: str  # supervisord's: RUNNING, STARTING, BACKOFF, STOPPING, STOPPED, EXITED, FATAL
    detail: str

    @property
    def ok(self) -> bool:
        return self.state == "RUNNING"


def rpc(state_dir: Path):
    """An XML-RPC proxy to the running stack's supervisord (raises OSError if none runs)."""
    from xmlrpc.client import ServerProxy

    from supervisor.xmlrpc import SupervisorTransport

    path = socket_path(state_dir)
    if not path.exists():
        raise FileNotFoundError(f"no stack supervisor socket at {path}")
    return ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{path}"))


def process_states(state_dir: Path) -> list[ProcessState] | None:
    """Each supervised process's state, or None when no local stack runs here."""
    from xmlrpc.client import Fault

    try:
        infos = rpc(state_dir).supervisor.getAllProcessInfo()
    except ImportError:
        return None  # supervisor not installed: no local stack on this machine
    except OSError:
        return None  # no socket, or a stale one: the stack is not running
    except Fault as fault:  # SHUTDOWN_STATE while the stack stops
        detail = "the stack is stopping" if "SHUTDOWN" in fault.faultString else fault.faultString
        return [ProcessState("supervisord", "STOPPING", detail)]
    return [describe_process(info) for info in infos]


def describe_process(info: dict) -> ProcessState:
    state = info["statename"]
    if state == "STARTING" and info.get("stop"):
        detail = "restarting after an exit at " + _clock(info["stop"])
    elif state == "BACKOFF":
        detail = "restarting after back-off: " + (info.get("spawnerr") or "exited too quickly")
    elif state == "FATAL":
        detail = "gave up restarting: " + (info.get("spawnerr") or "exited too quickly too often")
    elif state in ("EXITED", "STOPPED"):
        detail = _last_exit(info)
    else:
        detail = info.get("description", "")
    return ProcessState(info["name"], state, detail)


def _last_exit(info: dict) -> str:
    return info.get("description") or f"exit status {info.get('exitstatus')}"


def _clock(timestamp: int) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def set_child_subreaper() -> None:
    """Linux: orphans of the stack's processes are re-parented to (and reaped by) supervisord."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def exec_supervisord(config: Path) -> None:
    set_child_subreaper()
    os.execv(sys.executable, [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(config)])

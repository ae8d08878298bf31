"""``die_with_parent``: the kernel signals this process when its parent dies.

Linux's ``PR_SET_PDEATHSIG`` survives exec, so a wrapper can ask for it for
the program it execs or spawns (in ``preexec_fn``): a SIGKILLed parent then
leaves no orphan behind. One implementation for every wrapper that needs it
(the local stack's launcher, broker and Spark wrappers, the Dagster daemon
wrapper).
"""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask for ``sig`` when the parent dies; OSError if the kernel refuses."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")

"""A worker started by the bot ends with it (`python -m engine worker --parent-pid PID`).

Left behind by a killed bot, a worker would keep the store's lease, and the next bot's worker would be refused.
So the worker asks the kernel for SIGTERM when its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`), or, where
that is not available, watches `os.getppid()` from a thread and sends itself SIGTERM when it changes. Either
way the worker stops as on any SIGTERM: the job in hand goes back to the queue at the next step boundary and
the lease is released.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
POLL_S = 0.5


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine has that id (one that belongs to another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def follow_parent(parent_pid: int, *, prctl: bool = True, poll_s: float = POLL_S) -> bool:
    """Have SIGTERM sent to this process when its parent `parent_pid` ends. False if the parent has ended
    already (or is not this process's parent): then nothing was arranged. `prctl=False` uses the watcher
    thread even where prctl is available."""
    kernel = prctl and _death_signal(signal.SIGTERM)
    # Checked after asking: a parent that died just before has left this process to a new parent, and its death
    # signal will never come.
    if os.getppid() != parent_pid:
        return False
    if not kernel:
        threading.Thread(target=_watch, args=(parent_pid, poll_s), name="parent-watch", daemon=True).start()
    return True


def _death_signal(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig): the kernel sends `sig` when the thread that started this process exits
    (the bot starts its worker from its main thread, the one running its event loop)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.prctl
    except (OSError, AttributeError):
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    call.restype = ctypes.c_int
    return call(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _watch(parent_pid: int, poll_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os.kill(os.getpid(), signal.SIGTERM)


__all__ = ["follow_parent", "pid_alive"]

"""Is a process the store knows about (a sender, a scheduler) still alive? Knowable only on its host.

Rows name the host and pid of the process that wrote them; on that same host, ``kill(pid, 0)`` tells
at once whether the process is gone, so a restart need not wait for a heartbeat or a lease to expire.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def this_host() -> str:
    return socket.gethostname()


def gone(host: str, pid: int) -> bool:
    """True only when the process ran on this host and no longer exists; False when it lives, or when
    it ran elsewhere (only its heartbeat can tell then)."""
    if host != this_host():
        return False
    return not running(pid)


def running(pid: int) -> bool:
    """Whether process ``pid`` of this host runs: it exists and is not a zombie (dead, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill(0) is all we can know
    return state != "Z"

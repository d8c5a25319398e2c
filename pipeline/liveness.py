"""Is a process the store knows about (a sender, a scheduler) still alive? Knowable only on its host.

Rows name the host and pid of the process that wrote them; on that same host, ``kill(pid, 0)`` tells
at once whether the process is gone, so a restart need not wait for a heartbeat or a lease to expire.
"""

from __future__ import annotations

import os
import socket


def this_host() -> str:
    return socket.gethostname()


def gone(host: str, pid: int) -> bool:
    """True only when the process ran on this host and no longer exists; False when it lives, or when
    it ran elsewhere (only its heartbeat can tell then)."""
    if host != this_host():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False

"""What a test borrows from the machine: a free local port, and the id of a process that is gone."""

from __future__ import annotations

import socket
import subprocess


def free_port() -> int:
    """A localhost TCP port nothing listens on right now (for servers a test starts, or one that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_pid() -> int:
    """A process id that is not running (a child that has exited and been reaped): a holder that died."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid

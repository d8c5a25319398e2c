"""What an SMTP sender handed over, message by message, in a journal that outlives a SIGKILL.

The ledger records a batch when its transport call returns: a sender killed in the middle of a batch
leaves the whole batch ``sending``. Over SMTP a batch is many messages, one after another on a
connection, and at most one of them is truly uncertain: the one whose DATA was out when the process
died. The journal says which: before a batch, the rows it holds; before each DATA, the row; after the
server's answer, whether it took the message. The next run reads it and settles the rest.

Each line is one unbuffered ``write`` on an append-only file (one file per process and campaign), so
what was written survives the process (the kernel has it) and lines of parallel connections never mix.
It is not flushed to disk: a power cut can lose its tail, as it can the store's own last commits
(SQLite runs with ``synchronous=NORMAL``). Rows the journal has never heard of stay in doubt.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

from pipeline.transports.base import Outcome

CLAIMED, HANDING, ACCEPTED, REFUSED = "C", "H", "A", "R"
_LINE = re.compile(r"([CHAR]) (\d+(?: \d+)*)")


class Handover:
    """The journal of this process's SMTP handovers, one file per campaign under ``folder``."""

    def __init__(self, folder: Path, transport: str) -> None:
        self.folder = folder
        self.transport = transport
        self._files: dict[int, int] = {}
        self._lock = threading.Lock()

    def note(self, campaign_id: int, kind: str, delivery_ids: Iterable[int]) -> None:
        """One line: ``CLAIMED`` before a batch (a row never named so is never settled from here),
        ``HANDING`` before its DATA (from then on the server may have it), then the server's answer."""
        line = f"{kind} {' '.join(map(str, delivery_ids))}\n".encode("ascii")
        os.write(self._file(campaign_id), line)

    def _file(self, campaign_id: int) -> int:
        with self._lock:
            fd = self._files.get(campaign_id)
            if fd is None:
                fd = os.open(self._path_of(campaign_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._files[campaign_id] = fd
            return fd

    def close(self) -> None:
        """This process's journals, once every outcome they hold has been returned to the ledger."""
        with self._lock:
            for campaign_id, fd in self._files.items():
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    self._path_of(campaign_id).unlink()
            self._files.clear()

    def _path_of(self, campaign_id: int) -> Path:
        return self.folder / f"{self.transport}-campaign{campaign_id}-pid{os.getpid()}.log"

    def settle(self, campaign_id: int, delivery_ids: Iterable[int]) -> list[Outcome]:
        """What the journals of every process say about ``delivery_ids``: accepted → ``sent``; claimed but
        DATA never begun, or refused → ``unsent``. A row whose DATA was out with no answer is left out:
        that one is truly in doubt. So is a row no journal here names (another machine sent it)."""
        wanted = set(delivery_ids)
        verdict: dict[int, str] = {}
        for path in self.folder.glob(f"{self.transport}-campaign{campaign_id}-pid*.log"):
            for delivery_id, kind in _last_word(path, wanted).items():
                if delivery_id not in verdict or _RANK[kind] > _RANK[verdict[delivery_id]]:
                    verdict[delivery_id] = kind
        outcomes = []
        for delivery_id, kind in verdict.items():
            if kind == ACCEPTED:
                outcomes.append(Outcome(delivery_id, "sent"))
            elif kind != HANDING:
                reason = "never handed over" if kind == CLAIMED else "the server refused it"
                outcomes.append(Outcome(delivery_id, "unsent", None, f"{reason} (SMTP journal)"))
        return outcomes


_RANK = {CLAIMED: 0, REFUSED: 0, HANDING: 1, ACCEPTED: 2}
"""Across processes (files), the strongest word wins: a row sent by one run is sent; one whose DATA was
out unanswered in any run is in doubt, whatever an earlier run's refusal said."""


def _last_word(path: Path, wanted: set[int]) -> dict[int, str]:
    """Each wanted row's last state in one process's journal: its lines are in the order they happened."""
    last: dict[int, str] = {}
    for kind, ids in _entries(path):
        for delivery_id in ids:
            if delivery_id in wanted:
                last[delivery_id] = kind
    return last


def _entries(path: Path) -> Iterable[tuple[str, list[int]]]:
    """The journal's complete lines; a torn last line (the process died mid-write) is ignored."""
    for line in path.read_text(encoding="ascii", errors="replace").splitlines(keepends=True):
        match = _LINE.fullmatch(line.rstrip("\n"))
        if match and line.endswith("\n"):
            yield match[1], [int(n) for n in match[2].split()]

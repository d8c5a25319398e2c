"""SpamAssassin's verdict on messages, with its local rules only (``spamassassin -L -t``).

Editors cannot see what filters score: a phrase ("lose half its weight" is DIET_1), text coloured
like its background (HTML_FONT_LOW_CONTRAST). SpamAssassin takes about a second to start and a
tenth of one per message, so all the messages of a check go to one run, as an mbox. It runs with an
empty home folder of its own: no user preferences or Bayes database of the user's count, nothing is
written to their home, and the score is the same wherever the same rules are installed.

Besides the report (a template of our own, between markers), the run logs its rule hits
(``-D rules,check``): that log holds the text a rule matched, which is how a warning can point at
the issue field that holds the phrase.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

SPAMASSASSIN = "spamassassin"
INSTALL = "apt-get install -y --no-install-recommends spamassassin"
UNSCORED = frozenset({"NO_RECEIVED", "NO_RELAYS"})
"""Rules that fire on every message that never passed a mail server, as a message under check has not:
no Received header, no relay. They describe where the message is, not what it says (both score 0)."""
TIMEOUT_SECONDS, TIMEOUT_PER_MESSAGE = 60.0, 10.0

_START, _END = "@@newsletter-check-report", "@@newsletter-check-end"
_OPTIONS = (
    "-L",  # local tests only: no DNS blocklists, no network
    "-t",  # test mode: the report is added to every message, spam or not
    "--mbox",
    "-D",
    "rules,check",
    "--cf=clear_report_template",
    f"--cf=report {_START}",
    "--cf=report _SCORE_",
    "--cf=report _SUMMARY_",
    f"--cf=report {_END}",
    # A hit on every message's Message-ID marks which message a stretch of the log is about.
    "--cf=header __NL_CHECK_ID Message-ID =~ /\\S+/",
)
_SUMMARY_ROW = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s+(.*)$")
_HIT = re.compile(r'dbg: rules: ran \w+ rule (\w+) ======> got hit: "(.*)"$')
_MESSAGE_START = "dbg: check: pms new"


class SpamAssassinError(RuntimeError):
    """SpamAssassin could not score the messages (it failed, timed out or answered in a way we cannot read)."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One rule that fired: its points, SpamAssassin's description, and the text it matched when the
    log names it (body and header rules; not eval or meta rules)."""

    rule: str
    score: float
    description: str
    matched: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float
    hits: tuple[Hit, ...]

    @property
    def scored(self) -> list[Hit]:
        """The hits that add points, less the ones every message under check has (``UNSCORED``)."""
        return [hit for hit in self.hits if hit.score > 0 and hit.rule not in UNSCORED]


def installed() -> str | None:
    """The ``spamassassin`` program on PATH, if any."""
    return shutil.which(SPAMASSASSIN)


def score(messages: Sequence[bytes], program: str = SPAMASSASSIN) -> list[Verdict]:
    """A verdict per message, in order; each message needs a Message-ID no other one has."""
    ids = [_message_id(message) for message in messages]
    if len(set(ids)) != len(ids) or "" in ids:
        raise ValueError("every message needs its own Message-ID")
    with tempfile.TemporaryDirectory(prefix="newsletter-spamassassin-") as home:
        try:
            done = subprocess.run(
                [program, *_OPTIONS],
                input=_mbox(messages),
                capture_output=True,
                env={**os.environ, "HOME": home},
                timeout=TIMEOUT_SECONDS + TIMEOUT_PER_MESSAGE * len(messages),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SpamAssassinError(f"{program}: {exc}") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise SpamAssassinError(f"{program} exited with status {done.returncode}: {detail[0]}")
    reports = _reports(done.stdout.decode("utf-8", "replace"))
    matched = _matches(done.stderr.decode("utf-8", "replace"))
    missing = [mid for mid in ids if mid not in reports]
    if missing:
        raise SpamAssassinError(f"{program} gave no report for {len(missing)} of {len(ids)} message(s)")
    return [_verdict(reports[mid], matched.get(mid, {})) for mid in ids]


def _message_id(message: bytes) -> str:
    head = BytesHeaderParser(policy=compat32).parsebytes(message)
    return " ".join(str(head.get("Message-ID", "")).split())


def _mbox(messages: Sequence[bytes]) -> bytes:
    """The messages as one mbox: a ``From`` line before each, LF line ends, body lines that start with
    ``From `` quoted (``>From ``) so they cannot start a message."""
    out = []
    for message in messages:
        text = message.replace(b"\r\n", b"\n")
        out.append(b"From newsletter-check Thu Jan  1 00:00:00 1970\n")
        out.append(re.sub(rb"^(>*From )", rb">\1", text, flags=re.MULTILINE).rstrip(b"\n") + b"\n\n")
    return b"".join(out)


def _split_mbox(text: str) -> Iterator[str]:
    message: list[str] = []
    for line in text.splitlines():
        if line.startswith("From ") and message:
            yield "\n".join(message)
            message = []
        message.append(line)
    if message:
        yield "\n".join(message)


def _reports(stdout: str) -> dict[str, list[str]]:
    """Each message's report lines (score, then the rule table), by Message-ID."""
    reports: dict[str, list[str]] = {}
    for message in _split_mbox(stdout):
        head, _, body = message.partition("\n\n")
        start = body.rfind(f"\n{_START}\n")
        end = body.find(f"\n{_END}", start + 1)
        if start < 0 or end < 0:
            continue
        mid = _message_id(head.partition("\n")[2].encode("utf-8"))
        reports[mid] = body[start + len(_START) + 2 : end].strip("\n").splitlines()
    return reports


def _matches(log: str) -> dict[str, dict[str, list[str]]]:
    """The text each rule matched, by Message-ID then rule, from the ``-D rules,check`` log."""
    found: dict[str, dict[str, list[str]]] = {}
    hits: dict[str, list[str]] = {}
    for line in log.splitlines():
        if _MESSAGE_START in line:
            hits = {}
            continue
        match = _HIT.search(line)
        if match is None:
            continue
        rule, text = match.groups()
        if rule == "__NL_CHECK_ID":
            found[" ".join(text.split())] = hits
        else:
            hits.setdefault(rule, []).append(text)
    return found


def _verdict(lines: list[str], matched: dict[str, list[str]]) -> Verdict:
    """Parse ``_SCORE_`` then ``_SUMMARY_`` (``pts rule description``, long descriptions wrapped onto
    indented lines)."""
    try:
        total = float(lines[0].strip())
    except (IndexError, ValueError):
        raise SpamAssassinError(f"unreadable SpamAssassin report: {lines[:2]}") from None
    rows: list[list[str]] = []
    for line in lines[1:]:
        row = _SUMMARY_ROW.match(line)
        if row:
            rows.append(list(row.groups()))
        elif line.strip() and rows:
            rows[-1][2] += " " + line.strip()
    hits = tuple(
        Hit(rule, float(points), description.strip(), tuple(dict.fromkeys(matched.get(rule, ()))))
        for points, rule, description in rows
    )
    return Verdict(total, hits)

"""What the bounce tests share: the fixtures of tests/data/bounces/ filled in for a message that went out."""

from __future__ import annotations

from email import message_from_bytes, policy

from tests.paths import REPO

BOUNCES = REPO / "tests" / "data" / "bounces"
FIXTURES = sorted(path.name for path in BOUNCES.glob("*.eml"))


def fill(name: str, *, verp: str, rcpt: str, sent: bytes) -> bytes:
    """Fixture ``name`` as the provider would send it about ``sent``, the message that went to ``rcpt``
    from the envelope sender ``verp`` (see tests/data/bounces/README.md for the placeholders)."""
    message = sent.replace(b"\r\n", b"\n").decode("utf-8")
    headers = message.partition("\n\n")[0] + "\n"
    parsed = message_from_bytes(sent, policy=policy.default)
    values = {
        "verp": verp,
        "rcpt": rcpt,
        "subject": str(parsed["Subject"]),
        "message_id": str(parsed["Message-ID"] or "<none@example.net>"),
        "headers": headers,
        "message": message,
    }
    text = (BOUNCES / name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    assert "{{" not in text, f"{name} has a placeholder fill() does not know"
    return text.encode("utf-8")


def sample_message(rcpt: str, *, message_id: str | None = None, unsubscribe: str | None = None) -> bytes:
    """A small message as the pipeline sends them (headers left out when None), for library tests."""
    lines = [
        f"To: Reader <{rcpt}>",
        "Date: Tue, 01 Dec 2026 12:04:09 +0000",
        *([f"Message-ID: {message_id}"] if message_id else []),
        *([f"List-Unsubscribe: <{unsubscribe}>"] if unsubscribe else []),
        "From: The Juggle <hello@news.example.org>",
        "Subject: Name it to tame it",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="utf-8"',
        "",
        "Hello there.",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")

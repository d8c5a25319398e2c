"""DKIM signing cost per recipient: `python bench/dkim.py [--recipients N] [--bits B]` prints the figures.

Every copy is personalised (its links carry the recipient's tokens), so the body hash and the RSA
operation are the recipient's own. Measured side by side in one run, in alternating rounds so both
see the same machine: building each copy alone, and building and signing it as the SMTP transport
does (``message_signer``); the medians, the difference and the ratio. Then where the signing time goes
(body canonicalisation, SHA-256, the RSA operation), and dkimpy's own ``dkim.sign`` on the same
messages (the tests' reference verifier, not our signer) for comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pipeline.content.issue import load_issue
from pipeline.recipient import PersonalFields, Recipient
from pipeline.render.links import Links
from pipeline.render.message import MessageTemplate
from pipeline.render.renderer import render
from pipeline.settings import load_settings
from pipeline.tokens import Signer
from pipeline.transports.dkim import message_signer, relaxed_body

ROOT = Path(__file__).resolve().parents[1]
ISSUE = ROOT / "issues" / "2026-12-01-name-it-to-tame-it.yaml"
ROUNDS = 7
T = TypeVar("T")
SIGNED = ["from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post"]


def each(items: Sequence[T], function: Callable[[T], object]) -> float:
    """Seconds per item for ``function`` over ``items``."""
    start = time.perf_counter()
    for item in items:
        function(item)
    return (time.perf_counter() - start) / len(items)


def alternating(items: Sequence[T], functions: dict[str, Callable[[T], object]]) -> dict[str, float]:
    """Median seconds per item of each function, over rounds that take turns (noise hits all alike)."""
    rounds: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(ROUNDS):
        for name, function in functions.items():
            rounds[name].append(each(items, function))
    return {name: statistics.median(seconds) for name, seconds in rounds.items()}


def dkimpy() -> ModuleType:
    """dkimpy's ``dkim``: run as ``python bench/dkim.py``, this file's folder is first on sys.path and
    this file would be imported under that name instead."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    return importlib.import_module("dkim")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=2000, help="distinct recipients per round")
    parser.add_argument("--bits", type=int, default=2048, help="RSA key size")
    args = parser.parse_args()
    base = load_settings(ROOT / "settings.toml")
    key = rsa.generate_private_key(public_exponent=65537, key_size=args.bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dkim.pem"
        path.write_bytes(pem)
        path.chmod(0o600)
        settings = base.model_copy(update={"dkim": base.dkim.model_copy(update={"private_key_file": path})})
        sign = message_signer(settings)
    rendered = render(load_issue(ISSUE), settings)
    template = MessageTemplate(settings, rendered)
    links = Links(settings, Signer(b"bench-dkim-signing-key-0123456789abcdef"))
    people = [Recipient(1000 + i, f"reader{i}@example.com", f"Reader {i}") for i in range(args.recipients)]
    copies: list[tuple[Recipient, PersonalFields]] = [(p, links.personal_fields(p)) for p in people]

    def build(item: tuple[Recipient, PersonalFields]) -> bytes:
        recipient, fields = item
        return template.build(recipient, fields, message_id=template.message_id())

    print(f"{args.recipients:,} recipients, {args.bits}-bit RSA, median of {ROUNDS} alternating rounds")
    times = alternating(copies, {"build": build, "build+sign": lambda item: sign(build(item))})
    alone, signed = times["build"], times["build+sign"]
    print(f"  build alone                 {alone * 1e6:8.1f} µs per recipient")
    print(f"  build + DKIM sign           {signed * 1e6:8.1f} µs per recipient")
    print(f"  DKIM signing                {(signed - alone) * 1e6:8.1f} µs per recipient")
    print(f"  ratio                       {signed / alone:8.1f} x")
    print(f"  signed messages per second  {1 / signed:8,.0f} on one core")

    messages = [build(item) for item in copies]
    bodies = [message.partition(b"\r\n\r\n")[2] for message in messages]
    canonical = [relaxed_body(body) for body in bodies]
    data = b"x" * 1200  # the signed headers' size
    print(f"where the signing goes (message {len(messages[0]) / 1024:.1f} KB):")
    parts = {
        "body canonicalisation (relaxed)": each(bodies, relaxed_body),
        "body SHA-256": each(canonical, lambda body: hashlib.sha256(body).digest()),
        "RSA operation (OpenSSL)": each(
            messages, lambda _: key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        ),
    }
    for what, seconds in parts.items():
        print(f"  {what:<32} {seconds * 1e6:8.1f} µs")
    sample = messages[: max(1, min(len(messages), 100))]
    reference_sign = dkimpy().sign
    reference = each(
        sample,
        lambda message: reference_sign(
            message,
            b"newsletter",
            b"news.example.org",
            pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=SIGNED,
        ),
    )
    print(f"dkimpy's dkim.sign, for comparison ({len(sample)} messages; pure-Python RSA):")
    print(
        f"  per message                      {reference * 1e6:8.1f} µs ({reference / (signed - alone):.0f}x ours)"
    )


if __name__ == "__main__":
    main()
